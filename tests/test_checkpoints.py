"""Committed checkpoints (DESIGN §4): load strictly with weights_only, <= 10 MB, and reproduce their AP."""
import json
from pathlib import Path

import pytest
import torch

import iuq_lite as iuq

ROOT = Path(__file__).resolve().parents[1]
CKPTS = sorted((ROOT / "checkpoints").glob("*/model.pt"))


def test_checkpoints_are_committed():
    # the short-schedule pair and the converged pair the notebooks and `make figures` load
    pairs = {"shapes_s0", "shapes_iuq_s0", "shapes_long_s0", "shapes_long_iuq_s0"}
    assert {p.parent.name for p in CKPTS} >= pairs, "run `make reproduce`"


@pytest.mark.parametrize("path", CKPTS, ids=lambda p: p.parent.name)
def test_checkpoint_reproduces_its_manifest(path):
    assert path.stat().st_size <= 10 * 2**20
    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert manifest["model_sha256"] == iuq.utils.sha256_file(path)
    old = torch.get_num_threads()
    torch.set_num_threads(manifest["eval_threads"])       # fixed thread count, as when it was recorded
    try:
        model, cfg = iuq.checkpoint.load_model(path)
        val = iuq.data.coco.build_datasets(cfg.data)[1]
        metrics = iuq.evaluate.evaluate(model, val, topk=cfg.model.test_topk)
    finally:
        torch.set_num_threads(old)
    assert abs(metrics["segm/AP"] - manifest["metrics"]["segm/AP"]) <= 0.1
    assert abs(metrics["segm/AP50"] - manifest["metrics"]["segm/AP50"]) <= 0.1
