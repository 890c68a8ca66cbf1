"""A re-implementation of the original trajectory-matching inner loop, as a yardstick.

Written from the description in MTT (Cazenavette et al., CVPR 2022, section 3 and its
supplement) and "Vision-Language Dataset Distillation" (Wu et al., TMLR 2024, section 4), not
from their code: each tower's trainable parameters are one flat vector (the image encoder's and
the text head's), the student runs on views of them ("reparametrised" modules), and every
inner step appends a new pair of flat vectors,

    img_{k+1} = img_k - lr_img * dL/dimg_k,   txt_{k+1} = txt_k - lr_txt * dL/dtxt_k,

computed with ``create_graph=True`` so that the list of all iterates and their graphs stays
alive until one ``backward`` of the normalised distance of the last pair to the expert's target
reaches the images, the text vectors and both step sizes.

It is used twice: by ``benchmarks/bench_distill.py`` (timed in the same run, on the same
model, batches and expert segment as this project's matcher) and by the test suite, as an
independent reference for the matcher's meta-gradients.
"""

from __future__ import annotations

import torch

from bench.distill.flat_params import ParamLayout
from bench.distill.unroll import StepPlan
from bench.models.losses import contrastive_loss
from bench.models.student import Student, functional_embed


def original_meta_gradients(student: Student, layout: ParamLayout, images: torch.Tensor, texts: torch.Tensor,
                            lrs: torch.Tensor, start: torch.Tensor, target: torch.Tensor, plan: StepPlan,
                            logit_scale: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The matching loss and its gradients with respect to ``images``, ``texts`` and ``lrs``
    (each where it requires grad); ``start``/``target`` are flat in ``layout``'s order."""
    n_img = layout.n_image
    cut = layout.n_image_tensors

    def views(flat: torch.Tensor, part: slice) -> dict[str, torch.Tensor]:
        """One tower's named parameters as views of its flat vector."""
        names, shapes, sizes = layout.names[part], layout.shapes[part], layout.sizes[part]
        return {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes)}

    img_params = [start[:n_img].detach().clone().requires_grad_(True)]
    txt_params = [start[n_img:].detach().clone().requires_grad_(True)]
    for batch, seed in zip(plan.batches, plan.seeds):
        torch.manual_seed(seed)  # the step's dropout masks, as the matcher draws them
        params = {**views(img_params[-1], slice(0, cut)), **views(txt_params[-1], slice(cut, None))}
        image_emb, text_emb = functional_embed(student, params, images[batch], texts[batch])
        loss = contrastive_loss(image_emb, text_emb, logit_scale)
        grad_img, grad_txt = torch.autograd.grad(loss, [img_params[-1], txt_params[-1]], create_graph=True)
        img_params.append(img_params[-1] - lrs[0] * grad_img)
        txt_params.append(txt_params[-1] - lrs[1] * grad_txt)
    start_img, start_txt = start[:n_img], start[n_img:]
    target_img, target_txt = target[:n_img], target[n_img:]
    loss = (((img_params[-1] - target_img) ** 2).sum() / ((start_img - target_img) ** 2).sum()
            + ((txt_params[-1] - target_txt) ** 2).sum() / ((start_txt - target_txt) ** 2).sum())
    wanted = {k: t for k, t in (("images", images), ("texts", texts), ("lrs", lrs)) if t.requires_grad}
    grads = torch.autograd.grad(loss, list(wanted.values()))
    return loss.detach(), dict(zip(wanted, grads))

