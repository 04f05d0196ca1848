"""Post-processing and COCO evaluation: perfect / wrong / empty predictions, per-group ignore semantics."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from iuq_lite import evaluate as ev
from iuq_lite.data.shapes import GROUPS


def _quiet_coco(dataset: dict | str) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(dataset, str):
            return COCO(dataset)
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
        return coco


def _gt_preds(coco: COCO, *, shift: int = 0) -> tuple[list[dict], list[int], list[int]]:
    """Ground truth as post-processed predictions (score 1); labels shifted cyclically by `shift`."""
    cat_ids = sorted(coco.getCatIds())
    ids = sorted(coco.getImgIds())
    preds = []
    for i in ids:
        anns = coco.imgToAnns[i]
        masks = np.stack([coco.annToMask(a) for a in anns]) if anns else np.zeros((0, 1, 1), np.uint8)
        labels = [(cat_ids.index(a["category_id"]) + shift) % len(cat_ids) for a in anns]
        preds.append({"scores": torch.ones(len(anns)), "labels": torch.tensor(labels, dtype=torch.long),
                      "masks": torch.from_numpy(masks).bool()})
    return preds, ids, cat_ids


def test_ground_truth_predictions_give_100_everywhere(tiny_data):
    coco = _quiet_coco(tiny_data["val_ann"])
    m = ev.coco_eval(coco, ev.to_coco_results(*_gt_preds(coco)))
    assert m["segm/AP"] == m["segm/AP50"] == m["segm/AP75"] == pytest.approx(100)
    assert m["segm/APl"] is None  # no large objects at 64 px: COCOeval's -1 becomes None
    assert all(m[f"segm/AP@{g}"] == pytest.approx(100) for g in GROUPS)


def test_wrong_labels_give_ap_zero(tiny_data):
    coco = _quiet_coco(tiny_data["val_ann"])
    m = ev.coco_eval(coco, ev.to_coco_results(*_gt_preds(coco, shift=1)))
    assert m["segm/AP"] == pytest.approx(0, abs=1e-6)


def test_empty_predictions_give_ap_zero_not_a_crash(tiny_data):
    coco = _quiet_coco(tiny_data["val_ann"])
    m = ev.coco_eval(coco, [])
    assert m["segm/AP"] == 0 and m["segm/APs"] == 0 and m["segm/APl"] is None
    assert all(m[f"segm/AP@{g}"] == 0 for g in GROUPS)


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


@pytest.fixture
def two_instances():
    """One image, one category, instance A in group "g" and instance B in no group."""
    a, b = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    a[2:8, 2:8], b[12:18, 12:18] = True, True
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": _rle(m), "area": int(m.sum()),
             "bbox": [0, 0, 1, 1], "iscrowd": 0, "groups": gr} for i, (m, gr) in enumerate([(a, ["g"]), (b, [])])]
    coco = _quiet_coco({"images": [{"id": 1, "height": 20, "width": 20}], "annotations": anns,
                        "categories": [{"id": 1, "name": "x"}]})
    det = {"a": _rle(a), "b": _rle(b), "none": _rle(np.pad(np.ones((3, 3), bool), ((0, 17), (17, 0))))}
    return coco, lambda **scores: [{"image_id": 1, "category_id": 1, "segmentation": det[k], "score": s}
                                   for k, s in scores.items()]


def test_out_of_group_detections_are_neither_true_nor_false_positives(two_instances):
    coco, results = two_instances
    # B's detection outranks A's: were it a false positive, the group's precision would halve.
    m = ev.coco_eval(coco, results(a=0.5, b=0.9), groups=["g"])
    assert m["segm/AP@g"] == pytest.approx(100) and m["segm/AP"] == pytest.approx(100)
    assert ev.coco_eval(coco, results(b=0.9), groups=["g"])["segm/AP@g"] == pytest.approx(0)
    # a detection matching nothing still is a false positive inside the group evaluation
    assert ev.coco_eval(coco, results(a=0.5, none=0.9), groups=["g"])["segm/AP@g"] < 60
    assert ev.coco_eval(coco, results(a=1.0), groups=["g", "h"])["segm/AP@h"] is None  # no GT in "h"
    assert coco.anns[2].get("ignore", 0) == 0  # the shared GT annotations are not marked ignored


def test_postprocess_shapes_and_score_formula():
    # B=1, Q=2 queries, K=2 classes (+ no-object), masks at stride 4 of a 16x16 padded input.
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]])
    masks = torch.stack([torch.full((4, 4), 2.0), torch.full((4, 4), -1.0)])[None]  # q0 all in, q1 empty
    out = ev.postprocess({"pred_logits": logits, "pred_masks": masks}, [(12, 10)], topk=3, orig_sizes=[(24, 20)])
    assert len(out) == 1
    r = out[0]
    assert r["scores"].shape == (3,) and r["labels"].shape == (3,) and r["masks"].shape == (3, 24, 20)
    assert r["masks"].dtype == torch.bool
    probs = logits.softmax(-1)[0, :, :2]
    # top-3 of probs: (q0, class 0), (q1, class 1), (q1, class 0) in this order
    assert r["labels"].tolist() == [0, 1, 0]
    assert r["masks"][0].all() and not r["masks"][1:].any()
    expected = torch.stack([probs[0, 0] * torch.sigmoid(torch.tensor(2.0)), torch.tensor(0.0), torch.tensor(0.0)])
    assert torch.allclose(r["scores"], expected, atol=1e-5)


def test_postprocess_crops_padding_before_resizing():
    # padded input 16x32 (masks 4x8 at stride 4), positive for x < 16; valid size 16x20, original 8x10:
    # after cropping, x < 16 of 20 is positive, i.e. the first 8 of 10 output columns (without the crop,
    # resizing all 32 columns to 10 would keep only 5).
    masks = torch.full((1, 1, 4, 8), -5.0)
    masks[..., :4] = 5.0
    logits = torch.tensor([[[3.0, -3.0]]])
    r = ev.postprocess({"pred_logits": logits, "pred_masks": masks}, [(16, 20)], topk=1, orig_sizes=[(8, 10)])[0]
    assert r["masks"].shape == (1, 8, 10)
    assert r["masks"][0, :, :8].all() and not r["masks"][0, :, 8:].any()


def test_to_coco_results_round_trips_masks():
    m = torch.zeros(2, 9, 7, dtype=torch.bool)
    m[0, 1:4, 2:6], m[1, 5:9, 0:3] = True, True
    res = ev.to_coco_results([{"scores": torch.tensor([0.9, 0.2]), "labels": torch.tensor([1, 0]), "masks": m}],
                             [42], [7, 11])
    assert [(r["image_id"], r["category_id"], round(r["score"], 6)) for r in res] == [(42, 11, 0.9), (42, 7, 0.2)]
    for r, mask in zip(res, m):
        assert (mask_util.decode(r["segmentation"]) == mask.numpy()).all()
    json.dumps(res)  # plain types only


# ------------------------------------------------------------------ evaluate() end to end with stand-ins
class _StandInDataset:
    """Minimal stand-in for iuq_lite.data.coco.CocoInstances (same item and attribute contract)."""

    def __init__(self, image_dir: str, ann_file: str):
        self.image_dir, self.coco = image_dir, _quiet_coco(ann_file)
        self.ids = sorted(self.coco.getImgIds())
        self.contiguous_to_cat_id = sorted(self.coco.getCatIds())

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        info = self.coco.imgs[self.ids[i]]
        img = torch.from_numpy(np.array(Image.open(f"{self.image_dir}/{info['file_name']}"))).permute(2, 0, 1)
        anns = self.coco.imgToAnns[self.ids[i]]
        masks = torch.from_numpy(np.stack([self.coco.annToMask(a) for a in anns])).bool()
        labels = torch.tensor([self.contiguous_to_cat_id.index(a["category_id"]) for a in anns])
        return img.float() / 255, {"image_id": self.ids[i], "labels": labels, "masks": masks,
                                   "iscrowd": torch.zeros(len(anns), dtype=torch.bool),
                                   "groups": [a["groups"] for a in anns]}


def _collate(batch):
    """Stand-in collate: zero-pad to a multiple of 32, add target["size"]."""
    hp = max(-(-img.shape[1] // 32) * 32 for img, _ in batch)
    wp = max(-(-img.shape[2] // 32) * 32 for img, _ in batch)
    images = torch.zeros(len(batch), 3, hp, wp)
    targets = []
    for b, (img, t) in enumerate(batch):
        images[b, :, : img.shape[1], : img.shape[2]] = img
        targets.append({**t, "size": torch.tensor(img.shape[1:])})
    return images, targets


class _Oracle(torch.nn.Module):
    """Answers with the ground truth of the images it is shown, in dataset order, at full resolution."""

    def __init__(self, dataset, num_queries: int = 16):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.dataset, self.pos, self.q = dataset, 0, num_queries

    def forward(self, images):
        B, _, H, W = images.shape
        K = len(self.dataset.contiguous_to_cat_id)
        logits = torch.full((B, self.q, K + 1), -10.0)
        logits[:, :, K] = 10.0
        masks = torch.full((B, self.q, H, W), -10.0)
        for b in range(B):
            t = self.dataset[self.pos][1]
            self.pos += 1
            n, (h, w) = len(t["labels"]), t["masks"].shape[1:]
            logits[b, torch.arange(n), t["labels"]], logits[b, :n, K] = 10.0, -10.0
            masks[b, :n, :h, :w] = torch.where(t["masks"], 10.0, -10.0)
        return {"pred_logits": logits, "pred_masks": masks}


def test_evaluate_end_to_end_with_an_oracle(tiny_data, tmp_path):
    ds = _StandInDataset(tiny_data["val_images"], tiny_data["val_ann"])
    model = _Oracle(ds).train()
    out = tmp_path / "res.json"
    m = ev.evaluate(model, ds, out_json=out, batch_size=5, collate_fn=_collate, topk=20)
    assert m["segm/AP"] == pytest.approx(100) and all(m[f"segm/AP@{g}"] == pytest.approx(100) for g in GROUPS)
    assert model.training and len(json.loads(out.read_text())) == 20 * len(ds)


def test_evaluate_with_the_real_coco_dataset(tiny_data):
    coco_data = pytest.importorskip("iuq_lite.data.coco")
    ds = coco_data.CocoInstances(tiny_data["val_images"], tiny_data["val_ann"])
    m = ev.evaluate(_Oracle(ds), ds, batch_size=4, topk=20)
    assert m["segm/AP"] == pytest.approx(100)
