"""Models: `build_model(cfg)` dispatches on cfg.model.name.

    model = iuq.model.build_model(cfg)     # "mask2former" (CondInst comes later)
    out = model(images)                    # images [B,3,H,W] in [0,1]; see mask2former.py for the output dict
"""
from __future__ import annotations

from torch import nn

from ..config import Config
from .backbone import PixelDecoder, build_backbone
from .mask2former import Mask2Former

__all__ = ["Mask2Former", "PixelDecoder", "build_backbone", "build_model"]


def build_model(cfg: Config) -> nn.Module:
    """The segmenter named by cfg.model.name, randomly initialised except for cfg.model.pretrained backbones.

    Every model returns the dict documented in mask2former.py and has `.mask_stride` (4), `.num_classes`,
    `.num_queries`.
    """
    if cfg.model.name == "mask2former":
        return Mask2Former(cfg.model)
    raise ValueError(f"unknown model {cfg.model.name!r}; available: mask2former")
