"""The class count follows a COCO-layout folder's categories (fewer or more than the preset's, non-contiguous
ids); an explicit model.num_classes that contradicts the data stops the run before the first step."""
import json

import pytest
import torch

import iuq_lite as iuq
from iuq_lite.data import shapes
from iuq_lite.data.coco import ClassCountError, CocoInstances, resolve_num_classes, split_paths

STEPS = {"train.iters": 2, "train.batch_size": 2, "train.log_every": 1}


def _folder(root, *, num_classes: int, extra: int = 0):
    """A COCO-layout folder of shapes (4 train / 2 val, 64 px) whose category ids are 10, 20, ... (non-contiguous)
    plus `extra` categories without annotations (ids 1000, 1001, ...)."""
    for split, n in (("train", 4), ("val", 2)):
        ann = shapes.generate(root, split=split, num_images=n, image_size=64, num_classes=num_classes)
        d = json.loads(ann.read_text())
        for a in d["annotations"]:
            a["category_id"] *= 10
        d["categories"] = [{**c, "id": c["id"] * 10} for c in d["categories"]] + [
            {"id": 1000 + i, "name": f"extra{i}"} for i in range(extra)]
        ann.write_text(json.dumps(d))
    return root


@pytest.mark.parametrize(("num_classes", "extra"), [(3, 0), (6, 3)], ids=["fewer", "more"])
def test_class_count_follows_the_data(tmp_path, capsys, num_classes, extra):
    """tiny (6 classes) on 3 categories (evaluation used to die in to_coco_results) and on 9 (the first step
    used to die in the matcher): trains, evaluates, records the count; results carry the json's category ids."""
    root = _folder(tmp_path / "coco", num_classes=num_classes, extra=extra)
    n = num_classes + extra
    cfg = iuq.config.from_preset("tiny", {"data.root": str(root), **STEPS})
    res = iuq.train.train(cfg, out=tmp_path / "run", progress=False)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("model.num_classes")]
    assert len(lines) == 1 and f": {n} (" in lines[0] and "preset's 6" in lines[0]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["num_classes"] == manifest["config"]["model"]["num_classes"] == n
    assert res.metrics["segm/AP"] is not None
    model, cfg2 = iuq.train.load_model(res.checkpoint)            # evaluates anywhere: the count is in model.pt
    assert cfg2.model.num_classes == n and model.num_classes == n
    val = CocoInstances(*split_paths(root, "val"))
    iuq.evaluate.evaluate(model, val, out_json=tmp_path / "results.json", topk=n * 5)
    used = {r["category_id"] for r in json.loads((tmp_path / "results.json").read_text())}
    assert used and used <= set(val.cat_ids) and len(val.cat_ids) == n


def test_explicit_num_classes_contradicting_the_data_stops_before_the_first_step(tmp_path, capsys):
    root = _folder(tmp_path / "coco", num_classes=3)
    argv = ["--preset", "tiny", "--out", str(tmp_path / "run"), "--no-progress", "--set", f"data.root={root}",
            "--set", "model.num_classes=6", "--set", "train.iters=2", "--set", "train.batch_size=2"]
    with pytest.raises(SystemExit) as err:          # 6 is the preset's value, but --set makes it explicit
        iuq.train.main(argv)
    msg = str(err.value)
    assert "\n" not in msg and "model.num_classes=6" in msg and "has 3 categories" in msg
    assert not (tmp_path / "run" / "ckpt").exists() and not (tmp_path / "run" / "history.jsonl").exists()
    cfg = iuq.config.from_preset("tiny", {"data.root": str(root), "model.num_classes": 5, **STEPS})
    with pytest.raises(ClassCountError, match="num_classes=5.*has 3 categories"):   # a library call too
        iuq.train.train(cfg, out=tmp_path / "run2", progress=False)


def test_train_and_val_must_list_the_same_categories(tmp_path):
    root = _folder(tmp_path / "coco", num_classes=3)
    _, ann = split_paths(root, "val")
    d = json.loads(ann.read_text())
    d["categories"].append({"id": 999, "name": "only in val"})
    ann.write_text(json.dumps(d))
    cfg = iuq.config.from_preset("tiny", {"data.root": str(root)})
    train, val = (CocoInstances(*split_paths(root, s)) for s in ("train", "val"))
    with pytest.raises(ValueError, match="different category ids"):
        resolve_num_classes(cfg, train, val)
    assert resolve_num_classes(iuq.config.from_preset("tiny"), train) == iuq.config.from_preset("tiny")  # shapes


def test_to_coco_results_names_a_class_the_dataset_lacks():
    pred = {"masks": torch.ones(1, 4, 4, dtype=torch.bool), "labels": torch.tensor([5]), "scores": torch.ones(1)}
    with pytest.raises(ValueError, match="image id 7: a prediction has class 5, but the dataset has 3"):
        iuq.evaluate.to_coco_results([pred], [7], [1, 3, 9])
