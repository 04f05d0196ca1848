"""Drawing helpers. Pure `render_*` functions return arrays ([H,W,3] float in [0,1]); `show_*` draw them."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def palette(n: int, *, seed: int = 0) -> np.ndarray:
    """n distinct, stable instance colours [n,3] in [0,1] (golden-ratio hues)."""
    import colorsys
    hues = (np.arange(n) * 0.618033988749895 + 0.1 * seed) % 1.0
    return np.array([colorsys.hsv_to_rgb(h, 0.85, 0.95) for h in hues]).reshape(n, 3)


def to_numpy_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[3,H,W] tensor or [H,W,3] array in [0,1] -> [H,W,3] float array."""
    if torch.is_tensor(image):
        image = image.detach().float().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.transpose(1, 2, 0)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
    return np.clip(image, 0, 1)


def render_instances(image, masks, *, colors: np.ndarray | None = None, alpha: float = 0.55,
                     outline: bool = True) -> np.ndarray:
    """Overlay instance masks [K,H,W] (bool) on an image; colour k = colors[k] (default palette(K))."""
    out = to_numpy_image(image).copy()
    masks = masks.detach().cpu().numpy() if torch.is_tensor(masks) else np.asarray(masks)
    colors = palette(len(masks)) if colors is None else np.asarray(colors)
    for k, m in enumerate(masks.astype(bool)):
        out[m] = (1 - alpha) * out[m] + alpha * colors[k % len(colors)]
        if outline:
            edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
            out[edge] = colors[k % len(colors)]
    return out


def render_heatmap(values: torch.Tensor | np.ndarray, *, cmap: str = "magma", vmin: float = 0.0,
                   vmax: float = 1.0) -> np.ndarray:
    """[H,W] values -> [H,W,3] colours."""
    import matplotlib
    v = values.detach().float().cpu().numpy() if torch.is_tensor(values) else np.asarray(values, dtype=np.float32)
    v = np.clip((v - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    return matplotlib.colormaps[cmap](v)[..., :3]


def show_grid(panels: Sequence[np.ndarray], *, titles: Sequence[str] | None = None, ncols: int | None = None,
              size: float = 2.4, suptitle: str | None = None):
    """Draw [H,W,3] panels in a grid; returns the matplotlib Figure."""
    import matplotlib.pyplot as plt
    n = len(panels)
    ncols = ncols or n
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(panels[i], interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig
