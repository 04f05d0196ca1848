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
from .losses import image_generators
from .transforms import transform_targets, valid_region
from .utils import all_gather_cat, all_reduce_sum, step_seed, world_size

__all__ = ["DotProductAdapter", "IUQCriterion", "PixelMemory", "Segment", "TwoViews", "equivariance_loss",
           "inter_mask_loss", "inter_mask_loss_reference", "set_compile", "step_seed", "transform_targets",
           "valid_region"]

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
        return Segment(self.features, self.labels, self.image_ids, self.positions)

    def to(self, device: torch.device | str) -> PixelMemory:
        self._buf = {k: v.to(device) for k, v in self._buf.items()}
        return self

    # -- sampling ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_pixels(self, features: torch.Tensor, masks: list[torch.Tensor], labels: list[torch.Tensor],
                      image_ids: list[int] | torch.Tensor, *,
                      generator: torch.Generator | list | None = None) -> dict[str, torch.Tensor]:
        """Instance-balanced pixels of a batch: features [B,C,h,w]; masks[b] [K_b,H',W'] bool (any resolution
        with the features' aspect, nearest-downsampled to (h, w)); labels[b] [K_b]; image_ids [B];
        generator: one for the batch or one per image (keyed draws, identical on any DDP rank).

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
            gen = generator[b] if isinstance(generator, (list, tuple)) else generator
            dev = gen.device if gen is not None else small.device
            small = small.to(dev).reshape(m.shape[0], h * w).bool()                      # [K,hw]
            n = small.sum(1)                                                             # [K]
            # Random keys, background last: the k smallest are a uniform subset of the instance's pixels,
            # in random order; fewer than k pixels -> index uniformly into the first n (with replacement).
            keys = torch.rand(small.shape, generator=gen, device=dev).masked_fill(~small, 2.0)
            first = keys.topk(min(k_ppi, h * w), dim=1, largest=False).indices           # [K,k]
            u = torch.rand(m.shape[0], k_ppi, generator=gen, device=dev)
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
        self.push_sampled(sampled := self.gather(self.sample_pixels(features, masks, labels, image_ids,
                                                                    generator=generator)))
        return sampled

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


# ------------------------------------------------------------------------------------------ criterion
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


class IUQCriterion:
    """L = L_intra + w_inter L_inter + lambda L_equi (METHOD §5) around ANY base criterion.

    base_criterion(outputs, targets, *, return_indices=True) -> (weighted losses dict, final-layer indices
    [(index_q, index_t)] per image); its .mask_loss is the equivariance criterion. adapter: how to read E, F
    and mask logits (DotProductAdapter by default). stuff_classes: classes whose matched queries get stuff
    targets in the inter loss (panoptic). seed: the train seed; with the step it keys g and every random draw.
    crit(model, images, targets, *, step) -> weighted terms (base + "loss_inter" + "loss_equi"); total = sum.
    crit.after_step() enqueues this step's pixels into crit.memory (built at the first step unless mask_dim).
    """

    def __init__(self, base_criterion: Callable, iuq_cfg: IUQConfig, *, adapter: DotProductAdapter | None = None,
                 stuff_classes: tuple[int, ...] | list[int] = (), seed: int = 0, mask_dim: int | None = None):
        self.base, self.cfg, self.adapter = base_criterion, iuq_cfg, adapter or DotProductAdapter()
        self.stuff_classes, self.seed = tuple(int(c) for c in stuff_classes), int(seed)
        if iuq_cfg.inter.queries not in ("all", "matched") or iuq_cfg.inter.layers not in ("last", "all"):
            raise ValueError(f"iuq.inter.queries must be all|matched and iuq.inter.layers last|all, not "
                             f"{iuq_cfg.inter.queries!r}, {iuq_cfg.inter.layers!r}")
        self.memory: PixelMemory | None = None
        self._pending: list[dict[str, torch.Tensor]] = []             # this step's gathered pixel samples
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
        for part in (self.base, self.memory):
            if hasattr(part, "to"):
                part.to(device)
        return self

    # -- pieces ------------------------------------------------------------------------------------------
    def draw_transform(self, step: int, image_size: tuple[int, int]) -> transforms.GeoTransform:
        """One g per step: kind uniform over equi.kinds, then its parameters, from a (seed, step) generator."""
        equi, gen = self.cfg.equi, torch.Generator().manual_seed(step_seed(self.seed, step))
        kind = tuple(equi.kinds)[int(torch.randint(len(equi.kinds), (), generator=gen))]
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

    def keyed(self, targets: list[dict], step: int, device: torch.device) -> list[dict]:
        """targets with targets[b]["generator"] seeded from (seed, step, image id): the matcher's, the losses'
        and the memory's random draws for an image are then the same on any DDP rank or micro-batch."""
        return [{**t, "generator": torch.Generator(device).manual_seed(
            step_seed(step_seed(self.seed, step), int(t.get("image_id", b))))} for b, t in enumerate(targets)]

    def inter_loss(self, outputs: dict, targets: list[dict], indices, micro_batches: float = 1.0) -> torch.Tensor:
        """Unweighted L_inter: this batch's pixels are sampled (kept for after_step), gathered across ranks and
        used with the memory as negatives; mean over the layers named by inter.layers. The summed focal loss
        is divided by the kept pairs summed over ranks / world size (x micro_batches: a micro-batch's share)."""
        inter, ad = self.cfg.inter, self.adapter
        feats = ad.features(outputs)
        memory = self._ensure_memory(feats.shape[1], feats.device)
        if any("image_id" not in t for t in targets):
            raise KeyError("the inter-scene loss needs targets[i]['image_id'] to exclude each image's own pixels")
        keeps = [~t["iscrowd"].bool() if "iscrowd" in t else torch.ones(len(t["labels"]), dtype=torch.bool)
                 for t in targets]                                                  # crowd pixels are not negatives
        masks = [t["masks"][k.to(t["masks"].device)] for t, k in zip(targets, keeps)]
        labels = [t["labels"][k.to(t["labels"].device)] for t, k in zip(targets, keeps)]
        image_ids = torch.tensor([int(t["image_id"]) for t in targets], device=feats.device)
        sample = memory.gather(memory.sample_pixels(feats.detach(), masks, labels, image_ids,
                                                    generator=image_generators(targets)))
        self._pending.append(sample)
        negatives = [memory.segment(), Segment(sample["features"], sample["labels"], sample["image_ids"],
                                               sample["positions"])]
        layers = ad.layers(outputs, inter.layers)
        B, Q = ad.embed(layers[-1]).shape[:2]
        q_labels, q_mask = self._query_targets(targets, indices, B, Q, feats.device)
        pad = ad.query_mask(outputs)                                                   # [B,Q] False = padding
        q_mask = pad if q_mask is None else (q_mask if pad is None else q_mask & pad.to(q_mask.device))
        def norm(count: int) -> float:          # sum over ranks / world: DDP's gradient mean == one process
            total = all_reduce_sum(torch.tensor([float(count)], dtype=torch.float64, device=feats.device))
            return float(total) * micro_batches / world_size()
        vals = [inter_mask_loss(ad.embed(out), negatives, query_labels=q_labels, image_ids=image_ids,
                                query_mask=q_mask, alpha=inter.alpha, gamma=inter.gamma, chunk=inter.chunk,
                                logits_fn=ad.logits_fn, normalizer=norm) for out in layers]
        return sum(vals) / len(vals)

    def equi_loss(self, out_g: dict, outputs: dict, targets: list[dict], g: transforms.GeoTransform,
                  step_targets: list[dict] | None = None) -> torch.Tensor:
        """Unweighted L_equi for g, out_g = model(g(I)) (or the as-augmentation control: f(g(I)), class + mask);
        step_targets: count the masks normalising it over the whole step (gradient accumulation)."""
        # the control and Eq. 8 share one criterion, so the rows differ only in the features (METHOD §4)
        crit = functools.partial(self.base.mask_loss, with_class=self.cfg.equi.class_loss or
                                 self.cfg.equi.as_augmentation)
        if step_targets is not None:
            crit = functools.partial(crit, norm_targets=transform_targets(step_targets, g))
        return equivariance_loss(out_g, self.adapter.features(outputs), targets, g, mask_criterion=crit,
                                 as_augmentation=self.cfg.equi.as_augmentation, adapter=self.adapter,
                                 detach_features=self.cfg.equi.detach_features)

    # -- public ------------------------------------------------------------------------------------------
    def __call__(self, model: Callable, images: torch.Tensor, targets: list[dict], *, step: int,
                 step_targets: list[dict] | None = None) -> dict:
        """model: the segmenter or TwoViews(segmenter) (also inside DDP: both views in one DDP forward).
        step_targets: this rank's targets of the whole step split into micro-batches (gradient accumulation):
        the normalisers then cover the step, so the micro-batch losses add up to the step's."""
        g = self.last_transform = self.draw_transform(step, images.shape[-2:]) if self.cfg.equi.enabled else None
        images_g = None if g is None else g.image(images)
        targets = self.keyed(targets, step, images.device)
        outputs, out_g = (model(images, images_g) if _two_views(model)
                          else (model(images), None if g is None else model(images_g)))
        norm = {} if step_targets is None else {"norm_targets": step_targets}
        outputs = self.adapter.assign(outputs, targets)
        res = self.base(outputs, targets, return_indices=True, **norm)
        losses, indices = (dict(res[0]), res[1]) if isinstance(res, tuple) else (dict(res), None)
        if self.cfg.inter.enabled:
            micro = 1.0 if step_targets is None else len(step_targets) / max(len(targets), 1)
            losses["loss_inter"] = self.cfg.inter.weight * self.inter_loss(outputs, targets, indices, micro)
        if g is not None:
            losses["loss_equi"] = self.cfg.equi.weight * self.equi_loss(out_g, outputs, targets, g, step_targets)
        return losses

    def after_step(self, *, push: bool = True) -> None:
        """Enqueue every micro-batch's sampled pixels (METHOD §3: after the losses); push=False drops them."""
        for sample in self._pending if push and self.memory is not None else []:
            self.memory.push_sampled(sample)
        self._pending = []

    def state_dict(self) -> dict[str, Any]:
        return {"memory": None if self.memory is None else self.memory.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (mem := state.get("memory")) is not None:
            if self.memory is None:      # (an empty PixelMemory is falsy: test identity, not truth)
                self.memory = PixelMemory(mem["capacity"], mem["dim"], pixels_per_instance=mem["pixels_per_instance"])
            self.memory.load_state_dict(mem)
