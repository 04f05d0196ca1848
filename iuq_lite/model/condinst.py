"""A compact CondInst-style segmenter (Tian et al., ECCV 2020): FCOS + dynamic mask heads, and its IUQ adapter.

    model = CondInst(cfg.model)
    out = model(images)                  # images [B,3,H,W] in [0,1]; ImageNet normalisation inside
    crit = CondInstCriterion(cfg)        # FCOS losses + dice on the dynamic masks of the capped positives

out (L = locations of all FCOS levels, finest first; K classes; P = 169 dynamic-head parameters for C = 8):
    "cls_logits" [B,L,K], "ctrness" [B,L], "box_reg" [B,L,4] (l, t, r, b px), "params" [B,L,P] (controller),
    "locations" [L,2] (y, x) px, "levels" [L], "loc_norm" [L,2] (y, x) / (H, W),
    "loc_scale" [L,2] = (H, W) / soi_level, "mask_feats" [B,C,H/4,W/4] (the mask branch, stride 4).
Training queries depend on the targets (CondInst computes masks only at positive locations), so
`CondInstAdapter.assign(out, targets)` attaches them: "assigned" [B,L], "gt_boxes", "proposals" [B,Q],
"proposal_valid" [B,Q], "proposal_gt" [B,Q], Q = model.num_queries (padded).

CondInst §3.2: "the mask head ... three 1x1 convolutions, each having 8 channels and using ReLU ... the
relative coordinates from the location to all pixels are concatenated to F_mask". Our choices: the mask branch
is the FPN decoder's stride-4 output projected to C = 8 channels (CondInst: four 3x3 convs on P3 at stride 8,
logits upsampled to stride 4), relative coordinates are (location - pixel) in px / soi of the location's level,
computed in each image's normalised coordinates (so they extend to memory pixels of other images, below), and
positives are capped at num_queries per image by a random subset (CondInst: 500 per batch of 16, ~31 per image).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from ..config import Config, ModelConfig
from ..losses import dice_loss
from . import fcos
from .backbone import ConvGN, PixelDecoder, build_backbone
from .mask2former import IMAGENET_MEAN, IMAGENET_STD

DYN = 8                    # channels of the dynamic mask head
SCORE_THRESH, PRE_NMS, NMS_IOU = 0.05, 1000, 0.6      # CondInst / FCOS inference defaults


def num_params(c: int) -> int:
    """Parameters of the dynamic head on c feature + 2 coordinate channels: 3 layers, weights then biases."""
    return (c + 2) * DYN + DYN * DYN + DYN + DYN + DYN + 1


def dynamic_logits(E: torch.Tensor, feats: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The dynamic mask head of every query on a set of pixels.

    E [B,Q,P+4] = params (P) | location (y, x) normalised | scale (y, x); feats [B',m,C] pixel features;
    pos [B',m,2] the pixels' normalised (y, x); B' = B (own pixels) or 1 (shared, e.g. memory pixels).
    Input channels (CondInst order) = [rel_y, rel_x, feats], rel = (location - pos) * scale.
    Returns mask logits [B,Q,m].
    """
    B, Q, _ = E.shape
    C = feats.shape[-1]
    P = num_params(C)
    w1, w2, w3, b1, b2, b3 = E[..., :P].split([(C + 2) * DYN, DYN * DYN, DYN, DYN, DYN, 1], -1)
    loc, scale = E[..., P:P + 2], E[..., P + 2:P + 4]
    w1 = w1.reshape(B, Q, DYN, C + 2)
    # Layer 1 is linear in rel = (loc - pos) * scale: W_rel rel = W_rel (loc * scale) - (W_rel * scale) pos, so
    # the per-query constant folds into the bias, and the bias into the matmul (a ones channel): one GEMM over
    # [pos, feats, 1] serves every query and no [B,Q,m,2] coordinate tensor is built (passes over [B,Q,8,m]
    # activations bound the inter loss's cost on CPU).
    w_rel = w1[..., :2] * scale[:, :, None, :]                                       # [B,Q,8,2]
    bias1 = b1 + (w_rel * loc[:, :, None, :]).sum(-1)                                # [B,Q,8]
    W = torch.cat([-w_rel, w1[..., 2:], bias1[..., None]], -1)                       # [B,Q,8,C+3]
    x = torch.cat([pos.to(feats.dtype).expand(feats.shape[0], -1, -1), feats, feats.new_ones(*feats.shape[:2], 1)],
                  -1).transpose(1, 2)                                                # [B',C+3,m]
    m = x.shape[-1]
    if x.shape[0] == 1:                                                              # shared pixels: one GEMM
        h = (W.reshape(B * Q * DYN, C + 3) @ x[0]).view(B * Q, DYN, m)
    else:
        h = torch.bmm(W.reshape(B, Q * DYN, C + 3), x).view(B * Q, DYN, m)
    h = F.relu(torch.bmm(w2.reshape(B * Q, DYN, DYN), F.relu(h)) + b2.reshape(B * Q, DYN, 1))       # [BQ,8,m]
    return (torch.bmm(w3.reshape(B * Q, 1, DYN), h) + b3.reshape(B * Q, 1, 1)).view(B, Q, m)       # [B,Q,m]


def grid_positions(h: int, w: int, device=None) -> torch.Tensor:
    """Normalised (y, x) of the cell centres of an h x w map, row-major [h*w,2] (PixelMemory's convention)."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(h * w, 2)


class CondInstAdapter:
    """How IUQ reads CondInst (the interface of adapter.DotProductAdapter): the queries are the capped positive
    proposals, E = [controller params | normalised location | scale] [B,Q,P+4]; F = the mask branch [B,8,h,w].

    Inter-scene loss (Eq. 5): logits_fn applies each proposal's dynamic head to memory pixels with relative
    coordinates from the proposal's location (normalised in ITS image) to the pixel's stored normalised position
    in ITS source image (our choice; CondInst has no cross-image term). Eq. 8: mask_logits(E^g, g(F)).
    """

    stride = 4

    def __init__(self, model_cfg: ModelConfig):
        self.cap, self.strides, self.soi = model_cfg.num_queries, tuple(model_cfg.fcos_strides), model_cfg.fcos_soi

    def assign(self, outputs: dict, targets: list[dict]) -> dict:
        """outputs + FCOS assignment and the capped proposals (see the module docstring); indices into the
        caller's targets (crowd and empty masks are never assigned). A random subset when positives > cap."""
        centres, level = outputs["locations"], outputs["levels"]
        B, dev = outputs["params"].shape[0], centres.device
        assigned, boxes = [], []
        props = torch.zeros(B, self.cap, dtype=torch.long, device=dev)
        gt = torch.full((B, self.cap), -1, dtype=torch.long, device=dev)
        for b, t in enumerate(targets):
            box, ok = fcos.target_boxes(t["masks"].to(dev), t.get("iscrowd"))
            a = fcos.assign(centres, level, box, strides=self.strides, soi=self.soi, valid=ok)
            pos = (a >= 0).nonzero().squeeze(1)
            if pos.numel() > self.cap:      # the image's keyed generator when IUQCriterion gave one (DDP-exact)
                gen = t.get("generator")
                perm = torch.randperm(pos.numel(), generator=gen, device=gen.device if gen is not None else dev)
                pos = pos[perm[:self.cap].to(dev)].sort().values
            props[b, :pos.numel()], gt[b, :pos.numel()] = pos, a[pos]
            assigned.append(a)
            boxes.append(box)
        return {**outputs, "assigned": torch.stack(assigned), "gt_boxes": boxes, "proposals": props,
                "proposal_valid": gt >= 0, "proposal_gt": gt}

    def query_mask(self, outputs: dict) -> torch.Tensor:
        return outputs["proposal_valid"]

    def embed(self, outputs: dict) -> torch.Tensor:
        """[B,Q,P+4]; gradient reaches the controller only (locations and scales are constants)."""
        props = outputs["proposals"]
        params = outputs["params"].gather(1, props[..., None].expand(-1, -1, outputs["params"].shape[-1]))
        return torch.cat([params, outputs["loc_norm"][props].to(params), outputs["loc_scale"][props].to(params)], -1)

    def features(self, outputs: dict) -> torch.Tensor:
        return outputs["mask_feats"]

    def mask_logits(self, embed: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """E [B,Q,P+4] on features [B,C,h,w] (pixel positions normalised on this grid) -> [B,Q,h,w]."""
        B, _, h, w = features.shape
        pos = grid_positions(h, w, features.device)[None]
        return dynamic_logits(embed, features.flatten(2).transpose(1, 2), pos).view(B, -1, h, w)

    def logits_fn(self, embed: torch.Tensor, memory: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """E [B,Q,P+4] on memory pixels [m,C] at their normalised positions [m,2] -> [B,Q,m]."""
        if positions is None:
            raise ValueError("CondInst's dynamic heads need the memory pixels' positions (Segment.positions)")
        return dynamic_logits(embed, memory[None].to(embed.dtype), positions[None].to(embed.dtype))

    def layers(self, outputs: dict, which: str = "last") -> list[dict]:
        return [outputs]        # one prediction head: no decoder layers


class CondInst(nn.Module):
    """Backbone + FPN (PixelDecoder) + shared FCOS head with a controller + mask branch (module docstring)."""

    mask_stride = 4

    def __init__(self, model_cfg: ModelConfig):
        super().__init__()
        c = model_cfg
        strides = list(c.fcos_strides)
        if any(s not in (8, 16, 32, 64, 128) for s in strides) or strides != sorted(set(strides)):
            raise ValueError(f"model.fcos_strides must be increasing, from 8 16 32 64 128; got {c.fcos_strides}")
        self.cfg, self.num_classes, self.num_queries, self.test_topk = c, c.num_classes, c.num_queries, c.test_topk
        self.strides, self.soi = tuple(c.fcos_strides), float(c.fcos_soi)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        d = c.pixel_channels
        self.backbone = build_backbone(c)
        self.pixel_decoder = PixelDecoder(self.backbone.channels, conv_dim=d, mask_dim=c.mask_dim)
        # P6, P7 (FCOS): stride-2 convs on top of the coarsest FPN level
        self.extra = nn.ModuleList(ConvGN(d, d, stride=2) for s in self.strides if s > 32)
        self.cls_tower = nn.Sequential(*(ConvGN(d, d) for _ in range(c.head_convs)))
        self.box_tower = nn.Sequential(*(ConvGN(d, d) for _ in range(c.head_convs)))
        self.cls_logits = nn.Conv2d(d, c.num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(d, 4, 3, padding=1)
        self.ctrness = nn.Conv2d(d, 1, 3, padding=1)
        self.controller = nn.Conv2d(d, num_params(c.mask_dim), 3, padding=1)   # on the box tower, as CondInst
        self.scales = nn.Parameter(torch.ones(len(self.strides)))
        for conv in (self.cls_logits, self.box_pred, self.ctrness, self.controller):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log(99.0))                 # focal prior p = 0.01

    def iuq_adapter(self) -> CondInstAdapter:
        return CondInstAdapter(self.cfg)

    def forward(self, images: torch.Tensor) -> dict:
        """images [B,3,H,W] floats in [0,1] -> the output dict of the module docstring."""
        H, W = images.shape[-2:]
        mask_feats, outs = self.pixel_decoder(self.backbone((images - self.pixel_mean) / self.pixel_std))
        by_stride = {32: outs[0], 16: outs[1], 8: outs[2], 4: outs[3]}
        levels, extra = [], iter(self.extra)
        for s in self.strides:
            levels.append(by_stride[s] if s <= 32 else next(extra)(levels[-1] if levels else by_stride[32]))
        heads: dict[str, list[torch.Tensor]] = {k: [] for k in ("cls_logits", "box_reg", "ctrness", "params")}
        for i, (f, s) in enumerate(zip(levels, self.strides)):
            cls_t, box_t = self.cls_tower(f), self.box_tower(f)
            # FCOS with normalised regression targets: relu(scale * x) in strides, here times the stride in px
            maps = {"cls_logits": self.cls_logits(cls_t), "ctrness": self.ctrness(box_t),
                    "box_reg": F.relu(self.box_pred(box_t) * self.scales[i]) * s, "params": self.controller(box_t)}
            for k, v in maps.items():
                heads[k].append(v.flatten(2).transpose(1, 2))                       # [B,h*w,ch]
        out = {k: torch.cat(v, 1) for k, v in heads.items()}
        out["ctrness"] = out["ctrness"].squeeze(-1)
        centres, level = fcos.locations([tuple(f.shape[-2:]) for f in levels], self.strides, images.device)
        hw = torch.tensor([float(H), float(W)], device=images.device)
        soi = self.soi * 2.0 ** level.float()                                        # [L] px
        out.update(locations=centres, levels=level, loc_norm=centres / hw, loc_scale=hw / soi[:, None],
                   mask_feats=mask_feats)
        return out

    @torch.no_grad()
    def postprocess(self, outputs: dict, sizes, *, topk: int = 100, orig_sizes=None, input_size=None) -> list[dict]:
        """CondInst inference: score = sqrt(sigmoid(cls) sigmoid(ctr)) where sigmoid(cls) > 0.05, top 1000,
        class-wise NMS (IoU 0.6), top `topk`; masks = the kept locations' dynamic heads, upsampled to the
        padded input, cropped to `sizes`, resized to `orig_sizes`, thresholded at p = 0.5.
        Returns per image {"scores" [k], "labels" [k], "masks" [k,H,W] bool} (evaluate.postprocess's contract)."""
        feats = outputs["mask_feats"]
        B, _, h, w = feats.shape
        pad = tuple(int(s) for s in input_size) if input_size is not None else (4 * h, 4 * w)
        adapter, results = self.iuq_adapter(), []
        for b in range(B):
            prob = outputs["cls_logits"][b].float().sigmoid()                        # [L,K]
            loc, labels = (prob > SCORE_THRESH).nonzero(as_tuple=True)
            scores = torch.sqrt(prob[loc, labels] * outputs["ctrness"][b, loc].float().sigmoid())
            scores, order = scores.topk(min(PRE_NMS, scores.numel()))
            loc, labels = loc[order], labels[order]
            hb, wb = (int(s) for s in sizes[b])
            boxes = fcos.decode(outputs["locations"][loc], outputs["box_reg"][b, loc].float())
            boxes = torch.stack([boxes[:, 0].clamp(0, wb), boxes[:, 1].clamp(0, hb), boxes[:, 2].clamp(0, wb),
                                 boxes[:, 3].clamp(0, hb)], 1)
            keep = batched_nms(boxes, scores, labels, NMS_IOU)[:topk]
            loc, labels, scores = loc[keep], labels[keep], scores[keep]
            out_size = tuple(int(s) for s in orig_sizes[b]) if orig_sizes is not None else (hb, wb)
            if loc.numel() == 0:
                results.append({"scores": scores, "labels": labels,
                                "masks": torch.zeros(0, *out_size, dtype=torch.bool, device=feats.device)})
                continue
            E = torch.cat([outputs["params"][b, loc], outputs["loc_norm"][loc], outputs["loc_scale"][loc]], -1)
            m = adapter.mask_logits(E[None].float(), feats[b:b + 1].float())                 # [1,k,h,w]
            m = F.interpolate(m, size=pad, mode="bilinear", align_corners=False)[0, :, :hb, :wb]
            if out_size != (hb, wb):
                m = F.interpolate(m[None], size=out_size, mode="bilinear", align_corners=False)[0]
            results.append({"scores": scores, "labels": labels, "masks": m > 0})
        return results


class CondInstCriterion(nn.Module):
    """FCOS losses + dice on the capped proposals' dynamic masks (CondInst §3.3), already weighted.

    forward(outputs, targets, *, return_indices=False) -> {"loss_cls", "loss_box", "loss_ctr" (weight 1 each,
    as FCOS), "loss_mask" (loss.dice_weight x mean dice over proposals)} [, indices]; indices per image =
    (proposal slots [n], their assigned target index [n]); valid [B,H',W'] weights the mask loss's pixels.
    mask_loss(outputs, targets, valid=) is Eq. 8's mask criterion. Either assigns the proposals itself when
    `outputs` lacks them (CondInstAdapter.assign).
    norm_targets (a whole step's targets split into micro-batches): the counts normalising the losses are
    scaled by len(norm_targets) / len(targets), i.e. this micro-batch's positives stand for its share.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg, self.num_classes, self.adapter = cfg, cfg.model.num_classes, CondInstAdapter(cfg.model)

    def _assigned(self, outputs: dict, targets: list[dict]) -> dict:
        return outputs if "proposals" in outputs else self.adapter.assign(outputs, targets)

    def forward(self, outputs: dict, targets: list[dict], *, return_indices: bool = False,
                norm_targets: list[dict] | None = None, valid: torch.Tensor | None = None):
        outputs = self._assigned(outputs, targets)
        share = 1.0 if norm_targets is None else len(norm_targets) / max(len(targets), 1)
        det = fcos.fcos_losses(outputs, [t["labels"] for t in targets], outputs["gt_boxes"], outputs["assigned"],
                               num_classes=self.num_classes, share=share)
        losses = {f"loss_{k}": v for k, v in det.items()}
        losses["loss_mask"] = self.mask_loss(outputs, targets, norm_targets=norm_targets, valid=valid)
        if not return_indices:
            return losses
        ok, gt = outputs["proposal_valid"], outputs["proposal_gt"]
        return losses, [(v.nonzero().squeeze(1), g[v]) for v, g in zip(ok, gt)]

    def mask_loss(self, outputs: dict, targets: list[dict], *, valid: torch.Tensor | None = None,
                  norm_targets: list[dict] | None = None, with_class: bool = False) -> torch.Tensor:
        """dice_weight x dice of every valid proposal's mask [B,Q,h,w] ("pred_masks" when given, else the dynamic
        heads on "mask_feats") against its assigned target, resampled to (h, w) (bilinear: soft targets at the
        stride-4 cell centres); valid [B,H',W'] bool weights the pixels. Sum over proposals / their number
        (averaged over ranks). with_class (iuq.equi.class_loss): plus the FCOS terms of the same assignment
        (CondInst's class is its dense detector head, whose box and centre-ness terms come with it)."""
        outputs = self._assigned(outputs, targets)
        if with_class:
            return sum(self.forward(outputs, targets, norm_targets=norm_targets, valid=valid).values())
        logits = outputs.get("pred_masks")
        if logits is None:
            logits = self.adapter.mask_logits(self.adapter.embed(outputs), outputs["mask_feats"])
        b, q = outputs["proposal_valid"].nonzero(as_tuple=True)
        if b.numel() == 0:
            return logits.sum() * 0.0
        h, w = logits.shape[-2:]
        gt = outputs["proposal_gt"][b, q]
        tgt = torch.cat([targets[i]["masks"][gt[b == i].to(targets[i]["masks"].device)].to(logits.device)
                         for i in range(len(targets))]).float()                              # [N,H,W]
        tgt = F.interpolate(tgt[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        wts = None
        if valid is not None:
            wts = F.interpolate(valid[None].float().to(logits.device), size=(h, w), mode="bilinear",
                                align_corners=False)[0][b].flatten(1)
        dice = dice_loss(logits[b, q].flatten(1).float(), tgt.flatten(1), wts)
        share = 1.0 if norm_targets is None else len(norm_targets) / max(len(targets), 1)
        return self.cfg.loss.dice_weight * dice.sum() / fcos._global_count(torch.tensor(b.numel() * share))
