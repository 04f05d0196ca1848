"""IUQCriterion: L = L_intra + w_inter L_inter + lambda L_equi (METHOD §5) around any base model's criterion.

    crit = iuq.iuq.IUQCriterion(base_criterion, cfg.iuq, seed=cfg.train.seed)
    losses = crit(model, images, targets, step=step)     # base terms + "loss_inter" + "loss_equi" (weighted)
    sum(losses.values()).backward(); opt.step()
    crit.after_step()                                    # enqueue this batch's instance pixels (METHOD §3)

The pieces: `inter_mask_loss` (METHOD §2, Eq. 5; inter.py), `PixelMemory` (§3; memory.py), `equivariance_loss`
(§4, Eq. 8; equivariance.py); how the criterion reads a model's outputs: its adapter (model/adapter.py).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from .. import transforms
from ..config import IUQConfig
from ..model.adapter import DotProductAdapter
from ..sampling import image_generators
from ..transforms import transform_targets
from ..utils import all_reduce_sum, step_seed, world_size
from .equivariance import _two_views, equivariance_loss
from .inter import Segment, inter_mask_loss
from .memory import PixelMemory


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
