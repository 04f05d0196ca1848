"""The adapter protocol: how IUQ reads a model's outputs, so the IUQ losses work on any base model (METHOD §5).

    adapter = iuq.model.iuq_adapter(model)     # model.iuq_adapter() when the model defines one, else dot product
    E, F = adapter.embed(outputs), adapter.features(outputs)          # [B,Q,C], [B,C,h,w]
    logits = adapter.mask_logits(E, F)                                # [B,Q,h,w]

It lives with the models, not with IUQ: IUQ sits above the models (it imports them, never the reverse), and a
model's own loss and inference may use its adapter too (CondInst's). `iuq.iuq.DotProductAdapter` is this class.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class DotProductAdapter:
    """How IUQ reads a model's outputs; the default, for dot-product mask heads (Mask2Former-style).

    embed(outputs) -> E [B,Q,C]; features(outputs) -> F [B,C,h,w]; mask_logits(E, F) -> [B,Q,h,w];
    logits_fn = None (the inter loss then uses its fused dot-product kernel); stride = F's stride in pixels;
    layers(outputs, which) -> the output dicts the inter loss uses ("last" or "all" = aux layers + last).
    CondInst's adapter overrides mask_logits, sets logits_fn(E, memory_chunk, positions_chunk) -> [B,Q,m],
    attaches its target-dependent queries in assign(outputs, targets) and marks padding in query_mask -> [B,Q].
    """

    stride = 4
    logits_fn: Callable | None = None

    def embed(self, outputs: dict) -> torch.Tensor:
        return outputs["mask_embed"]

    def features(self, outputs: dict) -> torch.Tensor:
        return outputs["mask_features"]

    def mask_logits(self, embed: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bqc,bchw->bqhw", embed, features)

    def layers(self, outputs: dict, which: str = "last") -> list[dict]:
        return [*outputs.get("aux_outputs", []), outputs] if which == "all" else [outputs]

    def assign(self, outputs: dict, targets: list[dict]) -> dict:
        return outputs

    def query_mask(self, outputs: dict) -> torch.Tensor | None:
        return None


def iuq_adapter(model: nn.Module):
    """How IUQ reads this model's outputs: `model.iuq_adapter()` when the model defines one, else the
    dot-product adapter (mask logits = E . F)."""
    make = getattr(model, "iuq_adapter", None)
    return make() if callable(make) else DotProductAdapter()
