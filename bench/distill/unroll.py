"""Meta-gradients through ``syn_steps`` SGD steps of a student on a synthetic set.

Trajectory matching starts a student at an expert's parameters theta_0, takes the steps

    theta_{k+1} = theta_k - lr * g_k,    g_k = grad_theta L_inner(theta_k; batch k of the set)

and needs the gradient of a loss on theta_N with respect to everything the steps read: the
synthetic images and text vectors (and whatever else the inner loss reads, e.g. learned
similarity targets) and the step sizes ``lr``. Two exact ways to get it, same numbers:

* ``unrolled``: keep the autograd graph of every step (``create_graph=True``) and
  back-propagate once. Memory grows with ``syn_steps`` (every step's activations and their
  gradient graph stay alive).
* ``recompute``: run the steps without a graph, keeping only the iterates theta_k (one flat
  vector each), then walk the steps backwards with the adjoint a_k = dLoss/dtheta_k
  (after TESLA, Cui et al., ICML 2023): re-run step k's forward and backward with a graph and
  take one vector-Jacobian product of g_k with ``lr * a_{k+1}``, which yields at once

      a_k        = a_{k+1} - (dg_k/dtheta_k)^T (lr * a_{k+1})
      dLoss/dX  -= (dg_k/dX)^T (lr * a_{k+1})        for every learned tensor X
      dLoss/dlr -= sum over each side of a_{k+1} * g_k

  Peak memory is one step's graph plus the iterates, whatever ``syn_steps`` is; the price is
  one more plain forward + backward per step. The iterates themselves grow with ``syn_steps``
  (one parameter vector per step); with ``iterate_segment`` s only every s-th iterate and the
  last segment's are kept, and each other segment is rebuilt by replaying its steps without a
  graph when the backward walk reaches it (about syn_steps/s + s vectors, for one more plain
  step per replayed step; the replay is the same computation, so the result is unchanged).

Everything random inside a step (dropout masks, augmentation, a method's transform of the
heads' inputs) is drawn from that step's own seed, so the recomputed step is the step that was
taken.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from bench.distill.flat_params import ParamLayout
from bench.models.losses import contrastive_loss
from bench.models.student import Student, functional_embed

MemoryMode = Literal["unrolled", "recompute"]
Precision = Literal["fp32", "bf16"]


class InnerLoss(Protocol):
    """The loss a student minimises inside the unrolled steps.

    ``image_emb``/``text_emb`` are the student's (normalised) embeddings of the batch, ``batch``
    the indices of its pairs in the synthetic set, ``tensors`` every tensor the matcher holds
    (a method's extra learned tensors, e.g. similarity parameters, are read from here)."""

    def __call__(self, image_emb: torch.Tensor, text_emb: torch.Tensor, batch: torch.Tensor,
                 tensors: Mapping[str, torch.Tensor]) -> torch.Tensor: ...


#: Maps a batch of model-input images to augmented ones, differentiably in the images, with
#: every random choice drawn from the generator.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class HeadInputs(Protocol):
    """A method's transform of what the student's heads get inside every unrolled step.

    ``features`` are the image tower's features of the batch's synthetic images (computed once
    per iteration with a frozen tower and no augmentation, else inside the step from the
    (augmented) images with the step's parameters), ``texts`` its text vectors, ``batch`` the
    indices of its pairs in the synthetic set. Returns the heads' inputs, differentiably in
    both. Every random choice must come from ``seed`` (the step's; derive a generator of your
    own from it, e.g. ``numpy.random.default_rng(seed)``): the ``recompute`` mode replays the
    step and must see the same draws. RepBlend's representation blending is one."""

    def __call__(self, features: torch.Tensor, texts: torch.Tensor, batch: torch.Tensor,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def contrastive_inner_loss(logit_scale: float) -> InnerLoss:
    """Symmetric InfoNCE with the pairs of the batch as positives (the default inner loss)."""

    def loss(image_emb: torch.Tensor, text_emb: torch.Tensor, batch: torch.Tensor,
             tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return contrastive_loss(image_emb, text_emb, logit_scale)

    return loss


def math_attention() -> contextlib.AbstractContextManager[None]:
    """Scaled-dot-product attention by its math (composite) backend: twice differentiable,
    unlike the fused kernels (on CPU torch 2.13 the meta-gradient otherwise fails with
    "derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not
    implemented"). Only towers with ``attn_implementation: sdpa`` are affected; their gradients
    equal eager's."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


@dataclass(frozen=True)
class StepPlan:
    """What each of the unrolled steps uses: the pairs of its batch and the seed of its
    randomness (dropout, augmentation)."""

    batches: tuple[torch.Tensor, ...]
    seeds: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.batches)


def matching_distance(final: torch.Tensor, start: torch.Tensor, target: torch.Tensor,
                      layout: ParamLayout, merge_sides: bool = False) -> torch.Tensor:
    """Sum over the image and the text side of ||final - target||^2 / ||start - target||^2
    (0: both targets hit; 2: the student did not move). ``merge_sides``: one ratio over all
    parameters instead (LoRS's ``--merge_loss_branches``; 1 = did not move), which weighs each
    side by how far its expert moved."""
    num = layout.side_sums((final - target) ** 2)
    den = layout.side_sums((start - target) ** 2).clamp_min(1e-12)
    return num.sum() / den.sum() if merge_sides else (num / den).sum()


class InnerSteps:
    """One student, its flat layout, the inner loss and the options of the unrolled steps.

    With a frozen image tower and no augmentation an image's features are the same at every
    step, so ``tensors["images"]`` holds the tower's features of the synthetic images
    (``from_features``), computed once per iteration by the matcher."""

    def __init__(self, student: Student, layout: ParamLayout, inner_loss: InnerLoss,
                 augment: Augment | None = None, precision: Precision = "fp32", merge_sides: bool = False,
                 iterate_segment: int | None = None, head_inputs: HeadInputs | None = None) -> None:
        self.student = student
        self.head_inputs = head_inputs
        self.iterate_segment = iterate_segment
        self.layout = layout
        self.inner_loss = inner_loss
        self.augment = augment
        self.precision = precision
        self.merge_sides = merge_sides
        self.from_features = student.frozen_tower and augment is None

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[object]:
        if self.precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def gradient(self, theta: torch.Tensor, tensors: Mapping[str, torch.Tensor], batch: torch.Tensor,
                 seed: int, create_graph: bool) -> torch.Tensor:
        """grad of the inner loss at ``theta`` on ``batch``; ``theta`` must require grad."""
        torch.manual_seed(seed)  # dropout masks (the caller forks the global RNG)
        images, texts = tensors["images"][batch], tensors["texts"][batch]
        if self.augment is not None:
            images = self.augment(images, torch.Generator().manual_seed(seed))
        before_heads = None
        if self.head_inputs is not None:
            transform = self.head_inputs
            before_heads = lambda features, vectors: transform(features, vectors, batch, seed)  # noqa: E731
        with self.autocast(theta.device):
            image_emb, text_emb = functional_embed(self.student, self.layout.unflatten(theta), images, texts,
                                                   from_features=self.from_features, before_heads=before_heads)
        # The loss in the parameters' precision (autocast may hand back bfloat16 embeddings).
        loss = self.inner_loss(image_emb.to(theta.dtype), text_emb.to(theta.dtype), batch, tensors)
        (grad,) = torch.autograd.grad(loss, theta, create_graph=create_graph)
        return grad


def _learned(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the tensors to differentiate with respect to (the step sizes apart)."""
    return [k for k, t in tensors.items() if t.requires_grad and k != "lrs"]


def unrolled_meta_gradients(steps: InnerSteps, start: torch.Tensor, target: torch.Tensor,
                            tensors: Mapping[str, torch.Tensor], plan: StepPlan
                            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    lrs = tensors["lrs"]
    step_sizes = steps.layout.step_sizes(lrs)
    theta = start.detach().clone().requires_grad_(True)
    current = theta
    for batch, seed in zip(plan.batches, plan.seeds):
        current = current - step_sizes * steps.gradient(current, tensors, batch, seed, create_graph=True)
    loss = matching_distance(current, start, target, steps.layout, steps.merge_sides)
    names = _learned(tensors) + (["lrs"] if lrs.requires_grad else [])
    grads = torch.autograd.grad(loss, [tensors[n] for n in names], allow_unused=True)
    return loss.detach(), {n: torch.zeros_like(tensors[n]) if g is None else g for n, g in zip(names, grads)}


def recompute_meta_gradients(steps: InnerSteps, start: torch.Tensor, target: torch.Tensor,
                             tensors: Mapping[str, torch.Tensor], plan: StepPlan
                             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    layout = steps.layout
    lrs = tensors["lrs"]
    step_sizes = layout.step_sizes(lrs.detach())
    frozen = {k: t.detach() for k, t in tensors.items()}
    n = len(plan)
    segment = min(steps.iterate_segment or n, n)
    last_segment = (n - 1) // segment * segment

    def advance(theta: torch.Tensor, k: int) -> torch.Tensor:
        """Step k without a graph: theta_{k+1} from theta_k."""
        grad = steps.gradient(theta.requires_grad_(True), frozen, plan.batches[k], plan.seeds[k], create_graph=False)
        return theta.detach() - step_sizes * grad

    # Forward: the iterates only, no graph kept (every segment's first and all of the last segment).
    iterates = {0: start.detach()}
    theta = iterates[0]
    for k in range(n):
        theta = advance(theta, k)
        if (k + 1) % segment == 0 or k + 1 >= last_segment:
            iterates[k + 1] = theta
    final = iterates.pop(n).requires_grad_(True)
    loss = matching_distance(final, start, target, layout, steps.merge_sides)
    (adjoint,) = torch.autograd.grad(loss, final)

    names = _learned(tensors)
    grads = {name: torch.zeros_like(tensors[name]) for name in names}
    lr_grad = torch.zeros_like(lrs)
    for k in reversed(range(n)):  # backward: one step's graph at a time
        if k not in iterates:  # replay this segment from its first iterate
            first = k // segment * segment
            theta = iterates[first]
            for j in range(first, k):
                theta = iterates[j + 1] = advance(theta, j)
        theta = iterates.pop(k).requires_grad_(True)
        grad = steps.gradient(theta, tensors, plan.batches[k], plan.seeds[k], create_graph=True)
        outs = torch.autograd.grad(grad, [theta] + [tensors[name] for name in names],
                                   grad_outputs=step_sizes * adjoint, allow_unused=True)
        lr_grad -= layout.side_sums(adjoint * grad.detach())
        adjoint = adjoint - outs[0]
        for name, out in zip(names, outs[1:]):
            if out is not None:
                grads[name] -= out
    if lrs.requires_grad:
        grads["lrs"] = lr_grad
    return loss.detach(), grads


META_GRADIENTS = {"unrolled": unrolled_meta_gradients, "recompute": recompute_meta_gradients}
