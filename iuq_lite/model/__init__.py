"""Models: `build_model(cfg)` dispatches on cfg.model.name.

    model = iuq.model.build_model(cfg)     # "mask2former" | "condinst"
    out = model(images)                    # images [B,3,H,W] in [0,1]; output dicts: mask2former.py, condinst.py
"""
from __future__ import annotations

from torch import nn

from ..config import Config
from ..losses import SetCriterion
from ..matcher import HungarianMatcher
from .adapter import DotProductAdapter, iuq_adapter
from .backbone import PixelDecoder, build_backbone
from .condinst import CondInst, CondInstCriterion
from .mask2former import Mask2Former

__all__ = ["CondInst", "DotProductAdapter", "Mask2Former", "PixelDecoder", "build_backbone", "build_criterion",
           "build_model", "iuq_adapter"]


def build_model(cfg: Config) -> nn.Module:
    """The segmenter named by cfg.model.name, randomly initialised except for cfg.model.pretrained backbones.

    Every model returns the dict documented in its module and has `.mask_stride` (4), `.num_classes`,
    `.num_queries`.
    """
    if cfg.model.name == "mask2former":
        return Mask2Former(cfg.model)
    if cfg.model.name == "condinst":
        return CondInst(cfg.model)
    raise ValueError(f"unknown model {cfg.model.name!r}; available: mask2former, condinst")


def build_criterion(cfg: Config) -> nn.Module:
    """The base (intra-scene) criterion for cfg.model.name: called as crit(outputs, targets, return_indices=True)
    -> (weighted losses, final-layer indices) and crit.mask_loss(outputs, targets, valid=) for Eq. 8."""
    if cfg.model.name == "mask2former":
        matcher = HungarianMatcher(cost_class=cfg.loss.class_weight, cost_mask=cfg.loss.mask_weight,
                                   cost_dice=cfg.loss.dice_weight, num_points=cfg.loss.num_points)
        return SetCriterion(cfg.loss, cfg.model.num_classes, matcher)
    if cfg.model.name == "condinst":
        return CondInstCriterion(cfg)
    raise ValueError(f"unknown model {cfg.model.name!r}; available: mask2former, condinst")
