"""Point sampling (PointRend / Mask2Former) and keyed per-image random draws, shared by the matcher and the losses.

    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 112, 3.0, 0.75)  # [N,P,2]
    values = point_sample(masks, coords)           # masks [N,C,H,W] at ANY resolution -> [N,C,P]

Points are normalised (x, y) in [0, 1], so stride-4 predictions and full-resolution targets share them.
Keyed draws: when IUQCriterion gives every target a generator seeded from (seed, step, image id), an image's
random numbers do not depend on the batch it is in, so a DDP rank draws what a single process draws.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def point_sample(input: torch.Tensor, point_coords: torch.Tensor, *, mode: str = "bilinear") -> torch.Tensor:
    """Read input [N,C,H,W] at point_coords [N,P,2] (normalised (x, y) in [0, 1]) -> [N,C,P].

    align_corners=False: coordinate 0 is the left edge of the first pixel at ANY resolution, so one set of
    points addresses stride-4 predictions and full-resolution targets alike. padding_mode="border" (Mask2Former
    pads with zeros): a point in the outer half pixel reads the edge pixel instead of blending with 0, which
    for stride-4 logits would pull a 2-px frame of every image towards p = 0.5.
    """
    grid = (point_coords * 2.0).sub_(1.0).unsqueeze(2).to(input.dtype)     # [N,P,1,2] in [-1, 1]
    return F.grid_sample(input, grid, mode=mode, padding_mode="border", align_corners=False).squeeze(3)


def image_generators(targets: list[dict]) -> list[torch.Generator] | None:
    """Per-image generators (targets[b]["generator"], set by IUQCriterion from (seed, step, image id)) when
    every target has one, else None (draws then use the global RNG or an explicit generator)."""
    gens = [t.get("generator") for t in targets]
    return gens if gens and all(g is not None for g in gens) else None


def rand_rows(counts: list[int], shape: tuple[int, ...], device: torch.device,
              generators: list[torch.Generator] | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform [sum(counts), *shape]: the counts[b] rows of image b drawn from generators[b], so a DDP rank draws
    for an image exactly what a single process draws for it; generators None: one draw from `generator`."""
    if generators is None:
        return torch.rand(sum(counts), *shape, device=device, generator=generator)
    return torch.cat([torch.rand(n, *shape, device=device, generator=g) for n, g in zip(counts, generators)])


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of mask logits [N,1,P] -> [N,1,P]: -|logit| (highest at the decision boundary)."""
    return -logits.abs()


def get_uncertain_point_coords_with_randomness(
        coarse_logits: torch.Tensor, uncertainty_func: Callable[[torch.Tensor], torch.Tensor], num_points: int,
        oversample_ratio: float, importance_sample_ratio: float, *,
        valid_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        rand: Callable[[int], torch.Tensor] | None = None) -> torch.Tensor:
    """PointRend's importance sampling: coarse_logits [N,1,h,w] -> point coords [N,num_points,2] in [0, 1].

    Draw num_points * oversample_ratio uniform candidates, keep the importance_sample_ratio * num_points most
    uncertain ones, add uniform points for the rest. valid_fn(coords [N,S,2]) -> [N,S] (> 0 = valid), when
    given, ranks invalid candidates last so the uncertain points land inside the valid region.
    rand(S) -> [N,S,2] uniform points replaces torch.rand(..., generator=generator) (per-image streams).
    """
    n = coarse_logits.shape[0]
    dev = coarse_logits.device
    rand = rand or (lambda s: torch.rand(n, s, 2, device=dev, generator=generator))
    num_sampled = int(num_points * oversample_ratio)
    coords = rand(num_sampled)                                                            # [N,S,2]
    uncertainty = uncertainty_func(point_sample(coarse_logits, coords))[:, 0]             # [N,S]
    if valid_fn is not None:
        uncertainty = uncertainty.masked_fill(valid_fn(coords) <= 0, float("-inf"))
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(uncertainty, k=num_uncertain, dim=1, sorted=False).indices           # [N,k]
    coords = torch.gather(coords, 1, idx[..., None].expand(-1, -1, 2))                    # [N,k,2]
    if num_random > 0:
        coords = torch.cat([coords, rand(num_random)], dim=1)
    return coords
