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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from iuq_lite.checkpoint import load_model
from iuq_lite.data.coco import CocoInstances, collate, dataset_files
from iuq_lite.data.format import encode_masks, index_coco, rle_json
from iuq_lite.data.shapes import GROUPS
from iuq_lite.utils import pick_device


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.device]:
    """no_grad + eval mode, the caller's train/eval mode restored afterwards; yields the model's device."""
    was = model.training
    try:
        with torch.no_grad():
            yield next(iter(model.eval().parameters())).device
    finally:
        model.train(was)


# ------------------------------------------------------------------------------------- post-processing
def postprocess(outputs: dict[str, torch.Tensor], sizes: Sequence, *, topk: int = 50,
                orig_sizes: Sequence | None = None, input_size: Sequence[int] | None = None) -> list[dict]:
    """Mask2Former instance inference. outputs: "pred_logits" [B,Q,K+1] (last = no-object), "pred_masks"
    [B,Q,h,w] logits at stride 4 of the padded input [Hp,Wp] (`input_size`, default (4h, 4w)). sizes: B valid
    (h, w) input sizes (the unpadded image); orig_sizes: optional B (H, W) to resize to (the original image).
    Scores: the top-k softmax class probabilities over all query x class pairs (a query may appear with several
    classes) x the mean sigmoid inside the binary mask (upsampled logit > 0).
    Returns per image {"scores" [k] float, "labels" [k] long (contiguous class), "masks" [k,H,W] bool}."""
    logits, masks = outputs["pred_logits"], outputs["pred_masks"]
    Q, K = logits.shape[1], logits.shape[2] - 1
    pad = tuple(input_size) if input_size is not None else (4 * masks.shape[-2], 4 * masks.shape[-1])
    probs = logits.float().softmax(-1)[..., :K]                        # [B,Q,K]
    results = []
    for b in range(len(logits)):
        cls_scores, idx = probs[b].flatten().topk(min(topk, Q * K))    # [Q*K] -> [k], sorted descending
        query, labels = idx // K, idx % K
        # upsample only the selected queries: k masks, not Q, at full resolution
        m = F.interpolate(masks[b, query][None].float(), size=pad, mode="bilinear", align_corners=False)[0]
        h, w = (int(s) for s in sizes[b])
        m = m[:, :h, :w]                                                # [k,h,w] drop the padding
        out_size = (h, w) if orig_sizes is None else tuple(int(s) for s in orig_sizes[b])
        if out_size != (h, w):
            m = F.interpolate(m[None], size=out_size, mode="bilinear", align_corners=False)[0]
        binary = m > 0
        mask_score = (m.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        results.append({"scores": cls_scores * mask_score, "labels": labels, "masks": binary})
    return results


def to_coco_results(preds: list[dict], image_ids: Sequence[int], label_to_cat_id: Sequence[int]) -> list[dict]:
    """COCO results list [{"image_id", "category_id", "segmentation" (RLE, str counts), "score"}, ...].
    label_to_cat_id[label] is the category id of contiguous label `label` (data.coco.CocoInstances)."""
    out = []
    for pred, image_id in zip(preds, image_ids):
        if len(pred["labels"]) and int(pred["labels"].max()) >= len(label_to_cat_id):
            raise ValueError(f"image id {image_id}: a prediction has class {int(pred['labels'].max())}, but the "
                             f"dataset has {len(label_to_cat_id)} categories (model.num_classes differs from it)")
        for rle, label, score in zip(encode_masks(pred["masks"]), pred["labels"].tolist(), pred["scores"].tolist()):
            out.append({"image_id": int(image_id), "category_id": int(label_to_cat_id[label]),
                        "segmentation": rle_json(rle), "score": float(score)})
    return out


# ------------------------------------------------------------------------------------------ COCOeval
class GroupCOCOeval(COCOeval):
    """COCOeval in which ground truth whose annotation "groups" lacks `group` is ignored. pycocotools' _prepare
    sets gt["ignore"] from iscrowd, so the group rule is applied after it (on copies: the shared COCO
    annotations stay untouched). `ious` of an ungrouped run can be reused: IoUs ignore the ignore flags."""

    def __init__(self, coco_gt: COCO, coco_dt: COCO, group: str, *, ious: dict | None = None):
        super().__init__(coco_gt, coco_dt, "segm")
        self.group, self._cached_ious = group, ious

    def _prepare(self) -> None:
        super()._prepare()
        for key, gts in self._gts.items():
            self._gts[key] = [g if self.group in g.get("groups", ()) else {**g, "ignore": 1} for g in gts]

    def computeIoU(self, imgId: int, catId: int):
        return super().computeIoU(imgId, catId) if self._cached_ious is None else self._cached_ious[imgId, catId]


def _ap(E: COCOeval, iou: float | None = None, area: str = "all") -> float | None:
    """COCOeval.summarize's AP (maxDets = the largest) on the 0-100 scale, None where it gives -1."""
    p = E.params
    s = E.eval["precision"][..., p.areaRngLbl.index(area), -1]       # [T,R,K]
    if iou is not None:
        s = s[np.isclose(p.iouThrs, iou)]
    s = s[s > -1]
    return None if s.size == 0 else float(s.mean() * 100)


def coco_eval(coco_gt: COCO, results: list[dict], *, groups: Sequence[str] | None = None,
              img_ids: Sequence[int] | None = None, verbose: bool = False) -> dict[str, float | None]:
    """COCOeval (segm) of a results list; returns segm/AP, AP50, AP75, APs, APm, APl and segm/AP@<group>.
    groups: None = every group named in the GT's "groups" fields (the shapes GROUPS), none when absent;
    a group without ground truth in `img_ids` gives None. img_ids: restrict to these images (default all)."""
    if groups is None:
        anns = coco_gt.dataset.get("annotations", [])
        found = {g for a in anns for g in a.get("groups", ())}
        groups = list(GROUPS) + sorted(found - set(GROUPS)) if any("groups" in a for a in anns) else []
    with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
        # loadRes adds keys in place (so: copies) and cannot take an empty list, a valid (AP 0) submission
        coco_dt = (coco_gt.loadRes([dict(r) for r in results]) if results else
                   index_coco({**{k: list(coco_gt.dataset[k]) for k in ("images", "categories")}, "annotations": []}))
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
        for group in groups:
            G = GroupCOCOeval(coco_gt, coco_dt, group, ious=E.ious)
            G.params.imgIds = E.params.imgIds
            G.params.areaRng, G.params.areaRngLbl = [G.params.areaRng[0]], ["all"]  # only "all" is reported
            G.evaluate()
            G.accumulate()
            metrics[f"segm/AP@{group}"] = _ap(G)
    return metrics


# ------------------------------------------------------------------------------------------ evaluate
def evaluate(model: torch.nn.Module, dataset: Any, *, out_json: str | Path | None = None, batch_size: int = 8,
             device: str | torch.device | None = None, topk: int | None = None,
             collate_fn: Callable | None = None, verbose: bool = False) -> dict[str, float | None]:
    """Run `model` over `dataset` and COCO-evaluate it. dataset: a data.coco.CocoInstances or alike: items
    (image [3,H,W] in [0,1], target {"image_id", ...}), .coco (the GT), .ids, .contiguous_to_cat_id (label ->
    category id). collate_fn (default data.coco.collate) pads to [B,3,Hp,Wp] and adds target["size"] (valid
    h, w). topk: default model.test_topk, else 50. out_json: where to write the results list. The model's
    train/eval mode is restored afterwards, so a training loop can call this."""
    topk = topk or getattr(model, "test_topk", None) or 50
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         collate_fn=collate_fn or collate)
    results: list[dict] = []
    with eval_mode(model) as model_device:
        for step, (images, targets) in enumerate(loader):
            outputs = model(images.to(device or model_device))
            ids = [int(t["image_id"]) for t in targets]
            orig = [(dataset.coco.imgs[i]["height"], dataset.coco.imgs[i]["width"]) for i in ids]
            post = getattr(model, "postprocess", postprocess)     # a model may bring its own inference
            preds = post(outputs, [t["size"].tolist() for t in targets], topk=topk, orig_sizes=orig,
                         input_size=images.shape[-2:])
            results += to_coco_results(preds, ids, dataset.contiguous_to_cat_id)
            if verbose:
                print(f"evaluate: {min((step + 1) * batch_size, len(dataset))}/{len(dataset)} images",
                      file=sys.stderr, flush=True)
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(results))
    return coco_eval(dataset.coco, results, img_ids=list(dataset.ids))


def main(argv: list[str] | None = None) -> None:
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
    model, cfg = load_model(a.checkpoint)  # fp16 committed weights are cast to float32
    images, ann = (a.images, a.ann) if a.images is not None else dataset_files(cfg.data)[1]
    print(f"evaluating {a.checkpoint} on {ann}", file=sys.stderr, flush=True)
    with contextlib.redirect_stdout(sys.stderr):  # pycocotools prints while loading
        dataset = CocoInstances(str(images), str(ann))
    device = pick_device(a.device)
    metrics = evaluate(model.to(device), dataset, out_json=a.out_json, batch_size=a.batch_size, device=device,
                       topk=cfg.model.test_topk, verbose=True)
    print(json.dumps({"metrics": metrics}))


if __name__ == "__main__":
    main()
