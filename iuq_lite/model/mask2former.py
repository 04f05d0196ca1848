"""A compact Mask2Former-style segmenter: backbone -> FPN pixel decoder -> masked-attention query decoder.

    model = Mask2Former(cfg.model)
    out = model(images)       # images [B,3,H,W] floats in [0,1]; ImageNet normalisation happens inside

out (B images, Q queries, K classes, C = mask_dim, h, w = H/4, W/4):
    "pred_logits"   [B,Q,K+1]  class logits, the last column is no-object
    "pred_masks"    [B,Q,h,w]  mask logits == einsum('bqc,bchw->bqhw', mask_embed, mask_features)
    "mask_embed"    [B,Q,C]    per-query mask embedding E (METHOD §1)
    "mask_features" [B,C,h,w]  per-pixel features F (METHOD §1)
    "aux_outputs"   list of dec_layers dicts {"pred_logits", "pred_masks", "mask_embed"}: the prediction heads
                    before the first decoder layer and after each but the last one, in order.

Mask2Former (Cheng et al., CVPR 2022), §3.2: "masked attention ... constrains cross-attention within the
foreground region of the predicted mask for each query", with the mask from the previous layer's prediction
binarised at 0.5, round-robin over the 1/32, 1/16, 1/8 feature levels, and the order cross-attention ->
self-attention -> FFN, post-norm.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .backbone import PixelDecoder, build_backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sine_position_embedding(x: torch.Tensor, num_pos_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's normalised 2-D sine embedding for a map x [B,*,h,w] -> [h*w, 2*num_pos_feats] (batch-independent:
    no padding mask, every position of the feature map is real)."""
    h, w = x.shape[-2:]
    scale = 2 * math.pi
    eps = 1e-6
    # cumsum of ones == 1..h; normalise so the embedding spans [0, 2pi] whatever the resolution
    y_embed = torch.arange(1, h + 1, device=x.device, dtype=torch.float32) / (h + eps) * scale
    x_embed = torch.arange(1, w + 1, device=x.device, dtype=torch.float32) / (w + eps) * scale
    dim_t = torch.arange(num_pos_feats, device=x.device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos_y = y_embed[:, None] / dim_t                                   # [h, D/2]
    pos_x = x_embed[:, None] / dim_t                                   # [w, D/2]
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
    pos = torch.cat((pos_y[:, None, :].expand(h, w, -1), pos_x[None, :, :].expand(h, w, -1)), dim=2)
    return pos.reshape(h * w, 2 * num_pos_feats).to(x.dtype)        # [h*w, D], row-major like flatten(2)


class MLP(nn.Module):
    """Linear-ReLU stack (DETR's MLP): in_dim -> hidden -> ... -> out_dim."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def attend(mha: nn.MultiheadAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           blocked: torch.Tensor | None = None) -> torch.Tensor:
    """nn.MultiheadAttention's computation with its own weights, batch-first end to end: q [B,Q,D], k / v
    [B,S,D], blocked [B,1,Q,S] bool (True = blocked, broadcast over heads) -> [B,Q,D].

    The module's forward would transpose to sequence-first, copy the mask per head ([B*nheads,Q,S]) and turn it
    into a float -inf mask; the same projections and one scaled_dot_product_attention call avoid those copies.
    """
    B, Q, D = q.shape
    h = mha.num_heads
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    q = F.linear(q, wq, bq).view(B, Q, h, D // h).transpose(1, 2)                     # [B,h,Q,D/h]
    k = F.linear(k, wk, bk).view(B, -1, h, D // h).transpose(1, 2)                    # [B,h,S,D/h]
    v = F.linear(v, wv, bv).view(B, -1, h, D // h).transpose(1, 2)                    # [B,h,S,D/h]
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=None if blocked is None else ~blocked,
                                       dropout_p=mha.dropout if mha.training else 0.0)   # [B,h,Q,D/h]
    return mha.out_proj(o.transpose(1, 2).reshape(B, Q, D))


class DecoderLayer(nn.Module):
    """Masked cross-attention -> self-attention -> FFN, each with residual + LayerNorm (post- or pre-norm).
    The attentions are nn.MultiheadAttention modules (their parameters and state_dict keys) run by `attend`."""

    def __init__(self, dim: int, nheads: int, dim_feedforward: int, *, dropout: float, pre_norm: bool):
        super().__init__()
        self.cross = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, dim_feedforward), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(dim_feedforward, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.drop = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def _block(self, i: int, x: torch.Tensor, fn) -> torch.Tensor:
        if self.pre_norm:
            return x + self.drop(fn(self.norms[i](x)))
        return self.norms[i](x + self.drop(fn(x)))

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                attn_mask: torch.Tensor | None) -> torch.Tensor:
        """tgt, query_pos [B,Q,D]; memory [B,S,D]; pos [S,D]; attn_mask [B,1,Q,S] bool (True = blocked)."""
        key = memory + pos

        def cross(x: torch.Tensor) -> torch.Tensor:
            return attend(self.cross, x + query_pos, key, memory, attn_mask)

        def self_attn(x: torch.Tensor) -> torch.Tensor:
            q = x + query_pos
            return attend(self.self_attn, q, q, x)

        tgt = self._block(0, tgt, cross)
        tgt = self._block(1, tgt, self_attn)
        return self._block(2, tgt, self.ffn)


class Mask2Former(nn.Module):
    """Backbone + FPN pixel decoder + masked-attention transformer decoder (see the module docstring)."""

    mask_stride = 4
    num_levels = 3

    def __init__(self, model_cfg: ModelConfig, *, pre_norm: bool = False):
        super().__init__()
        c = model_cfg
        d = c.hidden_dim
        self.num_classes = c.num_classes
        self.num_queries = c.num_queries
        self.nheads = c.nheads
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        self.backbone = build_backbone(c)
        self.pixel_decoder = PixelDecoder(self.backbone.channels, conv_dim=c.pixel_channels, mask_dim=c.mask_dim)
        # Mask2Former cycles over strides 32/16/8; on 128-px images most objects vanish from the 4x4 stride-32
        # map (and its attention mask), so small-image presets use finer levels.
        self.level_index = [(32, 16, 8, 4).index(s) for s in c.decoder_strides]
        self.num_levels = len(self.level_index)
        # Mask2Former's input_proj: only needed when the pixel decoder is narrower/wider than the queries.
        self.input_proj = nn.ModuleList(
            nn.Identity() if c.pixel_channels == d else nn.Conv2d(c.pixel_channels, d, 1)
            for _ in range(self.num_levels))
        self.level_embed = nn.Embedding(self.num_levels, d)
        self.query_feat = nn.Embedding(c.num_queries, d)      # learnable query features
        self.query_embed = nn.Embedding(c.num_queries, d)     # learnable query positional embeddings
        self.layers = nn.ModuleList(DecoderLayer(d, c.nheads, c.dim_feedforward, dropout=c.dropout, pre_norm=pre_norm)
                                    for _ in range(c.dec_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.class_embed = nn.Linear(d, c.num_classes + 1)
        self.mask_embed = MLP(d, d, c.mask_dim, 3)

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """images [B,3,H,W] in [0,1] -> (mask_features [B,C,H/4,W/4], levels [B,hidden,H/s,W/s], s = decoder_strides)."""
        x = (images - self.pixel_mean) / self.pixel_std
        mask_features, levels = self.pixel_decoder(self.backbone(x))
        return mask_features, [proj(levels[i]) for proj, i in zip(self.input_proj, self.level_index)]

    def heads(self, output: torch.Tensor, mask_features: torch.Tensor,
              attn_size: tuple[int, int] | None) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Prediction heads on decoder output [B,Q,D] -> ({"pred_logits", "pred_masks", "mask_embed"},
        attention mask [B, 1, Q, h'*w'] bool for the next layer at size attn_size (True = blocked, the same for
        every head))."""
        x = self.decoder_norm(output)
        mask_embed = self.mask_embed(x)                                        # [B,Q,C]
        pred_masks = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)  # [B,Q,h,w]
        out = {"pred_logits": self.class_embed(x), "pred_masks": pred_masks, "mask_embed": mask_embed}
        if attn_size is None:
            return out, None
        with torch.no_grad():
            m = F.interpolate(pred_masks.detach(), size=attn_size, mode="bilinear", align_corners=False)
            # sigmoid(z) < 0.5  <=>  z < 0: block the pixels outside the query's predicted mask
            blocked = (m < 0).flatten(2)                                         # [B,Q,h'w']
            # A query whose mask is empty would attend to nothing (softmax of all -inf = NaN): let it see all.
            blocked &= ~blocked.all(dim=-1, keepdim=True)
        return out, blocked.unsqueeze(1)                                         # [B,1,Q,h'w']

    def forward(self, images: torch.Tensor) -> dict:
        """images [B,3,H,W] floats in [0,1] -> the output dict described in the module docstring."""
        mask_features, levels = self.features(images)
        B = images.shape[0]
        memories, pos, sizes = [], [], []
        for i, lvl in enumerate(levels):
            sizes.append(tuple(lvl.shape[-2:]))
            pos.append(sine_position_embedding(lvl, lvl.shape[1] // 2))                      # [S_i, D]
            memories.append(lvl.flatten(2).transpose(1, 2) + self.level_embed.weight[i])     # [B, S_i, D]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(B, -1, -1)                  # [B,Q,D]
        output = self.query_feat.weight.unsqueeze(0).expand(B, -1, -1)                     # [B,Q,D]

        preds = []
        pred, attn_mask = self.heads(output, mask_features, sizes[0])
        preds.append(pred)
        for i, layer in enumerate(self.layers):
            lvl = i % self.num_levels
            output = layer(output, query_pos, memories[lvl], pos[lvl], attn_mask)
            nxt = sizes[(i + 1) % self.num_levels] if i + 1 < len(self.layers) else None
            pred, attn_mask = self.heads(output, mask_features, nxt)
            preds.append(pred)
        out = dict(preds[-1])
        out["mask_features"] = mask_features
        out["aux_outputs"] = preds[:-1]
        return out
