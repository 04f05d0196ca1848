"""Instance-unique querying: the pixel memory, the two IUQ losses and a criterion wrapping any base model.

    crit = iuq.iuq.IUQCriterion(base_criterion, cfg.iuq, seed=cfg.train.seed)
    losses = crit(model, images, targets, step=step)     # base terms + "loss_inter" + "loss_equi" (weighted)
    sum(losses.values()).backward(); opt.step()
    crit.after_step()                                    # enqueue this batch's instance pixels (METHOD §3)

`inter_mask_loss` (METHOD §2, Eq. 5; fused and chunked, in inter_kernel.py), `PixelMemory` (§3),
`equivariance_loss` (§4, Eq. 8) and `IUQCriterion` (§5: L = L_intra + w_inter L_inter + lambda L_equi).
"""
from __future__ import annotations

import functools

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from . import transforms
from .config import IUQConfig
from .inter_kernel import Segment, inter_mask_loss, inter_mask_loss_reference, set_compile
from .utils import all_gather_cat

__all__ = ["DotProductAdapter", "IUQCriterion", "PixelMemory", "Segment", "equivariance_loss", "inter_mask_loss",
           "inter_mask_loss_reference", "set_compile", "step_seed", "transform_targets", "valid_region"]

_KEYS = ("features", "labels", "image_ids", "positions")


# ------------------------------------------------------------------------------------------ memory
class PixelMemory:
    """FIFO ring buffer of DETACHED instance pixels (METHOD §3), preallocated.

    .features [M,C] float32, .labels [M] long (class), .image_ids [M] long, .positions [M,2] (normalised
    (y, x) in [0, 1] of the pixel centre on the source feature grid); M = len(self) = min(pushed, capacity).
    Entries are exposed in SLOT order (a ring: the oldest is overwritten first; `.order` lists slots oldest ->
    newest). Capacity 0 stores nothing (Table S4's "mini-batch only" row).
    """

    def __init__(self, capacity: int, dim: int, *, pixels_per_instance: int = 50,
                 device: torch.device | str | None = None):
        if capacity < 0 or dim <= 0 or pixels_per_instance <= 0:
            raise ValueError(f"bad PixelMemory(capacity={capacity}, dim={dim}, "
                             f"pixels_per_instance={pixels_per_instance})")
        self.capacity, self.dim, self.pixels_per_instance = int(capacity), int(dim), int(pixels_per_instance)
        shapes = {"features": ((self.dim,), torch.float32), "labels": ((), torch.long),
                  "image_ids": ((), torch.long), "positions": ((2,), torch.float32)}
        self._buf = {k: torch.zeros(self.capacity, *shape, dtype=dtype, device=torch.device(device or "cpu"))
                     for k, (shape, dtype) in shapes.items()}
        self.ptr = 0        # next slot to write
        self.pushed = 0     # pixels ever pushed (including those that never fit)

    def __len__(self) -> int:
        return min(self.pushed, self.capacity)

    def __repr__(self) -> str:
        return f"PixelMemory({len(self)}/{self.capacity} pixels x {self.dim}, ppi={self.pixels_per_instance})"

    features = property(lambda self: self._buf["features"][:len(self)])
    labels = property(lambda self: self._buf["labels"][:len(self)])
    image_ids = property(lambda self: self._buf["image_ids"][:len(self)])
    positions = property(lambda self: self._buf["positions"][:len(self)])
    device = property(lambda self: self._buf["features"].device)

    @property
    def order(self) -> torch.Tensor:
        """Slot indices from the oldest to the newest entry [M]."""
        start = self.ptr if self.pushed > self.capacity else 0
        return (start + torch.arange(len(self))) % max(self.capacity, 1)

    def segment(self) -> Segment:
        """The stored pixels as negatives for `inter_mask_loss`."""
        return Segment(self.features, self.labels, self.image_ids)

    def to(self, device: torch.device | str) -> PixelMemory:
        self._buf = {k: v.to(device) for k, v in self._buf.items()}
        return self

    # -- sampling ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_pixels(self, features: torch.Tensor, masks: list[torch.Tensor], labels: list[torch.Tensor],
                      image_ids: list[int] | torch.Tensor, *,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Instance-balanced pixels of a batch: features [B,C,h,w]; masks[b] [K_b,H',W'] bool (any resolution
        with the features' aspect, nearest-downsampled to (h, w)); labels[b] [K_b]; image_ids [B].

        Each instance gives exactly pixels_per_instance pixels: distinct ones when it has that many at
        feature resolution, else drawn with replacement; instances with no pixel at (h, w) are skipped.
        Returns {"features" [N,C] float32 detached, "labels" [N], "image_ids" [N], "positions" [N,2]}.
        """
        B, C, h, w = features.shape
        k_ppi = self.pixels_per_instance
        out: dict[str, list[torch.Tensor]] = {k: [] for k in _KEYS}
        flat = features.detach().flatten(2)                                              # [B,C,hw]
        for b in range(B):
            m = masks[b]
            if m.shape[0] == 0:
                continue
            H, W = m.shape[-2:]
            if H == h * (H // h) and W == w * (W // w):
                small = m[:, ::H // h, ::W // w]        # == F.interpolate(mode="nearest") for integer strides
            else:
                small = F.interpolate(m[None].float(), size=(h, w), mode="nearest")[0] > 0.5
            dev = generator.device if generator is not None else small.device
            small = small.to(dev).reshape(m.shape[0], h * w).bool()                      # [K,hw]
            n = small.sum(1)                                                             # [K]
            # Random keys, background last: the k smallest are a uniform subset of the instance's pixels,
            # in random order; fewer than k pixels -> index uniformly into the first n (with replacement).
            keys = torch.rand(small.shape, generator=generator, device=dev).masked_fill(~small, 2.0)
            first = keys.topk(min(k_ppi, h * w), dim=1, largest=False).indices           # [K,k]
            u = torch.rand(m.shape[0], k_ppi, generator=generator, device=dev)
            j = torch.where(n[:, None] >= k_ppi, torch.arange(k_ppi, device=dev)[None],
                            (u * n[:, None]).long().clamp(max=first.shape[1] - 1))
            keep = n > 0
            pix = first.gather(1, j)[keep].flatten()                                     # [N_b]
            if pix.numel() == 0:
                continue
            out["features"].append(flat[b][:, pix.to(flat.device)].t().float())          # [N_b,C]
            lab = torch.as_tensor(labels[b]).to(dev)[keep].long()
            out["labels"].append(lab.repeat_interleave(k_ppi).to(flat.device))
            out["image_ids"].append(torch.full((pix.numel(),), int(image_ids[b]), dtype=torch.long,
                                               device=flat.device))
            yx = torch.stack([pix // w, pix % w], 1).float() + 0.5
            out["positions"].append((yx / torch.tensor([h, w], device=dev)).to(flat.device))
        if not out["features"]:
            return {"features": flat.new_zeros(0, C, dtype=torch.float32), "positions": flat.new_zeros(0, 2),
                    **{k: torch.zeros(0, dtype=torch.long, device=flat.device) for k in ("labels", "image_ids")}}
        return {k: torch.cat(v) for k, v in out.items()}

    @staticmethod
    def gather(sampled: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """all_gather a sample across DDP ranks (identity in one process), so every rank sees every rank's
        pixels (in-batch negatives) and enqueues the same ones (MoCo-style identical memories)."""
        return {k: all_gather_cat(sampled[k]) for k in _KEYS}

    # -- enqueue -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def push_sampled(self, sampled: dict[str, torch.Tensor]) -> None:
        """Enqueue an (already gathered) sample as is; the oldest entries are overwritten."""
        n = int(sampled["features"].shape[0])
        if n and self.capacity:
            keep = min(n, self.capacity)       # only the newest `capacity` can survive this push
            idx = ((self.ptr + (n - keep) + torch.arange(keep)) % self.capacity).to(self.device)
            for k in _KEYS:
                self._buf[k].index_copy_(0, idx, sampled[k][n - keep:].to(self.device, self._buf[k].dtype))
            self.ptr = (self.ptr + n) % self.capacity
        self.pushed += n

    def push(self, features: torch.Tensor, masks: list[torch.Tensor], labels: list[torch.Tensor],
             image_ids: list[int] | torch.Tensor, *,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """sample_pixels + gather across ranks + enqueue; returns the gathered sample."""
        sampled = self.gather(self.sample_pixels(features, masks, labels, image_ids, generator=generator))
        self.push_sampled(sampled)
        return sampled

    # -- checkpoints -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain ints and CPU tensors (loads with torch.load(weights_only=True))."""
        n = len(self)
        return {"capacity": self.capacity, "dim": self.dim, "pixels_per_instance": self.pixels_per_instance,
                "ptr": self.ptr, "pushed": self.pushed, **{k: v[:n].cpu().clone() for k, v in self._buf.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (int(state["capacity"]), int(state["dim"])) != (self.capacity, self.dim):
            raise ValueError(f"memory state is capacity {state['capacity']} x dim {state['dim']}, this memory "
                             f"is {self.capacity} x {self.dim}")
        n = int(state["features"].shape[0])
        for k in _KEYS:
            self._buf[k][:n] = state[k].to(self.device, self._buf[k].dtype)
        self.ptr, self.pushed = int(state["ptr"]), int(state["pushed"])
        self.pixels_per_instance = int(state.get("pixels_per_instance", self.pixels_per_instance))


# ------------------------------------------------------------------------------------------ equivariance
class DotProductAdapter:
    """How IUQ reads a model's outputs; the default, for dot-product mask heads (Mask2Former-style).

    embed(outputs) -> E [B,Q,C]; features(outputs) -> F [B,C,h,w]; mask_logits(E, F) -> [B,Q,h,w];
    logits_fn = None (the inter loss then uses its fused dot-product kernel); stride = F's stride in pixels;
    layers(outputs, which) -> the output dicts the inter loss uses ("last" or "all" = aux layers + last).
    A CondInst-style adapter overrides mask_logits and sets logits_fn(E, memory_chunk) -> [B,Q,m].
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


def transform_targets(targets: list[dict], g: transforms.GeoTransform) -> list[dict]:
    """g(M): masks transformed with g; instances the transform leaves empty and crowd ones dropped.

    "size" is removed: after a flip or warp the real area is no longer the top-left box, so it is carried
    by `valid_region` instead. Per-annotation extras ("groups") are dropped.
    """
    out = []
    for t in targets:
        m = g.masks(t["masks"])                                                       # [K,H',W'] bool
        keep = m.flatten(1).any(1)
        if "iscrowd" in t:
            keep &= ~t["iscrowd"].to(keep.device).bool()
        rest = {k: v for k, v in t.items() if k not in ("masks", "labels", "iscrowd", "size", "groups")}
        out.append({**rest, "labels": t["labels"][keep.to(t["labels"].device)], "masks": m[keep],
                    "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.bool, device=m.device)})
    return out


def valid_region(targets: list[dict], g: transforms.GeoTransform, image_size: tuple[int, int],
                 device: torch.device) -> torch.Tensor | None:
    """[B,H',W'] bool at image resolution: inside the warped canvas AND inside each image's real (unpadded)
    area after g; None when everything is valid."""
    H, W = int(image_size[0]), int(image_size[1])
    inside = g.valid((H, W), device=device)                                           # [H',W']
    sizes = [t.get("size") for t in targets]
    padded = any(s is not None and (int(s[0]) < H or int(s[1]) < W) for s in sizes)
    if bool(inside.all()) and not padded:
        return None
    valid = inside[None].expand(len(targets), -1, -1)
    if padded:
        area = torch.zeros(len(targets), H, W, dtype=torch.bool, device=device)
        for b, s in enumerate(sizes):
            h, w = (H, W) if s is None else (int(s[0]), int(s[1]))
            area[b, :h, :w] = True
        valid = valid & g.masks(area)
    return valid


def equivariance_loss(out_g: dict, features: torch.Tensor, targets: list[dict], g: transforms.GeoTransform, *,
                      mask_criterion: Callable[..., torch.Tensor], as_augmentation: bool = False,
                      adapter: DotProductAdapter | None = None) -> torch.Tensor:
    """Transformation-equivariance loss (METHOD §4, Eq. 8) for one transform g, NOT multiplied by lambda.

    out_g: the model's outputs on g(I) ("pred_logits" [B,Q,K+1], "mask_embed" E^g [B,Q,C], ...);
    features: F = f(I) [B,C,h,w] of the ORIGINAL image, WITH gradient; targets: the original targets
    (masks at image resolution); mask_criterion(outputs, targets_g, valid=[B,H',W'] bool or None) -> scalar,
    e.g. SetCriterion.mask_loss (5 BCE + 5 dice on points inside `valid`, Hungarian re-matched, normalised by
    the all-reduced number of transformed masks). Logits = einsum('bqc,bchw->bqhw', E^g, g(F)) (the adapter's
    mask_logits); targets g(M) without instances g leaves empty; valid = inside g's canvas and each image's
    real area. as_augmentation (Table S3 control): logits from the transformed image's OWN features f(g(I)).
    A batch whose transformed targets are all empty gives 0, still in the graph (the criterion's zero).
    """
    adapter = adapter or DotProductAdapter()
    feats = adapter.features(out_g) if as_augmentation else g.features(features)
    logits = adapter.mask_logits(adapter.embed(out_g), feats)                         # [B,Q,h',w']
    targets_g = transform_targets(targets, g)
    valid = valid_region(targets, g, g.image_size, logits.device) if targets else None
    loss = mask_criterion({"pred_logits": out_g["pred_logits"], "pred_masks": logits}, targets_g, valid=valid)
    return loss + logits.sum() * 0.0 if not loss.requires_grad and logits.requires_grad else loss


def step_seed(seed: int, step: int) -> int:
    """A generator seed from (train seed, step), equal on every DDP rank: splitmix64 of (seed << 32 | step) (no
    salted hash()); mixed because torch's CPU generator keeps only the low 32 bits of a seed."""
    z = ((int(seed) << 32) + int(step) + 0x9E3779B97F4A7C15) % (1 << 64)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
    return (z ^ (z >> 31)) % (1 << 63)


# ------------------------------------------------------------------------------------------ criterion
class IUQCriterion:
    """L = L_intra + w_inter L_inter + lambda L_equi (METHOD §5) around ANY base criterion.

    base_criterion(outputs, targets, *, return_indices=True) -> (weighted losses dict, final-layer indices
    [(index_q, index_t)] per image); its .mask_loss is the equivariance criterion. adapter: how to read E, F
    and mask logits (DotProductAdapter by default). stuff_classes: classes whose matched queries get stuff
    targets in the inter loss (panoptic). seed: the train seed, which with the step keys the transform g.
    crit(model, images, targets, *, step) -> weighted terms (base + "loss_inter" + "loss_equi"); total = sum.
    crit.after_step() enqueues this step's sampled pixels; crit.memory is the PixelMemory (built at the first
    step, when the feature width is known, unless mask_dim is given).
    """

    def __init__(self, base_criterion: Callable, iuq_cfg: IUQConfig, *, adapter: DotProductAdapter | None = None,
                 stuff_classes: tuple[int, ...] | list[int] = (), seed: int = 0, mask_dim: int | None = None):
        self.base, self.cfg, self.adapter = base_criterion, iuq_cfg, adapter or DotProductAdapter()
        self.stuff_classes, self.seed = tuple(int(c) for c in stuff_classes), int(seed)
        if iuq_cfg.inter.queries not in ("all", "matched") or iuq_cfg.inter.layers not in ("last", "all"):
            raise ValueError(f"iuq.inter.queries must be all|matched and iuq.inter.layers last|all, not "
                             f"{iuq_cfg.inter.queries!r}, {iuq_cfg.inter.layers!r}")
        self.memory: PixelMemory | None = None
        self._pending: dict[str, torch.Tensor] | None = None          # this step's gathered pixel sample
        self.last_transform: transforms.GeoTransform | None = None    # this step's g (for inspection)
        if mask_dim is not None:
            self._ensure_memory(mask_dim, torch.device("cpu"))

    def _ensure_memory(self, dim: int, device: torch.device) -> PixelMemory:
        inter = self.cfg.inter
        if self.memory is None:
            cap = inter.capacity if inter.enabled else 0
            self.memory = PixelMemory(cap, dim, pixels_per_instance=inter.pixels_per_instance, device=device)
        elif self.memory.device != device:
            self.memory.to(device)
        return self.memory

    def to(self, device: torch.device | str) -> IUQCriterion:
        if hasattr(self.base, "to"):
            self.base.to(device)
        if self.memory is not None:
            self.memory.to(device)
        return self

    # -- pieces ------------------------------------------------------------------------------------------
    def draw_transform(self, step: int, image_size: tuple[int, int]) -> transforms.GeoTransform:
        """One g per step: kind uniform over equi.kinds, then its parameters, from a (seed, step) generator."""
        equi = self.cfg.equi
        gen = torch.Generator().manual_seed(step_seed(self.seed, step))
        kinds = tuple(equi.kinds)
        kind = kinds[int(torch.randint(len(kinds), (), generator=gen))]
        return transforms.sample(kind, image_size=(int(image_size[0]), int(image_size[1])),
                                 stride=self.adapter.stride, generator=gen, ranges=dict(equi.ranges) or None)

    def _query_targets(self, targets: list[dict], indices, B: int, Q: int, device: torch.device):
        """query_labels [B,Q] (matched stuff class, else -1) and query_mask [B,Q] (None = all queries)."""
        labels = torch.full((B, Q), -1, dtype=torch.long, device=device)
        matched = torch.zeros(B, Q, dtype=torch.bool, device=device)
        for b, (qi, ti) in enumerate(indices or []):
            qi = qi.to(device)
            matched[b, qi] = True
            if self.stuff_classes:
                lab = targets[b]["labels"].to(device)[ti.to(device)]
                stuff = torch.isin(lab, torch.tensor(self.stuff_classes, device=device))
                labels[b, qi[stuff]] = lab[stuff]
        return labels, (matched if self.cfg.inter.queries == "matched" else None)

    def inter_loss(self, outputs: dict, targets: list[dict], indices) -> torch.Tensor:
        """Unweighted L_inter: this batch's pixels are sampled (kept for after_step), gathered across ranks and
        used with the memory as negatives; mean over the layers named by inter.layers."""
        inter, ad = self.cfg.inter, self.adapter
        feats = ad.features(outputs)
        memory = self._ensure_memory(feats.shape[1], feats.device)
        if any("image_id" not in t for t in targets):
            raise KeyError("the inter-scene loss needs targets[i]['image_id'] to exclude each image's own pixels")
        masks, labels = [], []
        for t in targets:
            keep = ~t["iscrowd"].bool() if "iscrowd" in t else torch.ones(len(t["labels"]), dtype=torch.bool)
            masks.append(t["masks"][keep.to(t["masks"].device)])
            labels.append(t["labels"][keep.to(t["labels"].device)])
        image_ids = torch.tensor([int(t["image_id"]) for t in targets], device=feats.device)
        self._pending = memory.gather(memory.sample_pixels(feats.detach(), masks, labels, image_ids))
        negatives = [memory.segment(), Segment(self._pending["features"], self._pending["labels"],
                                               self._pending["image_ids"])]
        layers = ad.layers(outputs, inter.layers)
        B, Q = ad.embed(layers[-1]).shape[:2]
        q_labels, q_mask = self._query_targets(targets, indices, B, Q, feats.device)
        vals = [inter_mask_loss(ad.embed(out), negatives, query_labels=q_labels, image_ids=image_ids,
                                query_mask=q_mask, alpha=inter.alpha, gamma=inter.gamma, chunk=inter.chunk,
                                logits_fn=ad.logits_fn) for out in layers]
        return sum(vals) / len(vals)

    def equi_loss(self, model: Callable, images: torch.Tensor, outputs: dict, targets: list[dict],
                  step: int) -> torch.Tensor:
        """Unweighted L_equi for this step's g (or the as-augmentation control, see `_augmentation_loss`)."""
        g = self.last_transform = self.draw_transform(step, images.shape[-2:])
        out_g = model(g.image(images))
        # the control and Eq. 8 share one criterion, so the rows differ only in the features (METHOD §4)
        crit = functools.partial(self.base.mask_loss, with_class=self.cfg.equi.class_loss or
                                 self.cfg.equi.as_augmentation)
        return equivariance_loss(out_g, self.adapter.features(outputs), targets, g, mask_criterion=crit,
                                 as_augmentation=self.cfg.equi.as_augmentation, adapter=self.adapter)

    # -- public ------------------------------------------------------------------------------------------
    def __call__(self, model: Callable, images: torch.Tensor, targets: list[dict], *, step: int) -> dict:
        outputs = model(images)
        res = self.base(outputs, targets, return_indices=True)
        losses, indices = (dict(res[0]), res[1]) if isinstance(res, tuple) else (dict(res), None)
        if self.cfg.inter.enabled:
            losses["loss_inter"] = self.cfg.inter.weight * self.inter_loss(outputs, targets, indices)
        if self.cfg.equi.enabled:
            losses["loss_equi"] = self.cfg.equi.weight * self.equi_loss(model, images, outputs, targets, step)
        return losses

    def after_step(self) -> None:
        """Enqueue the pixels sampled by the last call (METHOD §3: after the step's losses)."""
        if self._pending is not None and self.memory is not None:
            self.memory.push_sampled(self._pending)
        self._pending = None

    def state_dict(self) -> dict[str, Any]:
        return {"memory": None if self.memory is None else self.memory.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mem = state.get("memory")
        if mem is not None and self.memory is None:
            self.memory = PixelMemory(mem["capacity"], mem["dim"], pixels_per_instance=mem["pixels_per_instance"])
        if mem is not None:
            self.memory.load_state_dict(mem)
