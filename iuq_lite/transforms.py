"""Geometric transforms g with one shared parameter set for images, masks and features (METHOD §4).

The equivariance loss compares queries of `g(I)` against `g(F)`, the transformed features of the original
image, so the same g must act identically on the image (stride 1), on GT masks and on the stride-s feature
map::

    g = iuq.transforms.sample("crop", image_size=(H, W), stride=4, generator=gen)
    x_g = g.image(images)              # [B,3,H',W']  the second forward's input
    f_g = g.features(F)                # [B,C,H'/4,W'/4], keeps the autograd graph of F
    m_g = g.masks(masks)               # [K,H',W'] bool, nearest
    ok = g.valid(F.shape[-2:])         # [H'/4,W'/4] bool, False where the warp left the source canvas

Kinds and their parameters (``g.params``; all pixel numbers at image resolution):

- ``hflip`` ``{}``: mirrors the width axis; an involution.
- ``crop`` ``{"top", "left", "height", "width"}``: every number a multiple of ``stride``, so cropping a
  stride-s map is exact; the output is NOT resized (the model runs on the smaller crop, and g(F) has exactly
  the size of f(g(I)) at stride s). One side ratio r ~ U(lo, hi) for both sides (aspect kept; our choice).
- ``rotate`` ``{"angle"}`` (degrees; positive = counter-clockwise as displayed, y pointing down) and
  ``scale`` ``{"scale"}`` (>1 zooms in, <1 zooms out): affine warps about the canvas centre onto the SAME
  canvas size, via ``F.affine_grid``/``F.grid_sample(align_corners=False)`` in normalised coordinates, so
  one theta acts identically at every resolution with the image's aspect ratio. Pixels whose source lies
  outside the canvas are zero and invalid. Angle ~ U(lo, hi) with a random sign (our choice: the paper's
  [0°, 60°] names a magnitude); scale is log-uniform in [lo, hi] so zooming in and out are equally likely.
- ``identity`` ``{}``.

Every map may be given at any resolution with the image's aspect ratio (the crop box must land on whole
pixels there); ``stride`` is the alignment of crops, so a g sampled with stride 32 crops stride-4 and
stride-8 maps exactly too. All randomness comes from the ``generator`` argument (DDP ranks pass a
step-keyed generator so that every rank draws the same g).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

KINDS = ("hflip", "crop", "rotate", "scale", "identity")
DEFAULT_RANGES: dict[str, tuple[float, float]] = {"crop": (0.6, 1.0), "rotate": (0.0, 60.0), "scale": (0.5, 2.0)}


@dataclass(frozen=True)
class GeoTransform:
    """One geometric transform with fixed parameters. `image_size` = (H, W) of the images it was sampled
    for (the padded batch size); `stride` = crop alignment in image pixels. Construct with `sample`, or
    directly, e.g. ``GeoTransform("rotate", {"angle": 30.0}, (64, 64), 4)``."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    image_size: tuple[int, int] = (0, 0)
    stride: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown transform kind {self.kind!r}; kinds: {', '.join(KINDS)}")
        H, W = self.image_size
        if H <= 0 or W <= 0 or self.stride <= 0:
            raise ValueError(f"image_size {self.image_size} and stride {self.stride} must be positive")
        if self.kind == "crop":
            t, l, h, w = (int(self.params[k]) for k in ("top", "left", "height", "width"))
            if h <= 0 or w <= 0 or t < 0 or l < 0 or t + h > H or l + w > W:
                raise ValueError(f"crop box {self.params} does not fit in image_size {self.image_size}")

    # ---------------------------------------------------------------------------------------- geometry
    def _scale_to(self, shape: tuple[int, int]) -> float:
        """Resolution factor of a map of spatial `shape` relative to image_size (1/stride for features)."""
        H, W = self.image_size
        h, w = int(shape[0]), int(shape[1])
        if h * W != w * H:  # a different aspect would silently distort warps and crops
            raise ValueError(f"map of spatial size {(h, w)} does not have the aspect of image_size {(H, W)}")
        return h / H

    def _box(self, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """The crop box (top, left, height, width) at the resolution of `shape`; must be whole pixels."""
        f = self._scale_to(shape)
        box = [self.params[k] * f for k in ("top", "left", "height", "width")]
        if any(abs(b - round(b)) > 1e-6 for b in box):
            raise ValueError(f"crop box {self.params} (image pixels) is not whole pixels at map size "
                             f"{tuple(shape)} (factor {f:g}); crops are aligned to stride {self.stride}")
        t, l, h, w = (round(b) for b in box)
        return t, l, h, w

    def _theta(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """[1,2,3] affine_grid matrix: OUTPUT normalised (x, y) -> SOURCE normalised (x, y).

        In pixel units about the centre the forward map is p_out = s R(a) p_src, so the sampler needs
        p_src = R(-a) p_out / s. Normalised coordinates are pixels / (W/2, H/2); conjugating by that diagonal
        keeps the rotation rigid on non-square canvases.
        """
        a = math.radians(float(self.params.get("angle", 0.0)))
        s = float(self.params.get("scale", 1.0))
        H, W = self.image_size
        c, si = math.cos(a), math.sin(a)
        # R(a) with y down and positive = counter-clockwise on screen: x' = c x + s y, y' = -s x + c y;
        # its inverse R(-a) is the transpose.
        inv = [[c / s, -si / s], [si / s, c / s]]
        theta = [[inv[0][0], inv[0][1] * H / W, 0.0], [inv[1][0] * W / H, inv[1][1], 0.0]]
        return torch.tensor(theta, dtype=torch.float64).to(device=device, dtype=dtype)[None]

    def _grid(self, shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """[1,h,w,2] source sampling locations (normalised x, y) for an output map of spatial `shape`."""
        self._scale_to(shape)
        h, w = int(shape[0]), int(shape[1])
        return F.affine_grid(self._theta(dtype, device), [1, 1, h, w], align_corners=False)

    def _warp(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        """Affine-warp any [..., h, w] tensor on its own canvas; out-of-canvas pixels become 0."""
        lead, (h, w) = x.shape[:-2], x.shape[-2:]
        if x.numel() == 0:
            return x.clone()
        # All leading dims become channels of one sample: one theta, one grid for every map.
        flat = x.reshape(1, -1, h, w)
        grid = self._grid((h, w), flat.dtype, flat.device)
        # border padding + an explicit validity cut gives exact bilinear values up to the canvas edge
        # (zeros padding would fade the last half pixel) and exact zeros outside it.
        out = F.grid_sample(flat, grid, mode=mode, padding_mode="border", align_corners=False)
        out = out * self.valid((h, w), device=flat.device).to(out.dtype)
        return out.reshape(*lead, h, w)

    # ------------------------------------------------------------------------------------------ public
    def out_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Spatial size (h', w') of the output for an input map of spatial size `shape` = (h, w)."""
        if self.kind == "crop":
            _, _, h, w = self._box(shape)
            return h, w
        self._scale_to(shape)
        return int(shape[0]), int(shape[1])

    def _apply(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"expected a tensor [..., h, w], got shape {tuple(x.shape)}")
        if self.kind == "identity":
            return x
        if self.kind == "hflip":
            return x.flip(-1)
        if self.kind == "crop":
            t, l, h, w = self._box(x.shape[-2:])
            return x[..., t:t + h, l:l + w]
        return self._warp(x, mode)

    def image(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B,3,H,W] (any [..., H, W] float) -> [B,3,H',W'], bilinear for warps."""
        return self._apply(x, "bilinear")

    def features(self, f: torch.Tensor) -> torch.Tensor:
        """Features [B,C,h,w] (h = H/stride) -> [B,C,h',w']; differentiable (slicing / grid_sample)."""
        return self._apply(f, "bilinear")

    def masks(self, m: torch.Tensor) -> torch.Tensor:
        """Masks [B,K,H,W] or [K,H,W] (bool, any resolution) -> same rank, bool; nearest for warps."""
        if self.kind in ("rotate", "scale"):
            return self._warp(m.float(), "nearest") > 0.5
        out = self._apply(m, "nearest")
        return out.bool() if m.dtype == torch.bool else out

    def masks_list(self, masks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-image masks [K_i,H,W] -> list of [K_i,H',W'] (empty instances are NOT dropped here)."""
        return [self.masks(m) for m in masks]

    def valid(self, shape: tuple[int, int], *, device: torch.device | str | None = None) -> torch.Tensor:
        """[h',w'] bool for the output of transforming a map of INPUT spatial size `shape` = (h, w):
        True where the output pixel's source lies inside the source canvas. All True for hflip, crop and
        identity (then [h',w'] = out_shape(shape)); for rotate/scale exact: |source coordinate| <= 1."""
        h, w = self.out_shape(shape)
        if self.kind not in ("rotate", "scale"):
            return torch.ones(h, w, dtype=torch.bool, device=device)
        grid = self._grid((h, w), torch.float64, torch.device(device or "cpu"))[0]  # [h,w,2]
        return (grid.abs() <= 1.0 + 1e-9).all(-1)

    def points(self, yx: torch.Tensor) -> torch.Tensor:
        """Source points [N,2] (y, x) in image pixels (pixel centres at i + 0.5) -> output points [N,2].
        The analytic forward map; the pixel maps above sample its inverse."""
        H, W = self.image_size
        y, x = yx[..., 0].double(), yx[..., 1].double()
        if self.kind == "hflip":
            x = W - x
        elif self.kind == "crop":
            y, x = y - self.params["top"], x - self.params["left"]
        elif self.kind in ("rotate", "scale"):
            a = math.radians(float(self.params.get("angle", 0.0)))
            s = float(self.params.get("scale", 1.0))
            dy, dx = y - H / 2, x - W / 2
            x = W / 2 + s * (math.cos(a) * dx + math.sin(a) * dy)
            y = H / 2 + s * (-math.sin(a) * dx + math.cos(a) * dy)
        return torch.stack([y, x], -1).to(yx.dtype if yx.is_floating_point() else torch.float64)


def _uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))


def sample(kind: str, *, image_size: tuple[int, int], stride: int, generator: torch.Generator,
           ranges: dict | None = None) -> GeoTransform:
    """Draw one transform of `kind` for images of `image_size` = (H, W) (divisible by `stride`).

    ranges: optional {"crop": (lo, hi) side ratio, "rotate": (lo, hi) degrees magnitude, "scale": (lo, hi)
    factor}; missing keys use DEFAULT_RANGES = {crop: (0.6, 1.0), rotate: (0, 60), scale: (0.5, 2.0)}.
    Only `generator` is consumed, so equal generator states give equal transforms.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown transform kind {kind!r}; kinds: {', '.join(KINDS)}")
    H, W = int(image_size[0]), int(image_size[1])
    if stride <= 0 or H % stride or W % stride:
        raise ValueError(f"image_size {(H, W)} must be divisible by stride {stride} (pad the batch first)")
    rng = {**DEFAULT_RANGES, **{k: tuple(v) for k, v in (ranges or {}).items()}}
    if kind in DEFAULT_RANGES:
        lo, hi = (float(v) for v in rng[kind])
        if not lo <= hi or (kind == "crop" and not 0 < lo <= hi <= 1) or (kind == "scale" and lo <= 0):
            raise ValueError(f"invalid range {rng[kind]} for {kind!r}")
    params: dict[str, Any] = {}
    if kind == "crop":
        r = _uniform(generator, lo, hi)
        # Sides rounded to the stride grid, at least one stride cell, at most the whole image.
        h = min(H, max(stride, round(r * H / stride) * stride))
        w = min(W, max(stride, round(r * W / stride) * stride))
        top = int(torch.randint(0, (H - h) // stride + 1, (), generator=generator)) * stride
        left = int(torch.randint(0, (W - w) // stride + 1, (), generator=generator)) * stride
        params = {"top": top, "left": left, "height": h, "width": w}
    elif kind == "rotate":
        magnitude = _uniform(generator, lo, hi)
        sign = 1.0 if float(torch.rand((), generator=generator)) < 0.5 else -1.0
        params = {"angle": sign * magnitude}
    elif kind == "scale":
        params = {"scale": math.exp(_uniform(generator, math.log(lo), math.log(hi)))}
    return GeoTransform(kind, params, (H, W), int(stride))


# ------------------------------------------------------------------------------------------ targets
def transform_targets(targets: list[dict], g: GeoTransform) -> list[dict]:
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


def valid_region(targets: list[dict], g: GeoTransform, image_size: tuple[int, int],
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
