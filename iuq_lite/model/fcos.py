"""FCOS targets and losses (Tian et al., ICCV 2019): the detector under the CondInst-style model.

    centres, level = locations([(16, 16), (8, 8), (4, 4)], (8, 16, 32))   # [L,2] (y, x) px, [L] level index
    gt = assign(centres, level, boxes, strides=(8, 16, 32), soi=64)        # [L] index into boxes, -1 = negative
    losses = fcos_losses(outputs, labels, boxes, assigned, num_classes=K)

Locations are the centres of every cell of every pyramid level, (y, x) in input pixels, levels concatenated
finest first and row-major inside a level (the order of the model's flattened head outputs).
FCOS §3.2: a location is positive for a box when it lies inside it and its regression target's largest side
max(l, t, r, b) lies in its level's range; CondInst's centre sampling (radius 1.5 strides around the box centre,
clipped to the box) narrows "inside"; a location inside several boxes takes the smallest one. Level ranges
double per level from the size of interest `soi`: [0, soi], [soi, 2 soi], ..., [soi 2^(n-2), inf) — FCOS's
0/64/128/256/512/inf for soi = 64 on P3-P7. Boxes are (x0, y0, x1, y1) pixel extents (x1 exclusive).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, masks_to_boxes, sigmoid_focal_loss

from ..utils import all_reduce_sum, world_size

CENTER_RADIUS = 1.5       # CondInst / AdelaiDet FCOS POS_RADIUS (in strides)


def locations(sizes: list[tuple[int, int]], strides: tuple[int, ...], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres of every level: sizes [(h_l, w_l)], strides [s_l] -> (centres [L,2] (y, x) px, level [L])."""
    centres, level = [], []
    for i, ((h, w), s) in enumerate(zip(sizes, strides)):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s
        centres.append(torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(h * w, 2))
        level.append(torch.full((h * w,), i, dtype=torch.long, device=device))
    return torch.cat(centres), torch.cat(level)


def level_ranges(num_levels: int, soi: float) -> torch.Tensor:
    """[n,2] (lo, hi) of max(l, t, r, b) per level: [0, soi], [soi, 2 soi], ..., last hi = inf."""
    hi = [soi * 2 ** i for i in range(num_levels)]
    lo = [0.0] + hi[:-1]
    hi[-1] = math.inf
    return torch.tensor([lo, hi], dtype=torch.float32).t()


def ltrb(centres: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Distances from locations [...,2] (y, x) to the sides of boxes [...,4] (broadcast) -> [...,4] (l, t, r, b)."""
    y, x = centres[..., 0], centres[..., 1]
    return torch.stack([x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y], -1)


def assign(centres: torch.Tensor, level: torch.Tensor, boxes: torch.Tensor, *, strides: tuple[int, ...],
           soi: float, radius: float = CENTER_RADIUS, valid: torch.Tensor | None = None) -> torch.Tensor:
    """FCOS assignment: centres [L,2], level [L], boxes [T,4] xyxy px -> gt [L] long (index into boxes, -1 = neg).

    valid [T] bool: boxes that may be assigned (crowd and empty ones may not). radius 0 = no centre sampling.
    """
    L, T = centres.shape[0], boxes.shape[0]
    gt = torch.full((L,), -1, dtype=torch.long, device=centres.device)
    if T == 0:
        return gt
    d = ltrb(centres[:, None], boxes[None])                                          # [L,T,4]
    inside = d.min(-1).values > 0
    if radius > 0:
        # The box centre +- radius * stride, clipped to the box (AdelaiDet's get_sample_region)
        s = torch.tensor(strides, dtype=torch.float32, device=centres.device)[level][:, None] * radius   # [L,1]
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        sub = torch.stack([torch.maximum(cx - s, boxes[:, 0]), torch.maximum(cy - s, boxes[:, 1]),
                           torch.minimum(cx + s, boxes[:, 2]), torch.minimum(cy + s, boxes[:, 3])], -1)   # [L,T,4]
        y, x = centres[:, 0:1], centres[:, 1:2]
        inside = (x > sub[..., 0]) & (y > sub[..., 1]) & (x < sub[..., 2]) & (y < sub[..., 3])
    rng = level_ranges(len(strides), soi).to(centres.device)[level]                  # [L,2]
    m = d.max(-1).values
    ok = inside & (m >= rng[:, 0:1]) & (m <= rng[:, 1:2])
    if valid is not None:
        ok &= valid.to(ok.device)[None, :]
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand(L, T)
    best, idx = area.masked_fill(~ok, math.inf).min(1)                               # smallest box wins
    return torch.where(torch.isfinite(best), idx, gt)


def target_boxes(masks: torch.Tensor, iscrowd: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """masks [T,H,W] bool -> (boxes [T,4] xyxy pixel extents, assignable [T] bool: non-empty and not crowd)."""
    nonempty = masks.flatten(1).any(1)
    boxes = torch.zeros(masks.shape[0], 4, device=masks.device)
    if bool(nonempty.any()):
        boxes[nonempty] = masks_to_boxes(masks[nonempty]).float() + torch.tensor([0.0, 0.0, 1.0, 1.0],
                                                                                   device=masks.device)
    crowd = torch.zeros_like(nonempty) if iscrowd is None else iscrowd.to(masks.device).bool()
    return boxes, nonempty & ~crowd


def centerness(d: torch.Tensor) -> torch.Tensor:
    """FCOS centre-ness of regression targets d [...,4] (l, t, r, b) -> [...]: sqrt(min/max(l,r) min/max(t,b))."""
    d = d.clamp(min=0)
    lr, tb = d[..., 0::2], d[..., 1::2]
    return torch.sqrt((lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6))
                      * (tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6)))


def decode(centres: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Locations [...,2] (y, x) and distances [...,4] (l, t, r, b) -> boxes [...,4] xyxy."""
    y, x = centres[..., 0], centres[..., 1]
    return torch.stack([x - d[..., 0], y - d[..., 1], x + d[..., 2], y + d[..., 3]], -1)


def _global_count(x: torch.Tensor, floor: float = 1.0) -> float:
    """Per-rank count averaged over ranks, at least `floor` (DETR's num_boxes normaliser)."""
    return float((all_reduce_sum(x.detach().float().reshape(1)) / world_size()).clamp(min=floor).item())


def fcos_losses(outputs: dict, labels: list[torch.Tensor], boxes: list[torch.Tensor], assigned: torch.Tensor, *,
                num_classes: int, alpha: float = 0.25, gamma: float = 2.0, share: float = 1.0) -> dict[str, torch.Tensor]:
    """Unweighted FCOS losses (FCOS §3, as in AdelaiDet):

    outputs: "cls_logits" [B,L,K], "box_reg" [B,L,4] (l, t, r, b in px, >= 0), "ctrness" [B,L] logits,
    "locations" [L,2] (y, x) px; labels[b] [T_b] long; boxes[b] [T_b,4]; assigned [B,L] (index into image b's
    boxes, -1 = negative). Returns "cls" (sigmoid focal, sum / #positives), "box" (GIoU weighted by the
    centre-ness targets, / their sum) and "ctr" (BCE on positives / #positives); counts all-reduced over ranks
    and multiplied by `share` (a micro-batch's share of the step).
    """
    cls = outputs["cls_logits"]
    pos = assigned >= 0                                                              # [B,L]
    b_idx, l_idx = pos.nonzero(as_tuple=True)
    g_idx = assigned[b_idx, l_idx]
    target = torch.zeros_like(cls)
    if b_idx.numel():
        lab = torch.cat([labels[b].to(cls.device)[g_idx[b_idx == b]] for b in range(cls.shape[0])])
        target[b_idx, l_idx, lab] = 1.0
    num_pos = _global_count(pos.sum() * share)
    out = {"cls": sigmoid_focal_loss(cls.float(), target, alpha=alpha, gamma=gamma, reduction="sum") / num_pos}
    if b_idx.numel() == 0:
        zero = outputs["box_reg"].sum() * 0.0 + outputs["ctrness"].sum() * 0.0
        return {**out, "box": zero, "ctr": zero}
    gt_box = torch.cat([boxes[b].to(cls.device)[g_idx[b_idx == b]] for b in range(cls.shape[0])])   # [N,4]
    centres = outputs["locations"][l_idx]                                            # [N,2]
    d = ltrb(centres, gt_box)                                                        # [N,4]
    ctr_t = centerness(d)
    giou = generalized_box_iou_loss(decode(centres, outputs["box_reg"][b_idx, l_idx].float()), gt_box,
                                    reduction="none")
    out["box"] = (giou * ctr_t).sum() / _global_count(ctr_t.sum() * share, 1e-6)
    out["ctr"] = F.binary_cross_entropy_with_logits(outputs["ctrness"][b_idx, l_idx].float(), ctr_t,
                                                    reduction="sum") / num_pos
    return out
