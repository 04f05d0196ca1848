"""The embedded shapes dataset: determinism, COCO compatibility, failure groups, CLI, cache."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

import iuq_lite as iuq
from iuq_lite.data import shapes
from iuq_lite.evaluate import coco_eval


def _load(ann: str | Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_arguments_give_byte_identical_files(tmp_path):
    kw = {"split": "train", "num_images": 40, "image_size": 48, "seed": 3, "stuff": True}
    shapes.generate(tmp_path / "a", workers=2, **kw)
    shapes.generate(tmp_path / "b", workers=1, **kw)  # worker count must not matter either
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 40 + 2 and a == b  # 40 PNGs + instances + stuff json


def test_train_and_val_differ(tiny_data):
    train = Path(tiny_data["train_images"], "000000000001.png").read_bytes()
    val = Path(tiny_data["val_images"], "000000000001.png").read_bytes()
    assert train != val


def test_coco_loads_and_every_annotation_decodes_to_its_area(tiny_data):
    coco = _load(tiny_data["train_ann"])
    assert len(coco.getImgIds()) == 64 and [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(
        shapes.CLASS_NAMES)
    for ann in coco.loadAnns(coco.getAnnIds()):
        m = coco.annToMask(ann)
        assert m.shape == (64, 64) and m.sum() == ann["area"] >= 10
        assert ann["iscrowd"] == 0 and set(ann["groups"]) <= set(shapes.GROUPS)
        assert np.allclose(mask_util.toBbox(coco.annToRLE(ann)), ann["bbox"])
    for img in coco.loadImgs(coco.getImgIds()):
        assert Path(tiny_data["train_images"], img["file_name"]).exists()


def test_groups_each_hold_a_meaningful_share(tiny_data):
    s = shapes.stats(tiny_data["train_ann"])
    assert s["images"] == 64 and 4 <= s["mean_instances_per_image"] <= 14
    for group in shapes.GROUPS:
        assert 0.05 * s["instances"] <= s["per_group"][group] <= 0.4 * s["instances"], (group, s)
    assert s["area_small_medium_large"][2] == 0  # no COCO-"large" objects: APl is None on shapes


def test_many_same_class_instances_per_image(tiny_data):
    coco = _load(tiny_data["val_ann"])
    most = [max(np.bincount([a["category_id"] for a in coco.imgToAnns[i]] or [0])) for i in coco.getImgIds()]
    assert np.mean(most) >= 3  # the query-collapse regime: several look-alikes in one image


def test_unknown_knob_is_an_error(tmp_path):
    with pytest.raises(TypeError, match="occluded_similar"):
        shapes.generate(tmp_path, split="val", num_images=1, occluded=0.5)


def test_cli_last_stdout_line_is_json(tmp_path):
    out = subprocess.run([sys.executable, "-m", "iuq_lite.data.shapes", "--root", str(tmp_path), "--split", "val",
                          "--num-images", "4", "--seed", "1", "--image-size", "48"],
                         capture_output=True, text=True, check=True)
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["images"] == 4 and last["instances"] > 0 and Path(last["ann"]).exists()
    assert "4/4" in out.stderr


def test_ground_truth_as_predictions_scores_100(tiny_data):
    coco = _load(tiny_data["val_ann"])
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
                "score": 1.0} for a in coco.dataset["annotations"]]
    m = coco_eval(coco, results)
    assert m["segm/AP"] == pytest.approx(100) and m["segm/APl"] is None
    for group in shapes.GROUPS:
        assert m[f"segm/AP@{group}"] == pytest.approx(100)


def test_cache_is_reused(tmp_path, monkeypatch):
    kw = {"num_train": 3, "num_val": 2, "image_size": 32, "seed": 5, "cache_dir": tmp_path}
    first = shapes.ensure_dataset(**kw)
    manifest = json.loads(Path(first["root"], "manifest.json").read_text())
    assert manifest["sha256"]["annotations/instances_val2017.json"] == shapes._sha256(Path(first["val_ann"]))

    def boom(*a, **k):
        raise AssertionError("regenerated a cached dataset")
    monkeypatch.setattr(shapes, "generate", boom)
    assert shapes.ensure_dataset(**kw) == first
    with pytest.raises(AssertionError):  # other knobs -> another folder
        shapes.ensure_dataset(**kw, knobs={"transparent": 0.5})


def test_dev_split_is_its_own_stream_and_reused(tiny_data):
    """data.val_split="dev": a split for choosing schedules, generated beside train/val, never repeating val."""
    from dataclasses import replace
    cfg = iuq.config.from_preset("tiny", {"data.val_split": "dev"})
    paths = shapes.ensure_from_config(cfg.data)
    assert paths["root"] == tiny_data["root"] and paths["dev_ann"].endswith("instances_dev2017.json")
    dev, val = (json.loads(open(paths[k]).read()) for k in ("dev_ann", "val_ann"))
    assert len(dev["images"]) == cfg.data.num_val == len(val["images"])
    assert dev["annotations"] != val["annotations"]
    mtime = os.path.getmtime(paths["dev_ann"])
    assert shapes.ensure_from_config(replace(cfg.data))["dev_ann"] == paths["dev_ann"]
    assert os.path.getmtime(paths["dev_ann"]) == mtime          # reused, not regenerated
    assert iuq.data.coco.build_datasets(cfg.data)[1].ann_file == Path(paths["dev_ann"])
