"""Point-sampled mask losses and the set criterion (DETR / Mask2Former), METHOD §1.

    criterion = SetCriterion(cfg.loss, cfg.model.num_classes, HungarianMatcher(num_points=cfg.loss.num_points))
    losses = criterion(outputs, targets)              # dict of ALREADY-WEIGHTED terms; total = sum(values)
    l_equi = criterion.mask_loss(out_g, targets_g, valid=valid_g)   # 5 BCE + 5 dice, METHOD §4 step 5

Targets: a list of B dicts, at input resolution (the padded batch size, shared by every image of the batch):
    "labels"  [T] long,  "masks" [T,H,W] bool,  "iscrowd" [T] bool (optional; crowd annotations are dropped
    before matching, so they are neither matched nor penalised), "size" tensor([h, w]) (optional; the
    unpadded image size, used by mask_loss to keep points inside the real image).

Mask2Former §3.3: "we compute the mask loss ... on K randomly sampled points ... with importance sampling"
(PointRend, in sampling.py): oversample 3x uniformly, keep the 75 % most uncertain (|logit| smallest), fill
up uniformly. Points are normalised (x, y) in [0, 1], so predictions (stride 4) and targets (stride 1) share them.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import LossConfig
from .matcher import HungarianMatcher
from .sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    image_generators,
    point_sample,
    rand_rows,
)
from .utils import all_reduce_sum, world_size

Indices = list[tuple[torch.Tensor, torch.Tensor]]


# ----------------------------------------------------------------------------------------- mask losses
def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor,
                    weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-mask sigmoid BCE: inputs [N,P] logits, targets [N,P] in [0,1] -> [N], the (weighted) mean over points.

    weights [N,P] >= 0 (e.g. point validity): a mask whose points all have weight 0 contributes 0.
    """
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1) if weights is None else (loss * weights).sum(1) / weights.sum(1).clamp(min=1e-6)


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-mask dice loss: inputs [N,P] logits, targets [N,P] in [0,1] -> [N], 1 - (2|pt| + 1) / (|p| + |t| + 1).

    weights [N,P] >= 0 weight each point in the three sums (0 = the point is ignored).
    """
    p = inputs.sigmoid()
    if weights is not None:
        p, targets = p * weights, targets * weights
    numerator = 2 * (p * targets).sum(-1)
    denominator = p.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


# ---------------------------------------------------------------------------------------- criterion
def _prepare(targets: list[dict], device: torch.device) -> tuple[list[dict], list[dict], list[torch.Tensor | None]]:
    """(targets with fp32 masks on `device`, the same without crowd annotations, per image the kept original
    indices or None when nothing was dropped). Converting once serves the matcher and every decoder layer."""
    full, kept, keeps = [], [], []
    for t in targets:
        t = {**t, "masks": t["masks"].to(device, torch.float32), "labels": t["labels"].to(device)}
        full.append(t)
        crowd = t.get("iscrowd")
        if crowd is None or not bool(crowd.any()):
            kept.append(t)
            keeps.append(None)
            continue
        keep = (~crowd.to(device).bool()).nonzero().flatten()
        kept.append({**t, "labels": t["labels"][keep], "masks": t["masks"][keep], "iscrowd": crowd.to(device)[keep]})
        keeps.append(keep)
    return full, kept, keeps


def _to_original(indices: Indices, keeps: list[torch.Tensor | None]) -> Indices:
    """Map target indices of crowd-free targets back to the caller's (original) target indices."""
    return [(i, j if keep is None else keep.to(j.device)[j]) for (i, j), keep in zip(indices, keeps)]


class SetCriterion(nn.Module):
    """Hungarian matching + class CE (no-object weight) + point-sampled mask BCE and dice, per decoder layer.

    forward(outputs, targets, *, return_indices=False) -> losses (or (losses, indices)):
        outputs: "pred_logits" [B,Q,K+1], "pred_masks" [B,Q,h,w] logits, optional "aux_outputs" (list of
        dicts with the same two keys). losses: "loss_ce", "loss_mask", "loss_dice" for the final layer and
        "loss_ce_{i}", "loss_mask_{i}", "loss_dice_{i}" for aux output i when loss_cfg.deep_supervision;
        every term is already multiplied by its weight, so the total is sum(losses.values()).
        indices: the final layer's matching, [(index_q [n], index_t [n])] per image, index_t into the caller's
        targets (crowd annotations included in the numbering, never matched).
    Mask terms are normalised by num_masks = the number of non-crowd target masks in the global batch
    (all-reduced across ranks, at least 1, divided by the world size), as DETR does; the class CE by its
    weights' sum, all-reduced the same way, so that DDP's gradient mean equals one process's exactly.
    norm_targets (forward and mask_loss): count these targets instead (e.g. the whole step's, when it is
    split into micro-batches for gradient accumulation: the micro-batch losses then sum to the step's).
    """

    def __init__(self, loss_cfg: LossConfig, num_classes: int, matcher: HungarianMatcher):
        super().__init__()
        self.cfg = loss_cfg
        self.num_classes = num_classes
        self.matcher = matcher
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = loss_cfg.no_object_weight   # down-weight the many unmatched "no object" queries
        self.register_buffer("empty_weight", empty_weight)

    # -- pieces ------------------------------------------------------------------------------------------
    def normalisers(self, targets: list[dict], num_queries: int, device: torch.device) -> tuple[float, float]:
        """(num_masks, class_norm) per rank: the non-crowd target masks (DETR's num_boxes, at least 1) and the
        CE weights' sum (min(Q, T_b) matched queries of weight 1, the rest no_object_weight), each summed over
        ranks in ONE all-reduce and divided by the world size."""
        ns = [len(t["labels"]) - (int(t["iscrowd"].sum()) if "iscrowd" in t else 0) for t in targets]
        matched = sum(min(num_queries, n) for n in ns)
        w = matched + (len(targets) * num_queries - matched) * float(self.empty_weight[-1])
        tot = all_reduce_sum(torch.tensor([float(sum(ns)), w], dtype=torch.float64, device=device))
        return max(float(tot[0]), 1.0) / world_size(), float(tot[1]) / world_size()

    def class_loss(self, logits: torch.Tensor, targets: list[dict], indices: Indices,
                   norm: float | None = None) -> torch.Tensor:
        """Unweighted CE over all queries [B,Q,K+1]; unmatched queries target no-object (class K). Weighted
        mean (norm None), else the weighted sum / norm (`normalisers`: the global batch's weighted mean)."""
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        b, q = _batch_index(indices, logits.device)
        if b.numel():
            target_classes[b, q] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(
                logits.device)
        if norm is None:
            return F.cross_entropy(logits.float().transpose(1, 2), target_classes, self.empty_weight)
        return F.cross_entropy(logits.float().transpose(1, 2), target_classes, self.empty_weight,
                               reduction="sum") / norm

    def mask_terms(self, pred_masks: torch.Tensor, targets: list[dict], indices: Indices, num_masks: float, *,
                   valid: torch.Tensor | None = None, use_size: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Unweighted (BCE, dice) of the matched pairs on sampled points, each summed over masks / num_masks.

        pred_masks [B,Q,h,w] logits; valid [B,H',W'] bool or None; use_size: also drop points outside each
        image's "size". Points get weight validity(nearest) x in-size, so invalid points leave both losses.
        """
        b, q = _batch_index(indices, pred_masks.device)
        if b.numel() == 0:
            zero = pred_masks.sum() * 0.0    # keeps the graph connected (DDP needs every parameter used)
            return zero, zero
        src = pred_masks[b, q].unsqueeze(1).float()                                          # [N,1,h,w]
        tgt = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)]).to(src)         # [N,H,W]
        weight_fn = self._weight_fn(b, targets, tgt.shape[-2:], valid, use_size)
        gens, counts = image_generators(targets), [len(i) for i, _ in indices]
        rand = lambda s: rand_rows(counts, (s, 2), src.device, gens)        # [N,s,2], rows in image order
        with torch.no_grad():
            if self.cfg.sampling == "importance":
                coords = get_uncertain_point_coords_with_randomness(
                    src, calculate_uncertainty, self.cfg.num_points, self.cfg.oversample_ratio,
                    self.cfg.importance_sample_ratio, valid_fn=weight_fn, rand=rand)
            elif self.cfg.sampling == "uniform":
                coords = rand(self.cfg.num_points)
            else:
                raise ValueError(f"loss.sampling must be importance | uniform, not {self.cfg.sampling!r}")
            labels = point_sample(tgt.unsqueeze(1), coords).squeeze(1)                       # [N,P]
            weights = None if weight_fn is None else weight_fn(coords)                       # [N,P]
        logits = point_sample(src, coords).squeeze(1)                                        # [N,P]
        bce = sigmoid_ce_loss(logits, labels, weights).sum() / num_masks
        dice = dice_loss(logits, labels, weights).sum() / num_masks
        return bce, dice

    @staticmethod
    def _weight_fn(b: torch.Tensor, targets: list[dict], hw: torch.Size, valid: torch.Tensor | None,
                   use_size: bool) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """coords [N,P,2] -> point weights [N,P] in {0,1} for the masks of images b [N]; None = all valid."""
        sizes = None
        if use_size and all("size" in t for t in targets):
            # (w/W, h/H) per mask: normalised extent of the real image inside the padded canvas
            wh = torch.stack([torch.as_tensor(t["size"], dtype=torch.float32).flip(0) for t in targets])
            sizes = (wh / torch.tensor([hw[1], hw[0]], dtype=torch.float32)).to(b.device)[b]   # [N,2]
        if valid is None and sizes is None:
            return None
        vmap = None if valid is None else valid.to(b.device)[b].unsqueeze(1).float()         # [N,1,H',W']

        def fn(coords: torch.Tensor) -> torch.Tensor:
            w = torch.ones(coords.shape[:2], device=coords.device)
            if vmap is not None:
                w = w * point_sample(vmap, coords, mode="nearest").squeeze(1)
            if sizes is not None:
                w = w * (coords < sizes[:, None, :]).all(-1).float()
            return w
        return fn

    def _layer(self, out: dict, targets: list[dict], indices: Indices, norms: tuple[float, float],
               suffix: str) -> dict[str, torch.Tensor]:
        bce, dice = self.mask_terms(out["pred_masks"], targets, indices, norms[0])
        ce = self.class_loss(out["pred_logits"], targets, indices, norms[1])
        return {f"loss_ce{suffix}": self.cfg.class_weight * ce,
                f"loss_mask{suffix}": self.cfg.mask_weight * bce,
                f"loss_dice{suffix}": self.cfg.dice_weight * dice}

    # -- public ------------------------------------------------------------------------------------------
    def forward(self, outputs: dict, targets: list[dict], *, return_indices: bool = False,
                norm_targets: list[dict] | None = None) -> dict[str, torch.Tensor] | tuple[dict, Indices]:
        """Weighted loss terms (see the class docstring); with return_indices, (losses, final-layer indices)."""
        dev = outputs["pred_masks"].device
        _, kept, keeps = _prepare(targets, dev)
        norms = self.normalisers(targets if norm_targets is None else norm_targets, outputs["pred_logits"].shape[1],
                                 dev)
        indices = self.matcher(outputs, kept)
        losses = self._layer(outputs, kept, indices, norms, "")
        if self.cfg.deep_supervision:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                losses.update(self._layer(aux, kept, self.matcher(aux, kept), norms, f"_{i}"))
        return (losses, _to_original(indices, keeps)) if return_indices else losses

    def mask_loss(self, outputs: dict, targets: list[dict], *, valid: torch.Tensor | None = None,
                  indices: Indices | None = None, norm_targets: list[dict] | None = None,
                  with_class: bool = False) -> torch.Tensor:
        """mask_weight * BCE + dice_weight * dice of the final layer, METHOD §4 step 5 (+ class_weight * CE of
        the same matching when with_class: iuq.equi.class_loss).

        outputs: "pred_logits" [B,Q,K+1] (used by the matcher only), "pred_masks" [B,Q,h,w] logits.
        valid: optional [B,H',W'] bool at any resolution; points outside valid, or outside a target's
        "size", have weight 0 in both the BCE means and the dice sums (importance sampling ranks them last).
        indices: optional matching [(index_q, index_t)] into `targets` (original numbering); None = run the
        matcher (class + mask cost) on the crowd-free targets.
        Normalised by the number of non-crowd target masks, all-reduced across ranks.
        """
        full, kept, keeps = _prepare(targets, outputs["pred_masks"].device)
        num_masks, class_norm = self.normalisers(targets if norm_targets is None else norm_targets,
                                                 outputs["pred_logits"].shape[1], outputs["pred_masks"].device)
        if indices is None:
            indices = _to_original(self.matcher(outputs, kept), keeps)
        bce, dice = self.mask_terms(outputs["pred_masks"], full, indices, num_masks, valid=valid, use_size=True)
        loss = self.cfg.mask_weight * bce + self.cfg.dice_weight * dice
        if with_class:
            loss = loss + self.cfg.class_weight * self.class_loss(outputs["pred_logits"], full, indices, class_norm)
        return loss


def _batch_index(indices: Indices, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(image index [N], query index [N]) of all matched pairs, concatenated over images."""
    b = torch.cat([torch.full_like(i, n) for n, (i, _) in enumerate(indices)]).to(device)
    q = torch.cat([i for i, _ in indices]).to(device)
    return b, q
