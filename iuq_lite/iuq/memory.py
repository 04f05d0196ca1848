"""The pixel memory (METHOD §3): a FIFO ring buffer of detached instance pixels, the inter loss's negatives.

    memory = iuq.iuq.PixelMemory(capacity=20_000, dim=256, pixels_per_instance=50)
    memory.push(features, masks, labels, image_ids)     # [B,C,h,w]; per image [K,h,w] bool, [K]; [B]
    memory.features, memory.labels, memory.image_ids, memory.positions    # [M,C], [M], [M], [M,2]

IUQCriterion samples a batch's pixels during the step (the in-batch negatives) and enqueues them after it
(`push_sampled`), all-gathered across DDP ranks so every rank holds the same memory (MoCo-style).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..utils import all_gather_cat
from .inter import Segment

_KEYS = ("features", "labels", "image_ids", "positions")


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
