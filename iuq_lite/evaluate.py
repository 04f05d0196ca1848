"""Post-processing, COCO results json and COCOeval (segm), including per-failure-group AP.

    metrics = iuq.evaluate.evaluate(model, dataset)   # {"segm/AP": 41.3, ..., "segm/AP@transparent": 30.2}

Metrics are on the paper's 0-100 scale; a value COCOeval reports as -1 (no ground truth in that bucket, e.g.
APl on 128-px shapes) is None. Per-group AP (Figure S3's failure groups, from the annotations' "groups" field)
evaluates the same detections with ground truth OUTSIDE the group ignored, so a correct detection of another
instance is neither a true nor a false positive, while detections matching nothing still count as false.

CLI: python -m iuq_lite.evaluate --checkpoint runs/shapes/model.pt [--images DIR --ann FILE]
     -> last stdout line {"metrics": {...}}
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from iuq_lite.data.shapes import GROUPS


# ------------------------------------------------------------------------------------- post-processing
def postprocess(outputs: dict[str, torch.Tensor], sizes: Sequence, *, topk: int = 50,
                orig_sizes: Sequence | None = None, input_size: Sequence[int] | None = None) -> list[dict]:
    """Mask2Former instance inference.

    outputs: "pred_logits" [B,Q,K+1] (last = no-object), "pred_masks" [B,Q,h,w] logits at stride 4 of the
    padded input [Hp,Wp] (`input_size`, default (4h, 4w)). sizes: B valid (h, w) input sizes (the unpadded
    image); orig_sizes: optional B (H, W) to resize to (the original image before any resize).
    Scores are the softmax class probabilities over all query x class pairs (a query may appear with several
    classes), top-k of them; binary mask = upsampled logit > 0; score = class prob x mean sigmoid inside it.
    Returns per image {"scores" [k] float, "labels" [k] long (contiguous class), "masks" [k,H,W] bool}.
    """
    logits, masks = outputs["pred_logits"], outputs["pred_masks"]
    B, Q, K1 = logits.shape
    K = K1 - 1
    pad = tuple(input_size) if input_size is not None else (4 * masks.shape[-2], 4 * masks.shape[-1])
    probs = logits.float().softmax(-1)[..., :K]                        # [B,Q,K]
    results = []
    for b in range(B):
        k = min(topk, Q * K)
        cls_scores, idx = probs[b].flatten().topk(k)                   # [Q*K] -> [k], sorted descending
        query, labels = idx // K, idx % K
        # upsample only the selected queries: k masks, not Q, at full resolution
        m = F.interpolate(masks[b, query][None].float(), size=pad, mode="bilinear", align_corners=False)[0]
        h, w = (int(s) for s in sizes[b])
        m = m[:, :h, :w]                                                # [k,h,w] drop the padding
        if orig_sizes is not None and tuple(int(s) for s in orig_sizes[b]) != (h, w):
            m = F.interpolate(m[None], size=tuple(int(s) for s in orig_sizes[b]), mode="bilinear",
                              align_corners=False)[0]
        binary = m > 0
        mask_score = (m.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        results.append({"scores": cls_scores * mask_score, "labels": labels, "masks": binary})
    return results


def to_coco_results(preds: list[dict], image_ids: Sequence[int], label_to_cat_id: Sequence[int]) -> list[dict]:
    """COCO results list [{"image_id", "category_id", "segmentation" (RLE, str counts), "score"}, ...]."""
    out = []
    for pred, image_id in zip(preds, image_ids):
        masks = pred["masks"].detach().cpu().numpy()
        if len(masks) == 0:
            continue
        rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))  # [H,W,k]
        for rle, label, score in zip(rles, pred["labels"].tolist(), pred["scores"].tolist()):
            out.append({"image_id": int(image_id), "category_id": int(label_to_cat_id[label]),
                        "segmentation": {"size": [int(s) for s in rle["size"]],
                                         "counts": rle["counts"].decode("ascii")},
                        "score": float(score)})
    return out


# ------------------------------------------------------------------------------------------ COCOeval
class GroupCOCOeval(COCOeval):
    """COCOeval in which ground truth whose annotation "groups" lacks `group` is ignored.

    pycocotools' _prepare sets gt["ignore"] from iscrowd, so the group rule is applied after it (on copies,
    leaving the shared COCO annotations untouched). `ious` from an ungrouped run can be reused: IoUs do not
    depend on the ignore flags.
    """

    def __init__(self, coco_gt: COCO, coco_dt: COCO, group: str, *, ious: dict | None = None):
        super().__init__(coco_gt, coco_dt, "segm")
        self.group, self._cached_ious = group, ious

    def _prepare(self) -> None:
        super()._prepare()
        for key, gts in self._gts.items():
            self._gts[key] = [g if self.group in g.get("groups", ()) else {**g, "ignore": 1} for g in gts]

    def computeIoU(self, imgId: int, catId: int):
        if self._cached_ious is not None:
            return self._cached_ious[imgId, catId]
        return super().computeIoU(imgId, catId)


def _load_results(coco_gt: COCO, results: list[dict]) -> COCO:
    if results:
        return coco_gt.loadRes([dict(r) for r in results])  # loadRes adds keys in place: copy
    # loadRes cannot take an empty list; an empty result set is a valid (AP 0) submission
    dt = COCO()
    dt.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]),
                  "annotations": []}
    dt.createIndex()
    return dt


def _ap(E: COCOeval, iou: float | None = None, area: str = "all") -> float | None:
    """COCOeval.summarize's AP (maxDets = the largest) on the 0-100 scale, None where it gives -1."""
    p = E.params
    s = E.eval["precision"][..., p.areaRngLbl.index(area), -1]       # [T,R,K]
    if iou is not None:
        s = s[np.isclose(p.iouThrs, iou)]
    s = s[s > -1]
    return None if s.size == 0 else float(s.mean() * 100)


def _discover_groups(coco_gt: COCO) -> list[str]:
    found = {g for a in coco_gt.dataset.get("annotations", []) for g in a.get("groups", ())}
    if not any("groups" in a for a in coco_gt.dataset.get("annotations", [])):
        return []
    return list(GROUPS) + sorted(found - set(GROUPS))


def coco_eval(coco_gt: COCO, results: list[dict], *, groups: Sequence[str] | None = None,
              img_ids: Sequence[int] | None = None, verbose: bool = False) -> dict[str, float | None]:
    """COCOeval (segm) of a results list; returns segm/AP, AP50, AP75, APs, APm, APl and segm/AP@<group>.

    groups: None = every group named in the GT's "groups" fields (the shapes GROUPS), none when absent;
    a group without ground truth in `img_ids` gives None. img_ids: restrict to these images (default all).
    """
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        coco_dt = _load_results(coco_gt, results)
        E = COCOeval(coco_gt, coco_dt, "segm")
        if img_ids is not None:
            E.params.imgIds = sorted(int(i) for i in img_ids)
        E.evaluate()
        E.accumulate()
        if verbose:
            E.summarize()
        metrics = {"segm/AP": _ap(E), "segm/AP50": _ap(E, 0.5), "segm/AP75": _ap(E, 0.75),
                   "segm/APs": _ap(E, area="small"), "segm/APm": _ap(E, area="medium"),
                   "segm/APl": _ap(E, area="large")}
        for group in _discover_groups(coco_gt) if groups is None else groups:
            G = GroupCOCOeval(coco_gt, coco_dt, group, ious=E.ious)
            G.params.imgIds = E.params.imgIds
            G.params.areaRng, G.params.areaRngLbl = [G.params.areaRng[0]], ["all"]  # only "all" is reported
            G.evaluate()
            G.accumulate()
            metrics[f"segm/AP@{group}"] = _ap(G)
    return metrics


# ------------------------------------------------------------------------------------------ evaluate
@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Any, *, out_json: str | Path | None = None, batch_size: int = 8,
             device: str | torch.device | None = None, topk: int | None = None,
             collate_fn: Callable | None = None, verbose: bool = False) -> dict[str, float | None]:
    """Run `model` over `dataset` (iuq_lite.data.coco.CocoInstances) and COCO-evaluate it.

    dataset items: (image [3,H,W] in [0,1], target {"image_id", ...}); dataset.coco is the GT COCO,
    dataset.ids its image ids, dataset.contiguous_to_cat_id maps labels to category ids. collate_fn
    (default iuq_lite.data.coco.collate) pads to [B,3,Hp,Wp] and adds target["size"] = (h, w) valid size.
    topk defaults to model.test_topk when the model has it, else 50. Writes the results list to out_json.
    The model's train/eval mode is restored afterwards, so a training loop can call this.
    """
    if collate_fn is None:
        from iuq_lite.data.coco import collate as collate_fn
    if device is None:
        device = next(iter(model.parameters())).device
    topk = topk or getattr(model, "test_topk", None) or 50
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    was_training = model.training
    model.eval()
    results: list[dict] = []
    try:
        for step, (images, targets) in enumerate(loader):
            outputs = model(images.to(device))
            ids = [int(t["image_id"]) for t in targets]
            orig = [(dataset.coco.imgs[i]["height"], dataset.coco.imgs[i]["width"]) for i in ids]
            post = getattr(model, "postprocess", postprocess)     # a model may bring its own inference
            preds = post(outputs, [t["size"].tolist() for t in targets], topk=topk, orig_sizes=orig,
                         input_size=images.shape[-2:])
            results += to_coco_results(preds, ids, dataset.contiguous_to_cat_id)
            if verbose:
                print(f"evaluate: {min((step + 1) * batch_size, len(dataset))}/{len(dataset)} images",
                      file=sys.stderr, flush=True)
    finally:
        model.train(was_training)
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(results))
    return coco_eval(dataset.coco, results, img_ids=list(dataset.ids))


def main(argv: list[str] | None = None) -> None:
    from iuq_lite import config as config_mod
    from iuq_lite.data import coco as coco_data
    from iuq_lite.data import shapes
    from iuq_lite.model import build_model
    from iuq_lite.utils import pick_device

    p = argparse.ArgumentParser(description="COCO segm evaluation of a run's model.pt")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", default=None, help="image folder (default: the config's val split)")
    p.add_argument("--ann", default=None, help="instances json (default: the config's val split)")
    p.add_argument("--out-json", default=None, help="write the COCO results list here")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    if (a.images is None) != (a.ann is None):
        p.error("--images and --ann go together")
    ckpt = torch.load(a.checkpoint, map_location="cpu", weights_only=True)
    cfg = config_mod.from_dict(ckpt["config"])
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])  # fp16 committed weights are cast into the float32 parameters
    images, ann = a.images, a.ann
    if images is None:
        if cfg.data.root is None:
            paths = shapes.ensure_from_config(cfg.data)
            images, ann = paths["val_images"], paths["val_ann"]
        else:
            root, split = Path(cfg.data.root), cfg.data.val_split
            images, ann = root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json"
    print(f"evaluating {a.checkpoint} on {ann}", file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(sys.stderr):  # pycocotools prints while loading
        dataset = coco_data.CocoInstances(str(images), str(ann))
    device = pick_device(a.device)
    metrics = evaluate(model.to(device), dataset, out_json=a.out_json, batch_size=a.batch_size, device=device,
                       topk=cfg.model.test_topk, verbose=True)
    print(json.dumps({"metrics": metrics}))


if __name__ == "__main__":
    main()
