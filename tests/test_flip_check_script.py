"""scripts/flip_check.py, the converged study's flip check: test-time flip wrapper and the flip statistics."""
import importlib.util
import json
import types
from pathlib import Path

import pytest
import torch

from iuq_lite import analysis
from iuq_lite.config import from_preset
from iuq_lite.data.coco import CocoInstances, collate
from iuq_lite.model import build_criterion, build_model

_spec = importlib.util.spec_from_file_location(
    "flip_check", Path(__file__).resolve().parents[1] / "scripts" / "flip_check.py")
flip_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(flip_check)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(from_preset("tiny")).eval()


@pytest.fixture(scope="module")
def val_set(tiny_data) -> CocoInstances:
    return CocoInstances(tiny_data["val_images"], tiny_data["val_ann"])


def test_flipped_input_undoes_its_flip(model, val_set):
    images = collate([val_set[i] for i in range(2)])[0]
    with torch.no_grad():
        out = flip_check.FlippedInput(model)(images.flip(-1))  # input flipped twice: model(images)
        assert torch.allclose(out["pred_masks"].flip(-1), model(images)["pred_masks"], atol=1e-5)
        assert torch.equal(out["pred_logits"], model(images)["pred_logits"])


def test_flip_stats_agree_with_the_library_and_bound_each_other(model, val_set):
    s = flip_check.flip_stats(model, val_set, num_images=8, batch_size=4, threshold=0.0)  # every query
    e = analysis.equivariance_errors(model, val_set, kinds=("hflip",), num_images=8, batch_size=4)
    assert s["hflip"] == pytest.approx(e["hflip"], rel=1e-4)  # same pool, same flip
    assert 0 < s["template_share"] <= 1 and s["template_asym"] >= 0 and s["residual_hflip"] >= 0
    assert s["queries_kept"] == 8 * model(collate([val_set[0]])[0])["pred_logits"].shape[1]
    assert 0 <= s["query_self_iou"] <= s["query_best_iou"] <= 1 and 0 <= s["query_best_is_self"] <= 1
    assert s["mask_hflip"] >= 0


def test_eq8_flip_loss_is_seeded_and_positive(model, val_set):
    crit = build_criterion(from_preset("tiny"))
    runs = [flip_check.flip_stats(model, val_set, criterion=crit, num_images=4, batch_size=4, threshold=0.0)
            for _ in range(2)]
    a, b = (r["eq8_hflip"] for r in runs)
    assert a == b and a > 0


def test_main_keeps_the_entries_of_runs_whose_folders_are_gone(tmp_path, monkeypatch):
    """A replaced machine keeps only the repository: checking the runs it still has replaces their entries and
    keeps the others, each with the revision it was measured at."""
    monkeypatch.setattr(flip_check, "load_model", lambda p: (None, types.SimpleNamespace(
        data=None, model=types.SimpleNamespace(test_topk=1))))
    monkeypatch.setattr(flip_check, "build_datasets", lambda cfg: (None, None))
    monkeypatch.setattr(flip_check, "build_criterion", lambda cfg: None)
    monkeypatch.setattr(flip_check, "evaluate", lambda *a, **k: {"segm/AP": 7.0})
    monkeypatch.setattr(flip_check, "flip_stats", lambda *a, **k: {"hflip": 0.5})
    monkeypatch.setattr(flip_check.utils, "git_commit", lambda *a: "new")
    out = tmp_path / "check.json"
    old = [{"run": r, "seed": s, "segm/AP": 1.0, "hflip": 0.9} for r, s in (("baseline_s0", 0), ("full_IUQ_s3", 3))]
    out.write_text(json.dumps({"commit": "old", "runs": old}))
    run = tmp_path / "long" / "full_IUQ_s3"
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(b"")
    (run / "manifest.json").write_text(json.dumps({"seed": 3, "metrics": {"segm/AP": 8.0}}))
    res = flip_check.main(["--runs", str(tmp_path / "long"), "--out", str(out)])
    assert [(r["run"], r["commit"], r["hflip"], r["segm/AP"]) for r in res["runs"]] == [
        ("baseline_s0", "old", 0.9, 1.0), ("full_IUQ_s3", "new", 0.5, 8.0)]
    assert res["runs"][1]["AP_hflip_input"] == 7.0 and json.loads(out.read_text()) == res
