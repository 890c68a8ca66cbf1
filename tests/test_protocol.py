"""Evaluation curves, selection rules, schedules, protocol presets and extra students."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from bench.core.config import ConfigError, from_dict, to_dict
from bench.data.pairs import PairSet
from bench.data.types import Split
from bench.grid.spec import EvaluationConfig
from bench.models.image_encoders import ImageEncoderConfig
from bench.models.student import ModelConfig
from bench.protocol import train as train_module
from bench.protocol.evaluate import CurvePlan, curve_epochs, evaluate_pair_set
from bench.protocol.presets import PRESETS
from bench.protocol.selection import SelectionError, best_epoch, selected_metrics
from bench.protocol.train import TrainConfig, train_student

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
SCRATCH = ModelConfig(image_encoder=ImageEncoderConfig(width=8, depth=2))
FROZEN = ModelConfig(image_encoder=ImageEncoderConfig(width=8, depth=2, freeze=True), embed_dim=16)


def _split(n_images: int, seed: int, res: int = 16, dim: int = 12, per_image: int = 2) -> tuple[Split, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_images, 3, res, res), dtype=torch.uint8, generator=g)
    n = n_images * per_image
    split = Split(images, tuple(f"c{i}" for i in range(n)), torch.arange(n) // per_image,
                  tuple(f"i{i}" for i in range(n_images)))
    return split, torch.randn(n, dim, generator=g)


def _set(seed: int = 0) -> PairSet:
    split, texts = _split(12, seed + 100)
    return PairSet(split.images, split.caption_image, texts)


@pytest.mark.parametrize("model", [SCRATCH, FROZEN], ids=["trained tower", "frozen tower"])
def test_curves_leave_training_alone_and_end_at_the_plain_evaluation(model):
    """With a curve the per-seed numbers are bitwise those of a run without one, and the
    curve's last point on the evaluation split is that same final-epoch evaluation."""
    val, test = _split(6, 1), _split(8, 2)
    cfg = TrainConfig(epochs=4, batch_size=8, lr_image=0.1, lr_text=0.1)
    plain = evaluate_pair_set(_set(), model, cfg, test[0], test[1], (0, 1), CPU)
    plan = CurvePlan(curve_epochs(2, cfg.epochs), {"val": val, "test": test})
    curved = evaluate_pair_set(_set(), model, cfg, test[0], test[1], (0, 1), CPU, curve=plan)
    for a, b in zip(plain, curved):
        assert a.metrics == b.metrics and a.final_loss == b.final_loss
        assert [(p["epoch"], p["split"]) for p in b.curve] == [(e, s) for e in (0, 2, 4) for s in ("val", "test")]
        last = next(p for p in b.curve if p["epoch"] == 4 and p["split"] == "test")
        assert {k: v for k, v in last.items() if k not in ("epoch", "split")} == a.metrics
        assert "curve" not in a.as_dict() and b.as_dict()["curve"] == b.curve
    # The points differ along training (the curve measures the student as it learns).
    means = [p["mean"] for p in curved[0].curve if p["split"] == "test"]
    assert len(set(means)) > 1


def test_curve_epochs():
    assert curve_epochs(10, 100) == tuple(range(0, 101, 10))
    assert curve_epochs(3, 10) == (0, 3, 6, 9, 10)  # the final epoch always
    assert curve_epochs(10, 101, start=1) == tuple(range(1, 102, 10))
    with pytest.raises(ValueError, match="eval_every"):
        curve_epochs(0, 10)


def _curve(val: list[float], test: list[float]) -> list[dict]:
    return [{"epoch": e, "split": s, "mean": v, "tr@1": v} for e, (a, b) in enumerate(zip(val, test))
            for s, v in (("val", a), ("test", b))]


def test_val_selection_never_reads_test_to_choose():
    """The val rule's epoch is a function of the val points alone: scrambling every test value
    except the one read moves neither the choice nor the number."""
    rng = random.Random(0)
    for _ in range(200):
        val = [rng.random() for _ in range(6)]
        test = [rng.random() for _ in range(6)]
        seed = {"metrics": {"mean": -1.0}, "curve": _curve(val, test)}
        metrics, epoch = selected_metrics(seed, "val")
        assert epoch == int(np.argmax(val)) and metrics["mean"] == test[epoch]
        scrambled = [v if i == epoch else rng.random() for i, v in enumerate(test)]
        again = selected_metrics({"metrics": {}, "curve": _curve(val, scrambled)}, "val")
        assert again == (metrics, epoch)
        best, at = selected_metrics(seed, "test")
        assert at == int(np.argmax(test)) and best["mean"] == max(test) >= metrics["mean"]
        assert selected_metrics(seed, "final") == ({"mean": -1.0}, None)


def test_selection_ties_go_to_the_earliest_epoch_and_errors_are_clear():
    assert best_epoch(_curve([1, 3, 3, 2], [0, 0, 0, 0]), "val") == 1
    with pytest.raises(SelectionError, match="eval_every"):
        selected_metrics({"metrics": {}}, "test")
    with pytest.raises(SelectionError, match="no point on the test split"):
        selected_metrics({"metrics": {}, "curve": [{"epoch": 0, "split": "val", "mean": 1.0}]}, "test")
    with pytest.raises(ValueError, match="selection rule"):
        selected_metrics({"metrics": {}}, "best")


def test_milestones_follow_torch_multisteplr(monkeypatch):
    """The learning rate of every epoch equals torch's MultiStepLR stepped once per epoch (the
    LoRS evaluation's schedule), for epoch and fraction milestones."""
    made: list[torch.optim.Optimizer] = []
    real_make = train_module.make_optimizer
    monkeypatch.setattr(train_module, "make_optimizer", lambda s, c: made.append(real_make(s, c)) or made[-1])
    for milestones, epochs, expected in (((3,), 6, [3]), ((0.5,), 8, [4]), ((2, 5), 7, [2, 5])):
        cfg = TrainConfig(epochs=epochs, batch_size=8, lr_image=0.2, lr_text=0.1, lr_milestones=milestones,
                          lr_gamma=0.5)
        assert list(cfg.milestone_epochs()) == expected
        seen: list[list[float]] = []
        train_student(build(), _set(), cfg, 0, CPU,
                      on_epoch_end=lambda e, s: seen.append([g["lr"] for g in made[-1].param_groups]))
        reference = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.2},
                                     {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1}])
        schedule = torch.optim.lr_scheduler.MultiStepLR(reference, milestones=expected, gamma=0.5)
        assert len(seen) == epochs
        for epoch_lrs in seen:  # the lr after each epoch = the lr the next epoch trains with
            reference.step()
            schedule.step()
            assert epoch_lrs == pytest.approx([g["lr"] for g in reference.param_groups], rel=0, abs=1e-15)


def build():
    from bench.models.student import build_student

    return build_student(SCRATCH, 16, 12, 0)


@pytest.mark.parametrize("bad, message", [
    ({"lr_milestones": [10]}, "before the last epoch"),
    ({"lr_milestones": [2.5]}, "neither an epoch"),
    ({"lr_milestones": [3, 3]}, "twice"),
    ({"lr_gamma": 0}, "lr_gamma"),
])
def test_bad_schedules_are_config_errors(bad, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(TrainConfig, {"epochs": 10, **bad}, "evaluation.train")


# Values read from the authors' code, as the presets cite them (file:line in PRESETS[...].sources).
PUBLISHED = {
    # princetonvisualai/multimodal_dataset_distillation: distill.py:512 epoch_eval_train=50 and
    # epoch.py:182 range(Epoch+1); epoch.py:172 SGD(momentum=0.9, weight_decay=0.0005);
    # distill.py:229 args.lr_net = syn_lr_img; epoch.py:186 evaluated once, at the end.
    "vl-distill": {"epochs": 50 + 1, "momentum": 0.9, "weight_decay": 0.0005, "milestones": (),
                   "learned": "image_for_both", "selection": "final", "points": None},
    # silicx/LoRS_Distill: distill_tesla_lors.py:518 epoch_eval_train=100, src/epoch.py:284 range(Epoch+1);
    # :260 mom=0.9, l2=0.0005; :272 MultiStepLR(milestones=[Epoch//2+1], gamma=0.1); :280-281 evaluated
    # after training epoch ep for ep in range(0, Epoch+1, Epoch//10) + [Epoch]; :296 best r_mean on test.
    "lors": {"epochs": 100 + 1, "momentum": 0.9, "weight_decay": 0.0005, "milestones": (100 // 2 + 1,),
             "learned": "per_side", "selection": "test",
             "points": tuple(sorted({ep + 1 for ep in list(range(0, 101, 100 // 10)) + [100]}))},
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_carry_the_cited_values(name):
    preset, want = PRESETS[name], PUBLISHED[name]
    base = TrainConfig(epochs=7, batch_size=33, lr_image=0.3, lr_text=0.4, momentum=0.2, lr_milestones=(3,))
    cfg = preset.train_config(base)
    assert (cfg.epochs, cfg.momentum, cfg.weight_decay, cfg.milestone_epochs()) == (
        want["epochs"], want["momentum"], want["weight_decay"], want["milestones"])
    assert (cfg.batch_size, cfg.lr_image, cfg.lr_text) == (33, 0.3, 0.4)  # the grid's own
    if want["milestones"]:
        assert cfg.lr_gamma == 0.1
    assert (preset.learned_lrs, preset.selection) == (want["learned"], want["selection"])
    ev = EvaluationConfig(protocol=name, train=base)
    (variant,) = ev.variants(SCRATCH, reference=False)
    assert variant.curve_epochs == want["points"]
    for key in (*preset.train, "learned_lrs", "selection"):
        assert key in preset.sources and ":" in preset.sources[key], f"{name}.{key} cites no source line"
    learned = {"image": 0.05, "text": 0.7}
    expected_lrs = {"image": 0.05, "text": 0.05} if want["learned"] == "image_for_both" else learned
    assert preset.lrs(learned) == expected_lrs


def test_suite_preset_changes_nothing():
    base = TrainConfig(epochs=9, batch_size=5)
    assert PRESETS["suite"].train_config(base) == base
    ev = from_dict(EvaluationConfig, {"protocol": "suite"})
    assert to_dict(ev) == to_dict(EvaluationConfig())  # same hash as a grid that never names it


@pytest.mark.parametrize("section, message", [
    ({"protocol": "lors2"}, "unknown evaluation protocol 'lors2'"),
    ({"protocol": ["suite", "suite"]}, "more than once"),
    ({"eval_every": 0}, "eval_every must be >= 1"),
    ({"students": {"source": {}}}, "'source' is the grid's own model"),
    ({"students": {"a/b": {}}}, "cannot be used in file names"),
    ({"students": {"x": {"text_head": "mlp"}}}, "evaluation.students.x.text_head"),
])
def test_bad_evaluation_sections_are_config_errors(section, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(EvaluationConfig, section, "evaluation")


def test_curves_never_measure_test_when_the_grid_evaluates_on_val():
    assert EvaluationConfig(split="val").curve_splits == ("val",)
    assert EvaluationConfig(split="test").curve_splits == ("val", "test")


def test_variants_put_the_headline_first_and_learned_lrs_only_on_the_source():
    ev = from_dict(EvaluationConfig, {"protocol": ["suite", "lors"], "eval_every": 5,
                                      "students": {"lin": {"text_head": "linear"}}})
    variants = ev.variants(SCRATCH, reference=False)
    assert [v.key for v in variants] == [("source", "suite"), ("source", "lors"), ("lin", "suite"), ("lin", "lors")]
    assert [v.use_learned_lrs for v in variants] == [True, True, False, False]
    assert variants[0].curve_epochs == curve_epochs(5, 100) and variants[1].curve_epochs[0] == 1
    assert variants[2].model.text_head == "linear"
    full = ev.variants(SCRATCH, reference=True)  # the whole-set reference: full_train, first protocol
    assert [v.key for v in full] == [("source", "suite"), ("lin", "suite")]
    assert all(v.train == ev.full_train for v in full)


def test_a_grid_records_curves_students_and_protocols_and_tables_read_them(tmp_path):
    """One tiny grid with curves, a second student and two protocols: every record keeps one
    result per (student, protocol), `table --select test` equals a by-hand reading of the
    curves, and the written tables hold the selection and cross-architecture summaries."""
    import json
    import subprocess
    import sys

    from bench.grid.runner import GridRun
    from bench.grid.store import ResultStore
    from bench.reports.outputs import write_reports
    from tests.grid_helpers import REPO, records, tiny_grid

    evaluation = {"seeds": [0, 1], "train": {"epochs": 4, "batch_size": 10},
                  "full_train": {"epochs": 2, "batch_size": 64}, "eval_every": 2, "protocol": ["suite", "lors"],
                  "students": {"lin": {"image_encoder": {"width": 8, "depth": 2}, "text_head": "linear"}}}
    grid = tiny_grid(tmp_path, evaluation=evaluation, methods=["random", "kcenter"])
    run = GridRun(grid, progress=False).run()
    assert not run.failed
    recs = records(tmp_path / "results")
    coreset = recs["embedded__kcenter__b10__s0"]
    assert coreset["eval_protocol"] == "suite"
    assert [(e["student"], e["protocol"]) for e in coreset["evaluations"]] == [
        ("source", "lors"), ("lin", "suite"), ("lin", "lors")]
    assert [p["epoch"] for p in coreset["per_seed"][0]["curve"] if p["split"] == "test"] == [0, 2, 4]
    lors_runs = coreset["evaluations"][0]["per_seed"]
    assert [p["epoch"] for p in lors_runs[0]["curve"] if p["split"] == "test"] == list(range(1, 102, 10))
    assert coreset["evaluations"][0]["eval_recipe"]["lr_milestones"] == [51]
    assert [(e["student"], e["protocol"]) for e in recs["embedded__full"]["evaluations"]] == [("lin", "suite")]

    # table --select test, by hand: per run the best test mean of its curve, pooled over runs.
    out = subprocess.run([sys.executable, str(REPO / "run_bench.py"), "table", str(tmp_path / "results"),
                          "--select", "test", "--format", "csv"], capture_output=True, text=True, check=True).stdout
    rows = [line.split(",") for line in out.splitlines()]
    header = rows[0]
    for student, protocol, runs in (("source", "suite", coreset["per_seed"]), ("source", "lors", lors_runs),
                                    ("lin", "lors", coreset["evaluations"][2]["per_seed"])):
        best = [max(p["mean"] for p in seed["curve"] if p["split"] == "test") for seed in runs]
        final = [seed["metrics"]["mean"] for seed in runs]
        row = {r[4]: r for r in rows[1:] if r[:4] == ["embedded", student, protocol, "10"]}
        assert row["mean"][header.index("kcenter")] == f"{np.mean(best):.1f} ± {np.std(best, ddof=1):.1f}"
        assert row["optimism"][header.index("kcenter")] == f"{np.mean(best) - np.mean(final):+.1f}"

    store = ResultStore(grid.results_dir)
    write_reports(grid.results_dir, ["embedded"], store.grid_results(store.read_manifest().cells))
    tables = tmp_path / "results" / "tables"
    assert (tables / "embedded_selection.md").is_file() and (tmp_path / "results" / "plots" / "embedded_curves_b10.png").is_file()
    students = (tables / "embedded_students.csv").read_text().splitlines()
    cols = students[0].split(",")
    line = next(r.split(",") for r in students if r.startswith("10,kcenter"))
    lin = np.mean([s["metrics"]["mean"] for s in coreset["evaluations"][1]["per_seed"]])
    assert cols[2:5] == ["source", "lin", "cross-arch"] and line[cols.index("cross-arch")] == f"{lin:.1f}"
    assert "test-selected (optimistic)" in (tables / "embedded_selection.md").read_text()
    json.dumps(coreset)  # records stay valid JSON


def test_cached_tower_features_give_the_tower_pass_bit_for_bit():
    """embed_split on a frozen tower's precomputed features equals the pass through the tower."""
    from bench.models.student import build_student
    from bench.protocol.embed import embed_split, split_features

    split, texts = _split(600, 3)  # more than one 512-image batch
    student = build_student(FROZEN, 16, 12, 0)
    direct = embed_split(student, split, texts, CPU)
    cached = embed_split(student, split, texts, CPU, image_features=split_features(student, split, CPU))
    assert torch.equal(direct[0], cached[0]) and torch.equal(direct[1], cached[1])
