"""The transformation-equivariance loss (METHOD §4, the paper's Eq. 8) and the two-view forward it needs.

    g = iuq.transforms.sample("crop", image_size=(128, 128), stride=4, generator=gen)
    out_g = model(g.image(images))                                    # the queries of g(I)
    loss = iuq.iuq.equivariance_loss(out_g, features, targets, g, mask_criterion=criterion.mask_loss)

"Transforming the input should transform features and queries consistently: f(g(I)) ~ g(f(I))." Eq. 8: the
queries of g(I) against g(F), the transformed features of the ORIGINAL image, with targets g(M). `TwoViews`
runs I and g(I) in one forward (DDP allows one forward per backward).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import transforms
from ..model.adapter import DotProductAdapter
from ..transforms import transform_targets, valid_region


def equivariance_loss(out_g: dict, features: torch.Tensor, targets: list[dict], g: transforms.GeoTransform, *,
                      mask_criterion: Callable[..., torch.Tensor], as_augmentation: bool = False,
                      adapter: DotProductAdapter | None = None, detach_features: bool = False) -> torch.Tensor:
    """Transformation-equivariance loss (METHOD §4, Eq. 8) for one transform g, NOT multiplied by lambda.

    out_g: outputs on g(I) ("pred_logits" [B,Q,K+1], "mask_embed" E^g [B,Q,C], ...); features: F = f(I)
    [B,C,h,w] of the ORIGINAL image, WITH gradient; targets: the original ones (masks at image resolution);
    mask_criterion(outputs, targets_g, valid=[B,H',W'] bool | None) -> scalar, e.g. SetCriterion.mask_loss
    (5 BCE + 5 dice on points inside `valid`, re-matched, / all-reduced number of g(M) masks). Logits =
    einsum('bqc,bchw->bqhw', E^g, g(F)) (adapter.mask_logits); targets g(M) without the instances g empties.
    as_augmentation (Table S3 control): logits from the transformed image's OWN features f(g(I)).
    detach_features (investigation): g(F) without gradient, so only E^g learns from this loss.
    All-empty g(M) gives 0, still in the graph (the criterion's zero).
    """
    adapter = adapter or DotProductAdapter()
    targets_g = transform_targets(targets, g)
    out_g = adapter.assign(out_g, targets_g)               # target-dependent queries (CondInst) are g(M)'s
    feats = adapter.features(out_g) if as_augmentation else g.features(
        features.detach() if detach_features else features)
    logits = adapter.mask_logits(adapter.embed(out_g), feats)                         # [B,Q,h',w']
    valid = valid_region(targets, g, g.image_size, logits.device) if targets else None
    final = {k: v for k, v in out_g.items() if k != "aux_outputs"}                    # final layer only
    loss = mask_criterion({**final, "pred_masks": logits}, targets_g, valid=valid)
    return loss + logits.sum() * 0.0 if not loss.requires_grad and logits.requires_grad else loss


class TwoViews(torch.nn.Module):
    """model(I) and model(g(I)) in ONE forward: DDP allows one forward per backward, and IUQ needs both views.
    forward(images [B,3,H,W], images_g [B,3,H',W'] or None) -> (outputs, outputs of g(I) or None)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, images_g: torch.Tensor | None = None) -> tuple[dict, dict | None]:
        return self.model(images), (None if images_g is None else self.model(images_g))


def _two_views(model: Any) -> bool:
    """model is a TwoViews, possibly inside DDP (.module) and/or torch.compile (._orig_mod)."""
    inner = getattr(model, "_orig_mod", model)
    return isinstance(getattr(inner, "module", inner), TwoViews)
