"""LoRA matching: a pretrained transformers tower wrapped with peft LoRA, only adapters + heads train.

Tiny random-weight ViT / CLIP-vision towers (hidden 32, 2 layers, 32 px) saved into a temp
directory and loaded offline; experts on the tiny embedded grid at 32 px (300 train pairs).
Torch runs on one thread (see tests/test_distill.py).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open

import bench.distill.matching
from bench.core.config import ConfigError, from_dict, to_dict
from bench.core.env import torch_threads
from bench.distill.experts import ExpertConfig, ensure_experts, train_expert
from bench.distill.matching import MatchingConfig, TrajectoryMatcher
from bench.grid.cell import prepared
from bench.grid.runner import GridRun
from bench.models.image_encoders import ImageEncoderConfig
from bench.models.lora import LoraConfig
from bench.models.student import ModelConfig, build_student, functional_embed
from bench.protocol.train import TrainConfig, train_student
from bench.trajectory_api import synthetic_start
from tests.grid_helpers import tiny_grid
from tests.hf_helpers import SMALL, save_tiny

CPU = torch.device("cpu")
RANK = 4
LAYERS = SMALL["num_hidden_layers"]
HIDDEN = SMALL["hidden_size"]
EXPERTS = {"n_experts": 1, "epochs": 2, "batch_size": 30}
DATA = [{"source": "embedded", "embedded": {"n_train_images": 60, "n_val_images": 4, "n_test_images": 30,
                                            "resolution": 32}}]
# Module paths of the adapted projections in transformers 5 (ViT: layers.i.attention.q_proj,
# CLIP vision: encoder.layers.i.self_attn.q_proj), under peft's base_model.model. prefix.
ATTENTION = {"vit": "layers.{i}.attention", "clip": "encoder.layers.{i}.self_attn"}
PEFT = "image_encoder.model.base_model.model."


def _model(path: Path, lora: dict | None = None, **encoder) -> ModelConfig:
    enc = {"name": "hf", "path": str(path), **encoder}
    if lora is not None:
        enc["lora"] = lora
    return from_dict(ModelConfig, {"image_encoder": enc, "embed_dim": 16})


def _lora_names(kind: str) -> set[str]:
    return {f"{PEFT}{ATTENTION[kind].format(i=i)}.{proj}.{ab}.default.weight"
            for i in range(LAYERS) for proj in ("q_proj", "v_proj") for ab in ("lora_A", "lora_B")}


README_SNIPPET = """
model:
  image_encoder:
    name: hf
    path: ~/models/vit-base-patch16-224-in21k   # a local transformers directory
    lora:                  # leave out for full fine-tuning of the tower
      rank: 8              # adapter rank r
      alpha: 16            # the update B A is scaled by alpha / r
      dropout: 0.0         # keep 0: the unrolled matching steps stay deterministic
      target_modules: null # null = q_proj, v_proj for vit / deit / dinov2 / clip towers
      modules_to_save: []  # tower modules trained in full, e.g. [pooler]
  text_head: residual
  embed_dim: null
"""

HEADS = {"image_projection.weight", "image_projection.bias"} | {
    f"text_head.{m}.{p}" for m in ("projection", "fc", "norm") for p in ("weight", "bias")}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with torch_threads(1):
        root = tmp_path_factory.mktemp("lora")
        towers = {kind: save_tiny(kind, root / kind, seed=1) for kind in ("vit", "clip")}  # not BASE_SEED
        grid = tiny_grid(root, datasets=DATA, model={"image_encoder": {"name": "hf", "path": str(towers["vit"]),
                                                                         "lora": {"rank": RANK}}})
        data = prepared(grid, "embedded")
        cfg = ExpertConfig(**EXPERTS)
        base = grid.evaluation.full_train
        lora_buffer = ensure_experts(data, grid.model, cfg, base, grid.cache_dir, CPU)
        full_model = replace(grid.model, image_encoder=replace(grid.model.image_encoder, lora=None))
        full_buffer = ensure_experts(data, full_model, cfg, base, grid.cache_dir, CPU)
        yield SimpleNamespace(root=root, towers=towers, grid=grid, data=data, cfg=cfg, base=base,
                              lora=lora_buffer, full=full_buffer, full_model=full_model)


def _student(env, model: ModelConfig | None = None, seed: int = 0):
    return build_student(model or env.grid.model, env.data.train.resolution, env.data.text_dim, seed)


# ----------------------------------------------------------------------------- the student

@pytest.mark.parametrize("kind", ["vit", "clip"])
def test_only_adapters_and_heads_train(env, kind):
    student = build_student(_model(env.towers[kind], {"rank": RANK}), 32, 12, seed=0)
    trainable = student.trainable_parameters()
    assert set(trainable) == _lora_names(kind) | HEADS
    for name, p in student.named_parameters():
        assert p.requires_grad == (name in trainable), name
    tower = [n for n, p in student.image_encoder.named_parameters() if not p.requires_grad]
    assert len(tower) > 20 and all(".lora_" not in n for n in tower)
    for name, p in trainable.items():
        assert student.modality_of(name) == ("text" if name.startswith("text_head.") else "image"), name
        if ".lora_A." in name:
            assert p.shape == (RANK, HIDDEN)
        elif ".lora_B." in name:
            assert p.shape == (HIDDEN, RANK) and not p.any()  # B = 0: epoch 0 is the pretrained tower
    # ... so the LoRA student computes exactly what the fully fine-tunable one does at init.
    plain = build_student(_model(env.towers[kind]), 32, 12, seed=0).eval()
    images = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(student.eval().image_encoder(images), plain.image_encoder(images))


def test_base_weights_stay_frozen_through_training(env):
    student = _student(env)
    frozen = {n: p.detach().clone() for n, p in student.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in student.trainable_parameters().items() if ".lora_" in n}
    train_student(student, env.data.train_pairs(torch.arange(40)), TrainConfig(epochs=1, batch_size=20, lr_image=0.1),
                  0, CPU)
    for name, p in student.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    assert all(not torch.equal(student.get_parameter(n), t) for n, t in lora.items() if ".lora_B." in n)


def test_initialisation_is_deterministic_and_the_tower_seed_independent(env):
    def state(seed, **encoder):
        model = _model(env.towers["vit"], {"rank": RANK}, **encoder)
        return {n: p.detach().clone() for n, p in build_student(model, 32, 12, seed).named_parameters()}

    a, b, c = state(0), state(0), state(1)
    assert all(torch.equal(a[n], b[n]) for n in a)
    differ = {n for n in a if not torch.equal(a[n], c[n])}
    # Another seed draws other adapters (A; B is 0) and heads, never another frozen tower: the
    # expert files do not hold it.
    assert {n for n in differ if n.startswith(PEFT)} == {n for n in _lora_names("vit") if ".lora_A." in n}
    # Even a randomly initialised tower (pretrained: false) is the same for every seed.
    r0, r1 = state(0, pretrained=False), state(1, pretrained=False)
    frozen = [n for n in r0 if n.startswith(PEFT) and ".lora_" not in n]
    assert frozen and all(torch.equal(r0[n], r1[n]) for n in frozen)
    assert any(not torch.equal(r0[n], a[n]) for n in frozen)  # and it is not the checkpoint


def test_missing_checkpoint_weights_need_modules_to_save(env, tmp_path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=32, patch_size=8, **SMALL), add_pooling_layer=False).save_pretrained(tmp_path / "np")
    with pytest.raises(ValueError, match=r"pooler\.dense\.weight.*modules_to_save.*\[pooler\]"):
        build_student(_model(tmp_path / "np", {}), 32, 12, seed=0)
    student = build_student(_model(tmp_path / "np", {"modules_to_save": ["pooler"]}), 32, 12, seed=0)
    pooler = {n for n in student.trainable_parameters() if ".pooler." in n}
    assert pooler == {f"{PEFT}pooler.modules_to_save.default.dense.{p}" for p in ("weight", "bias")}
    # functional_call reaches the trainable copy of the pooler
    params = {n: p.detach().clone() for n, p in student.trainable_parameters().items()}
    images, texts = torch.randn(3, 3, 32, 32), torch.randn(3, 12)
    before = functional_embed(student, params, images, texts)[0]
    params[f"{PEFT}pooler.modules_to_save.default.dense.weight"] += 1.0
    assert not torch.allclose(functional_embed(student, params, images, texts)[0], before)


# ----------------------------------------------------------------------------- experts

def test_experts_record_only_adapters_and_heads(env):
    names = set(_student(env).trainable_parameters())
    assert names == _lora_names("vit") | {n for n in HEADS if not n.startswith("image_projection.")}  # embed_dim None
    with safe_open(str(env.lora.paths[0]), framework="pt") as f:
        assert set(f.keys()) == {f"{e:03d}/{n}" for e in range(3) for n in names}
    full_names = set(_student(env, env.full_model).trainable_parameters())
    assert names - full_names == _lora_names("vit") and len(full_names) > len(names) + 20
    lora_bytes, full_bytes = env.lora.size_bytes(), env.full.size_bytes()
    assert lora_bytes < full_bytes / 2, (lora_bytes, full_bytes)
    epochs = [env.lora.params(0, e) for e in range(3)]
    for before, after in zip(epochs, epochs[1:]):
        assert any(not torch.equal(before[n], after[n]) for n in _lora_names("vit"))


def test_expert_training_is_deterministic(env, tmp_path):
    again = train_expert(env.data, env.grid.model, env.cfg, env.base, 0, tmp_path, CPU)
    with safe_open(str(env.lora.paths[0]), framework="pt") as a, safe_open(str(again), framework="pt") as b:
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key


# ----------------------------------------------------------------------------- matching

def _iteration_grads(env, student):
    cfg = MatchingConfig(syn_steps=2, batch_syn=5, max_start_epoch=1, checkpoint_every=0)
    matcher = TrajectoryMatcher(student, env.lora, cfg, CPU)
    real = env.data.train_pairs(torch.arange(0, 50, 5))
    loss, grads = matcher.meta_gradients(matcher.tensors(synthetic_start(real, cfg, True, True)), seed=0, it=0)
    return loss, grads["images"], grads["texts"], grads["lrs"]


def test_a_matching_iteration_reaches_images_texts_and_step_sizes(env):
    loss, images, texts, lrs = _iteration_grads(env, _student(env))
    assert 0 < float(loss) < 10
    for grad in (images, texts, lrs):
        assert grad is not None and bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
    assert bool((lrs != 0).all())  # both the image-side (LoRA) and the text-side step size


@pytest.mark.parametrize("memory", ["unrolled", "recompute"])
def test_sdpa_attention_matches_eager_in_the_inner_loop(env, monkeypatch, memory):
    eager = _iteration_grads(env, _student(env))
    sdpa_model = replace(env.grid.model, image_encoder=replace(env.grid.model.image_encoder, attn_implementation="sdpa"))
    sdpa = _iteration_grads(env, _student(env, sdpa_model))
    for a, b in zip(eager, sdpa):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # Without the math backend the fused CPU kernel has no double backward: a clear error.
    monkeypatch.setattr(bench.distill.matching, "math_attention", contextlib.nullcontext)
    cfg = MatchingConfig(iterations=1, syn_steps=2, batch_syn=5, max_start_epoch=1, checkpoint_every=0,
                         memory=memory)
    matcher = TrajectoryMatcher(_student(env, sdpa_model), env.lora, cfg, CPU)
    learned = synthetic_start(env.data.train_pairs(torch.arange(10)), cfg, True, True)
    with pytest.raises(RuntimeError, match=r"_scaled_dot_product_flash_attention.*attn_implementation: eager"):
        matcher.run(learned, seed=0, key="sdpa")


# ----------------------------------------------------------------------------- config

def test_lora_config_from_yaml_data(env):
    model = _model(env.towers["vit"], {"rank": 2, "alpha": 4, "target_modules": ["q_proj"], "modules_to_save": []})
    assert model.image_encoder.lora == LoraConfig(rank=2, alpha=4.0, target_modules=("q_proj",))
    student = build_student(model, 32, 12, seed=0)
    lora = [n for n in student.trainable_parameters() if ".lora_" in n]
    assert len(lora) == 2 * LAYERS and all(".q_proj." in n for n in lora)
    assert student.get_parameter(lora[0]).shape == (2, HIDDEN)
    # absent lora leaves config hashes (expert keys, cell hashes) as before the field existed
    assert "lora" not in to_dict(ImageEncoderConfig(name="hf", path="x"))
    assert to_dict(model.image_encoder)["lora"]["target_modules"] == ["q_proj"]
    assert from_dict(ModelConfig, to_dict(model)) == model
    # the README's snippet
    snippet = yaml.safe_load(README_SNIPPET.replace("~/models/vit-base-patch16-224-in21k", str(env.towers["vit"])))
    readme = from_dict(ModelConfig, snippet["model"])
    assert readme.image_encoder.lora == LoraConfig(rank=8, alpha=16.0, dropout=0.0)
    assert readme.image_encoder.lora.target_modules is None


def test_config_errors_name_the_key(env, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.image_encoder.*lora.*'hf'.*'convnet'"):
        tiny_grid(tmp_path, model={"image_encoder": {"lora": {"rank": 4}}})
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.image_encoder\.lora\.rnak'.*'rank'"):
        tiny_grid(tmp_path, model={"image_encoder": {"name": "hf", "path": "x", "lora": {"rnak": 4}}})
    with pytest.raises(ConfigError, match=r"lora\.rank must be >= 1"):
        _model(env.towers["vit"], {"rank": 0})
    with pytest.raises(ConfigError, match=r"lora\.dropout"):
        _model(env.towers["vit"], {"dropout": 1.0})
    resnet = save_tiny("resnet", tmp_path / "resnet")
    with pytest.raises(ValueError, match=r"lora\.target_modules.*'resnet'.*target_modules: \[q_proj, v_proj\]"):
        build_student(_model(resnet, {}), 16, 12, seed=0)
    with pytest.raises(ValueError, match="not found"):  # peft's own error for a name that is no module
        build_student(_model(env.towers["vit"], {"target_modules": ["qkv"]}), 32, 12, seed=0)
    # a type without a default works when the modules are named
    convnext = save_tiny("convnext", tmp_path / "convnext")
    student = build_student(_model(convnext, {"target_modules": ["pwconv1"]}), 16, 12, seed=0)
    assert sum(".lora_" in n for n in student.trainable_parameters()) == 4  # 2 stages x 1 block x A, B


# ----------------------------------------------------------------------------- end to end

def test_distill_joint_cell_with_a_lora_tower(env):
    params = {"iterations": 3, "syn_steps": 2, "batch_syn": 5, "max_start_epoch": 1, "checkpoint_every": 0}
    grid = tiny_grid(env.root, datasets=DATA, model=to_dict(env.grid.model), experts=EXPERTS, include_full=False,
                     methods=[{"name": "distill-joint", "params": params}],
                     evaluation={"seeds": [0], "train": {"epochs": 2, "batch_size": 10},
                                 "full_train": to_dict(env.grid.evaluation.full_train)})
    run = GridRun(grid, progress=False).run()
    results = Path(grid.results_dir)
    failures = [p.read_text() for p in (results / "records").glob("*.failed.json")]
    assert not run.failed and len(run.done) == 1, failures
    record = json.loads((results / "records" / "embedded__distill-joint__b10__s0.json").read_text())
    assert record["kind"] == "distillation" and record["n_pairs"] == 10
    assert record["config"]["model"]["image_encoder"]["lora"]["rank"] == RANK
    info = record["method_info"]
    assert len(info["matching_loss"]) == 3 and np.isfinite(info["matching_loss"]).all()
    assert record["expert_buffer_bytes"] == env.lora.size_bytes()  # the module's LoRA experts, reused
    assert record["learned_lrs"]["image"] != 0.01
