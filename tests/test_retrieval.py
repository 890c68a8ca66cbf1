"""Tests for bench.protocol.retrieval: agreement with a brute-force reference, ties, hand cases, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.protocol.retrieval import faiss_has_gpu, retrieval_metrics

BACKENDS = ["faiss", "torch"]


# ----------------------------------------------------------------------------- reference


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference_ranks(img: np.ndarray, txt: np.ndarray, t2i: np.ndarray) -> tuple[list[int], list[int]]:
    """Uncapped pessimistic ranks from the full similarity matrix, one query at a time."""
    sim = _normalise(img) @ _normalise(txt).T  # (n_images, n_texts), float32
    tr = []
    for i in range(img.shape[0]):
        correct = t2i == i
        if not correct.any():
            continue  # an image without captions is not a TR query
        best = sim[i, correct].max()
        tr.append(int((sim[i, ~correct] >= best).sum()))
    ir = []
    for j in range(txt.shape[0]):
        column = sim[:, j]
        best = column[t2i[j]]
        ir.append(int((np.delete(column, t2i[j]) >= best).sum()))
    return tr, ir


def reference_metrics(img: np.ndarray, txt: np.ndarray, t2i: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    tr, ir = _reference_ranks(img, txt, t2i)
    out = {}
    for k in ks:
        out[f"tr@{k}"] = 100.0 * sum(r < k for r in tr) / len(tr)
    for k in ks:
        out[f"ir@{k}"] = 100.0 * sum(r < k for r in ir) / len(ir)
    out["mean"] = float(np.mean(list(out.values())))
    return out


def mixed_captions(rng: np.random.Generator, n_images: int) -> np.ndarray:
    """text_to_image for images with a random mix of 5 and 6 captions, in shuffled order."""
    counts = rng.choice([5, 6], size=n_images)
    t2i = np.repeat(np.arange(n_images), counts)
    return t2i[rng.permutation(t2i.size)]


def noisy_pairs(seed: int, n_images: int, dim: int):
    """Gaussian images, captions = own image + noise; the noise grows with d so that recalls
    land strictly between 0 and 100 at these sizes."""
    noise = 0.5 * np.sqrt(dim)
    rng = np.random.default_rng(seed)
    t2i = mixed_captions(rng, n_images)
    img = rng.standard_normal((n_images, dim)).astype(np.float32)
    txt = (img[t2i] + noise * rng.standard_normal((t2i.size, dim))).astype(np.float32)
    return img, txt, t2i


# ----------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed,n_images,dim", [(0, 40, 8), (1, 60, 32), (2, 100, 64), (3, 25, 3), (4, 200, 128)])
def test_matches_reference_gaussian(backend, seed, n_images, dim):
    img, txt, t2i = noisy_pairs(seed, n_images, dim)
    ks = (1, 5, 10)
    got = retrieval_metrics(img, txt, t2i, ks=ks, backend=backend)
    assert got == reference_metrics(img, txt, t2i, ks)
    assert 0.0 < got["mean"] < 100.0  # a meaningful comparison, not all hits or all misses


def test_backends_agree_exactly():
    img, txt, t2i = noisy_pairs(7, 300, 48)
    ks = (1, 2, 3, 5, 10, 20)
    assert retrieval_metrics(img, txt, t2i, ks, backend="faiss") == retrieval_metrics(
        img, txt, t2i, ks, backend="torch"
    )


# ----------------------------------------------------------------------------- ties


def sign_vectors(rng: np.random.Generator, n_patterns: int, n: int) -> np.ndarray:
    """n vectors drawn from n_patterns distinct {-1, +1}^16 patterns: after normalisation every
    entry is exactly +-0.25 and every dot product an exact multiple of 1/16, so scores tie
    exactly in float32 whatever the summation order."""
    patterns = rng.choice([-1.0, 1.0], size=(n_patterns, 16)).astype(np.float32)
    return patterns[rng.integers(0, n_patterns, size=n)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed,n_patterns", [(0, 3), (1, 5), (2, 8), (3, 12)])
def test_matches_reference_with_exact_ties(backend, seed, n_patterns):
    rng = np.random.default_rng(seed)
    n_images = 30
    t2i = mixed_captions(rng, n_images)
    img = sign_vectors(rng, n_patterns, n_images)
    # Captions: mostly a copy of their image's vector, sometimes another pattern.
    txt = img[t2i].copy()
    swap = rng.random(t2i.size) < 0.4
    txt[swap] = sign_vectors(rng, n_patterns, int(swap.sum()))
    ks = (1, 2, 3, 5, 10)
    got = retrieval_metrics(img, txt, t2i, ks=ks, backend=backend)
    assert got == reference_metrics(img, txt, t2i, ks)


def test_tie_fixture_straddles_k():
    """The tie fixture really has ties across the K boundary, where optimistic and pessimistic
    counting disagree (otherwise the test above would prove nothing about ties)."""
    rng = np.random.default_rng(0)
    t2i = mixed_captions(rng, 30)
    img = sign_vectors(rng, 3, 30)
    txt = img[t2i].copy()
    sim = _normalise(img) @ _normalise(txt).T
    straddles = 0
    for j in range(txt.shape[0]):
        column, own = sim[:, j], t2i[j]
        others = np.delete(column, own)
        above, tied = int((others > column[own]).sum()), int((others == column[own]).sum())
        straddles += any(above < k <= above + tied for k in (1, 5, 10))
    assert straddles > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_collapsed_embedding_scores_zero(backend):
    rng = np.random.default_rng(0)
    t2i = mixed_captions(rng, 20)  # K <= 10 < 20 images and < ~110 captions
    v = np.ones((1, 16), np.float32)
    got = retrieval_metrics(np.repeat(v, 20, 0), np.repeat(v, t2i.size, 0), t2i, backend=backend)
    assert all(value == 0.0 for value in got.values()), got


@pytest.mark.parametrize("backend", BACKENDS)
def test_collapsed_gaussian_vector_scores_zero(backend):
    """Same with a non-exact vector: identical rows must give bit-identical scores."""
    v = np.random.default_rng(1).standard_normal((1, 512)).astype(np.float32)
    t2i = np.repeat(np.arange(300), 5)
    got = retrieval_metrics(np.repeat(v, 300, 0), np.repeat(v, t2i.size, 0), t2i, backend=backend)
    assert got["mean"] == 0.0, got


@pytest.mark.parametrize("backend", BACKENDS)
def test_collapsed_k_at_least_candidates_is_trivial_hit(backend):
    """With K >= number of candidates everything is in the top K, even when collapsed."""
    v = np.ones((1, 4), np.float32)
    t2i = np.array([0, 0, 1, 2])
    got = retrieval_metrics(np.repeat(v, 3, 0), np.repeat(v, 4, 0), t2i, ks=(1, 3, 4), backend=backend)
    # IR: 2 incorrect images tie -> rank 2: miss@1, hit@3.
    # TR: I0 has 2 incorrect captions (rank 2), I1 and I2 have 3 (rank 3).
    assert got["ir@1"] == 0.0 and got["ir@3"] == 100.0 and got["ir@4"] == 100.0
    assert got["tr@1"] == 0.0 and got["tr@3"] == pytest.approx(100 / 3) and got["tr@4"] == 100.0


# ----------------------------------------------------------------------------- hand cases

# Images I0=(1,0), I1=(0,1), I2=(-1,0); captions t0=(1,0)->I0, t1=(0,1)->I0, t2=(0,1)->I1,
# t3=(-1,1)->I2. Image x caption cosine:
#        t0    t1    t2    t3
#   I0    1     0     0   -.707
#   I1    0     1     1    .707
#   I2   -1     0     0    .707
# TR ranks: I0 0 (t0), I1 1 (t1 ties t2), I2 0.      -> tr@1 2/3, tr@2 1, tr@3 1
# IR ranks: t0 0, t1 2 (I1 above, I2 ties), t2 0, t3 1 (I1 ties I2) -> ir@1 1/2, ir@2 3/4, ir@3 1
HAND_IMG = np.array([[1, 0], [0, 1], [-1, 0]], np.float32)
HAND_TXT = np.array([[1, 0], [0, 1], [0, 1], [-1, 1]], np.float32)
HAND_T2I = np.array([0, 0, 1, 2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed(backend):
    got = retrieval_metrics(HAND_IMG, HAND_TXT, HAND_T2I, ks=(1, 2, 3), backend=backend)
    expected = {"tr@1": 200 / 3, "tr@2": 100.0, "tr@3": 100.0, "ir@1": 50.0, "ir@2": 75.0, "ir@3": 100.0}
    assert got == pytest.approx({**expected, "mean": sum(expected.values()) / 6})
    assert list(got) == ["tr@1", "tr@2", "tr@3", "ir@1", "ir@2", "ir@3", "mean"]
    assert all(type(v) is float for v in got.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_without_captions_is_only_a_distractor(backend):
    # Add I3=(0,1) with no caption: TR stays over the 3 captioned images; in IR, I3 ties with
    # the best image of t1, t2 and t3: IR ranks become t0 0, t1 3, t2 1, t3 2.
    img = np.vstack([HAND_IMG, [[0, 1]]]).astype(np.float32)
    got = retrieval_metrics(img, HAND_TXT, HAND_T2I, ks=(1, 2, 3), backend=backend)
    assert got["tr@1"] == pytest.approx(200 / 3) and got["tr@2"] == 100.0
    assert (got["ir@1"], got["ir@2"], got["ir@3"]) == (25.0, 50.0, 75.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_embeddings_score_100(backend):
    rng = np.random.default_rng(0)
    t2i = mixed_captions(rng, 24)
    img = np.eye(24, 32, dtype=np.float32) * rng.uniform(0.5, 3.0, size=(24, 1)).astype(np.float32)
    txt = img[t2i] * 2.0  # scale must not matter: cosine
    got = retrieval_metrics(img, txt, t2i, backend=backend)
    assert all(value == 100.0 for value in got.values()), got


# ----------------------------------------------------------------------------- invariances / inputs


@pytest.mark.parametrize("backend", BACKENDS)
def test_invariant_to_caption_order(backend):
    img, txt, t2i = noisy_pairs(11, 80, 16)
    perm = np.random.default_rng(5).permutation(t2i.size)
    a = retrieval_metrics(img, txt, t2i, backend=backend)
    b = retrieval_metrics(img, txt[perm], t2i[perm], backend=backend)
    assert a == b


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_and_numpy_inputs_identical(backend):
    img, txt, t2i = noisy_pairs(3, 50, 24)
    ref = retrieval_metrics(img, txt, t2i, backend=backend)
    assert retrieval_metrics(torch.from_numpy(img), torch.from_numpy(txt), torch.from_numpy(t2i), backend=backend) == ref
    assert retrieval_metrics(torch.from_numpy(img).double(), txt.astype(np.float64), list(t2i), backend=backend) == ref


# ----------------------------------------------------------------------------- validation

_IMG = np.ones((3, 4), np.float32)
_TXT = np.ones((4, 4), np.float32)
_T2I = np.array([0, 0, 1, 2])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(text_emb=np.ones((4, 5), np.float32)), "dims differ"),
        (dict(text_to_image=np.array([0, 1, 2])), "length 3"),
        (dict(text_to_image=np.array([0, 1, 2, 3])), "out of range"),
        (dict(text_to_image=np.array([0, -1, 2, 2])), "out of range"),
        (dict(text_to_image=np.array([0.0, 1.0, 2.0, 2.0])), "integer"),
        (dict(text_to_image=np.zeros((4, 1), np.int64)), "1-D"),
        (dict(image_emb=np.ones((0, 4), np.float32)), "image_emb is empty"),
        (dict(text_emb=np.ones((0, 4), np.float32), text_to_image=np.zeros(0, np.int64)), "text_emb is empty"),
        (dict(image_emb=np.ones((3, 0), np.float32), text_emb=np.ones((4, 0), np.float32)), "empty"),
        (dict(image_emb=np.ones(4, np.float32)), "2-D"),
        (dict(ks=()), "ks is empty"),
        (dict(ks=(1, 0)), "positive integer"),
        (dict(ks=(-5,)), "positive integer"),
        (dict(ks=(1.5,)), "positive integer"),
        (dict(image_emb=np.array([[1, 0, 0, np.nan]] * 3, np.float32)), "image_emb contains NaN"),
        (dict(text_emb=torch.tensor([[1.0, 0, 0, float("nan")]] * 4)), "text_emb contains NaN"),
        (dict(backend="sklearn"), "backend"),
    ],
)
def test_validation_errors(kwargs, match):
    args = dict(image_emb=_IMG, text_emb=_TXT, text_to_image=_T2I)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(**args)


def test_use_gpu_without_gpu_support_raises():
    if faiss_has_gpu():
        pytest.skip("a faiss GPU build with a GPU is present")
    with pytest.raises(RuntimeError, match="GPU"):
        retrieval_metrics(_IMG, _TXT, _T2I, backend="faiss", use_gpu=True)


@pytest.mark.skipif(not faiss_has_gpu(), reason="needs a faiss GPU build and a GPU (CI has neither)")
@pytest.mark.parametrize("seed", [0, 1])
def test_faiss_gpu_gives_the_cpu_numbers(seed):
    img, txt, t2i = noisy_pairs(seed, 300, 64)
    cpu = retrieval_metrics(img, txt, t2i, backend="faiss", use_gpu=False)
    assert retrieval_metrics(img, txt, t2i, backend="faiss", use_gpu=True) == cpu
    assert cpu == pytest.approx(reference_metrics(img, txt, t2i))


def test_duplicate_ks_are_ignored():
    got = retrieval_metrics(HAND_IMG, HAND_TXT, HAND_T2I, ks=(2, 1, 2))
    assert list(got) == ["tr@2", "tr@1", "ir@2", "ir@1", "mean"]
