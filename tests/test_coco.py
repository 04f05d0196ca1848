"""iuq_lite.data.coco: items match the json, bad input fails clearly, collate, augmentation, check CLI."""
import json
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from iuq_lite.config import DataConfig
from iuq_lite.data import coco as C

# pycocotools' annToMask under numpy 2 (the library silences its own decode calls)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), dtype=np.uint8, order="F")
    m[y0:y1, x0:x1] = 1
    return m


def _compressed(m):
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _uncompressed(m):
    """COCO's uncompressed RLE (column-major run lengths, starting with a 0-run)."""
    flat = m.flatten(order="F")
    counts, prev, run = [], 0, 0
    for v in flat:
        if v != prev:
            counts.append(run)
            run, prev = 0, v
        run += 1
    counts.append(run)
    return {"size": list(m.shape), "counts": counts}


def make_coco(root: Path, split: str = "val") -> Path:
    """A hand-made COCO 2017 split: RGB (polygon, compressed RLE, uncompressed-RLE crowd), grayscale without
    annotations, RGBA, 16-bit and palette images. Category ids unsorted and non-contiguous."""
    img_dir, ann_dir = root / f"{split}2017", root / "annotations"
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(img_dir / "rgb.png")
    Image.fromarray(np.full((32, 32), 128, dtype=np.uint8), mode="L").save(img_dir / "gray.png")
    Image.fromarray(np.full((32, 40, 4), 255, dtype=np.uint8), mode="RGBA").save(img_dir / "rgba.png")
    Image.fromarray(np.full((24, 24), 65535, dtype=np.uint16)).save(img_dir / "g16.png")
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).convert("P").save(img_dir / "pal.png")
    images = [{"id": 7, "file_name": "rgb.png", "height": 40, "width": 48},
              {"id": 3, "file_name": "gray.png", "height": 32, "width": 32},
              {"id": 11, "file_name": "rgba.png", "height": 32, "width": 40},
              {"id": 12, "file_name": "g16.png", "height": 24, "width": 24},
              {"id": 13, "file_name": "pal.png", "height": 16, "width": 16}]
    anns = [
        {"id": 1, "image_id": 7, "category_id": 5, "iscrowd": 0, "area": 100.0, "bbox": [0, 0, 1, 1],
         "segmentation": [[5, 5, 25, 5, 25, 20, 5, 20], [30, 30, 40, 30, 35, 38]], "groups": ["deformed"]},
        {"id": 2, "image_id": 7, "category_id": 2, "iscrowd": 0, "area": 60.0, "bbox": [0, 0, 1, 1],
         "segmentation": _compressed(_rect(40, 48, 2, 8, 30, 40))},
        {"id": 3, "image_id": 7, "category_id": 9, "iscrowd": 1, "area": 70.0, "bbox": [0, 0, 1, 1],
         "segmentation": _uncompressed(_rect(40, 48, 30, 37, 2, 12))},
        {"id": 4, "image_id": 11, "category_id": 9, "iscrowd": 0, "area": 50.0, "bbox": [0, 0, 1, 1],
         "segmentation": [[2, 2, 12, 2, 12, 12]], "groups": ["transparent", "small_blurry"]},
        {"id": 5, "image_id": 12, "category_id": 2, "iscrowd": 0, "area": 16.0, "bbox": [0, 0, 1, 1],
         "segmentation": _compressed(_rect(24, 24, 4, 8, 4, 8))},
    ]
    cats = [{"id": 9, "name": "nine"}, {"id": 2, "name": "two"}, {"id": 5, "name": "five"}]
    ann_file = ann_dir / f"instances_{split}2017.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann_file


def _edit(ann_file: Path, fn) -> Path:
    data = json.loads(ann_file.read_text())
    fn(data)
    ann_file.write_text(json.dumps(data))
    return ann_file


@pytest.fixture
def hand(tmp_path):
    ann = make_coco(tmp_path)
    return tmp_path / "val2017", ann


def test_items_match_json(hand):
    img_dir, ann = hand
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean file warns about nothing
        ds = C.CocoInstances(img_dir, ann)
    assert ds.ids == [3, 7, 11, 12, 13] and len(ds) == 5
    assert ds.cat_ids == [2, 5, 9] and ds.contiguous_to_cat_id == [2, 5, 9]
    assert ds.cat_id_to_contiguous == {2: 0, 5: 1, 9: 2} and ds.class_names == ["two", "five", "nine"]
    assert ds.num_classes == 3
    for idx, image_id in enumerate(ds.ids):
        image, t = ds[idx]
        info = ds.coco.imgs[image_id]
        assert image.shape == (3, info["height"], info["width"]) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        anns = ds.coco.imgToAnns[image_id]
        assert t["image_id"] == image_id and t["masks"].dtype == torch.bool
        assert t["masks"].shape == (len(anns), info["height"], info["width"])
        for k, a in enumerate(anns):
            ref = ds.coco.annToMask(a)
            assert torch.equal(t["masks"][k], torch.from_numpy(ref).bool())
            assert t["labels"][k] == ds.cat_id_to_contiguous[a["category_id"]]
            assert bool(t["iscrowd"][k]) == bool(a["iscrowd"])
            assert t["groups"][k] == a.get("groups", [])
    _, t = ds[ds.ids.index(3)]  # grayscale image without annotations
    assert t["masks"].shape == (0, 32, 32) and t["labels"].shape == (0,) and t["groups"] == []
    image, _ = ds[ds.ids.index(3)]
    assert torch.allclose(image, torch.full_like(image, 128 / 255))
    assert torch.allclose(ds[ds.ids.index(11)][0], torch.ones(3, 32, 40))  # RGBA: alpha dropped
    assert torch.allclose(ds[ds.ids.index(12)][0], torch.ones(3, 24, 24))  # 16-bit: / 65535
    _, t = ds[ds.ids.index(7)]
    assert t["labels"].tolist() == [1, 0, 2] and t["iscrowd"].tolist() == [False, False, True]


def test_bad_json_names_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        C.CocoInstances(tmp_path, bad)
    bad.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match=r"bad.json.*categories"):
        C.CocoInstances(tmp_path, bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json.*not a COCO"):
        C.CocoInstances(tmp_path, bad)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        C.CocoInstances(tmp_path, tmp_path / "nope.json")


def test_unknown_category_and_image_name_annotation(hand):
    img_dir, ann = hand
    _edit(ann, lambda d: d["annotations"][1].update(category_id=77))
    with pytest.raises(ValueError, match="annotation id 2 has category id 77"):
        C.CocoInstances(img_dir, ann)
    _edit(ann, lambda d: d["annotations"][1].update(category_id=2, image_id=999))
    with pytest.raises(ValueError, match="annotation id 2 refers to image id 999"):
        C.CocoInstances(img_dir, ann)


def test_missing_and_unreadable_images(hand):
    img_dir, ann = hand
    (img_dir / "rgba.png").unlink()
    (img_dir / "g16.png").write_bytes(b"not a png at all")
    ds = C.CocoInstances(img_dir, ann)  # lazy: construction does not touch image files
    with pytest.raises(FileNotFoundError, match=r"rgba.png.*image id 11"):
        ds[ds.ids.index(11)]
    with pytest.raises(FileNotFoundError, match=r"1 image file.*rgba.png \(image id 11\)"):
        ds.check()
    with pytest.raises(OSError, match=r"cannot read image file .*g16.png \(image id 12\)"):
        ds[ds.ids.index(12)]
    _edit(ann, lambda d: d["images"][1].update(height=33))
    ds = C.CocoInstances(img_dir, ann)
    with pytest.raises(ValueError, match=r"gray.png \(image id 3\).*height=33"):
        ds[ds.ids.index(3)]
    _edit(ann, lambda d: d["images"][0].update(height=41))  # RLE sizes no longer match: caught up front
    with pytest.raises(ValueError, match=r"annotation id 2: RLE size \[40, 48\] differs from image id 7"):
        C.CocoInstances(img_dir, ann)


def _add_degenerate(d):
    base = {"image_id": 7, "category_id": 2, "iscrowd": 0, "bbox": [0, 0, 1, 1]}
    d["annotations"] += [
        {**base, "id": 100, "area": 5.0, "segmentation": [[1, 1, 5, 5]]},              # 2 points
        {**base, "id": 101, "area": 0.0, "segmentation": [[1, 1, 9, 1, 9, 9]]},        # zero area
        {**base, "id": 102, "area": 3.0, "segmentation": [[1, 1, 5, 5, 9, 9]]},        # collinear: empty
    ]


def test_degenerate_annotations_warn_once_with_count(hand):
    img_dir, ann = hand
    _edit(ann, _add_degenerate)
    with pytest.warns(UserWarning, match="skipped 3 degenerate") as rec:
        ds = C.CocoInstances(img_dir, ann)
    assert len(rec) == 1
    assert ds.skipped == {"polygon_lt_3_points": [100], "zero_area": [101], "empty_mask": [102]}
    _, t = ds[ds.ids.index(7)]
    assert t["masks"].shape[0] == 3 and t["masks"].flatten(1).any(1).all()
    # Without the eager check, the empty mask is found on load: skipped, recorded, warned once.
    with pytest.warns(UserWarning, match="skipped 2 degenerate"):
        lazy = C.CocoInstances(img_dir, ann, check_masks=False)
    with pytest.warns(UserWarning, match=r"\[102\].*image id 7"):
        _, t = lazy[lazy.ids.index(7)]
    assert t["masks"].shape[0] == 3 and lazy.skipped["empty_mask"] == [102]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lazy[lazy.ids.index(7)]


def test_collate_pads_to_32_and_records_size(hand):
    ds = C.CocoInstances(*hand)
    a, b = ds[ds.ids.index(7)], ds[ds.ids.index(12)]
    b[1]["orig_size"] = torch.tensor([24, 24])
    images, targets = C.collate([a, b])
    assert images.shape == (2, 3, 64, 64)
    assert targets[0]["size"].tolist() == [40, 48] and targets[1]["size"].tolist() == [24, 24]
    assert targets[1]["orig_size"].tolist() == [24, 24]
    assert torch.equal(images[0, :, :40, :48], a[0]) and images[0, :, 40:].abs().sum() == 0
    assert targets[0]["masks"].shape == (3, 64, 64) and targets[0]["masks"].dtype == torch.bool
    assert torch.equal(targets[0]["masks"][:, :40, :48], a[1]["masks"]) and not targets[0]["masks"][:, 40:].any()
    images, _ = C.collate([ds[ds.ids.index(3)]])
    assert images.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("crop_size", [None, 64])
def test_augmentation_keeps_image_and_masks_aligned(crop_size):
    torch.manual_seed(0)
    aug = C.build_augment(DataConfig(augment=True, scale_range=(0.5, 1.5), crop_size=crop_size))
    assert C.build_augment(DataConfig(augment=False)) is None
    masks = torch.zeros(3, 64, 96, dtype=torch.bool)
    masks[0, 5:40, 3:40] = True
    masks[1, 30:60, 50:90] = True
    masks[2, 0, 95] = True  # one-pixel corner instance: often cropped away
    image = torch.zeros(3, 64, 96)
    image[0] = masks[0].float()  # paint instance 0 into the red channel, instance 1 into green
    image[1] = masks[1].float()
    target = {"image_id": 1, "labels": torch.tensor([0, 1, 2]), "masks": masks,
              "iscrowd": torch.tensor([False, True, False]), "groups": [["a"], ["b"], ["c"]]}
    dropped = 0
    for _ in range(12):
        img, t = aug(image, target)
        k = len(t["labels"])
        assert t["masks"].shape[0] == k == len(t["iscrowd"]) == len(t["groups"]) and t["masks"].dtype == torch.bool
        assert t["masks"].shape[-2:] == img.shape[-2:] and t["masks"].flatten(1).any(1).all()
        if crop_size:
            assert img.shape[-2:] == (crop_size, crop_size)
        dropped += k < 3
        for j, lab in enumerate(t["labels"].tolist()):
            assert t["groups"][j] == [["a"], ["b"], ["c"]][lab] and bool(t["iscrowd"][j]) == (lab == 1)
            if lab < 2 and t["masks"][j].sum() >= 100:
                painted, m = img[lab] > 0.5, t["masks"][j]
                # one boundary row may differ (0.5 ties); the centroid may not move
                assert (painted & m).sum().item() / (painted | m).sum().item() >= 0.85
                c_p, c_m = painted.nonzero().float().mean(0), m.nonzero().float().mean(0)
                assert (c_p - c_m).abs().max() < 1.0
    if crop_size:  # the corner pixel is really cropped away sometimes, and dropped consistently
        assert dropped > 0


def _layout(root: Path) -> Path:
    for split in ("train", "val"):
        make_coco(root, split)
    return root


def test_check_root_cli_good_and_broken(tmp_path, capsys):
    root = _layout(tmp_path / "coco")
    assert C.main(["check", "--root", str(root)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["ok"] and out["problems"] == [] and out["images"] == 10 and out["annotations"] == 10
    assert out["splits"]["val"]["images"] == 5
    C.require_coco(root)  # does not raise
    (root / "train2017" / "rgb.png").unlink()
    _edit(root / "annotations" / "instances_val2017.json",
          lambda d: d["annotations"][0].update(category_id=42))
    res = subprocess.run([sys.executable, "-m", "iuq_lite.data.coco", "check", "--root", str(root)],
                         check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    text = " ".join(out["problems"])
    assert not out["ok"] and "rgb.png (image id 7)" in text and "category id 42" in text
    assert out["splits"]["train"]["missing_files"] == 1 and out["splits"]["val"]["unknown_categories"] == 1


def test_require_coco_gives_instructions(tmp_path):
    with pytest.raises(RuntimeError) as e:
        C.require_coco(tmp_path / "coco")
    msg = str(e.value)
    for url in C.COCO_URLS:
        assert url in msg
    assert "instances_train2017.json" in msg and "val2017/" in msg and "check --root" in msg


def test_build_datasets_coco_root_and_shapes(tmp_path, monkeypatch):
    root = _layout(tmp_path / "coco")
    train, val = C.build_datasets(DataConfig(root=str(root), augment=True))
    assert isinstance(train.transforms, C.JointAugment) and val.transforms is None
    assert len(train) == len(val) == 5
    from iuq_lite.data import shapes
    paths = {"train_images": str(root / "train2017"), "train_ann": str(root / "annotations/instances_train2017.json"),
             "val_images": str(root / "val2017"), "val_ann": str(root / "annotations/instances_val2017.json")}
    monkeypatch.setattr(shapes, "ensure_from_config", lambda cfg: paths)
    train, val = C.build_datasets(replace(DataConfig(), root=None))
    assert train.transforms is None and val.ann_file == Path(paths["val_ann"])


def test_generated_shapes_load(tmp_path):
    """The embedded generator's RLE output round-trips through the dataset."""
    from iuq_lite.data import shapes
    ann = shapes.generate(tmp_path, split="val", num_images=3, image_size=64, seed=1, workers=1)
    ds = C.CocoInstances(tmp_path / "val2017", ann)
    for i in range(len(ds)):
        image, t = ds[i]
        anns = ds.coco.imgToAnns[ds.ids[i]]
        assert image.shape == (3, 64, 64) and t["masks"].shape[0] == len(anns)
        assert [int(m.sum()) for m in t["masks"]] == [int(ds.coco.annToMask(a).sum()) for a in anns]
        assert t["groups"] == [a.get("groups", []) for a in anns]


def test_check_root_reports_a_missing_image_and_a_broken_json_together(tmp_path):
    root = _layout(tmp_path / "coco")
    (root / "train2017" / "rgb.png").unlink()
    ann = root / "annotations" / "instances_val2017.json"
    ann.write_text(ann.read_text()[:-40])                                  # truncated: not valid JSON
    out = C.check_root(root)
    text = " ".join(out["problems"])
    assert not out["ok"] and "rgb.png (image id 7)" in text and "instances_val2017.json" in text
    assert "not valid JSON" in text and out["splits"]["train"]["missing_files"] == 1
