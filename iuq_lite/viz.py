"""Drawing helpers. Pure `render_*` functions return arrays ([H,W,3] float in [0,1]); `show_*` draw them."""
from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def palette(n: int, *, seed: int = 0) -> np.ndarray:
    """n distinct, stable instance colours [n,3] in [0,1] (golden-ratio hues)."""
    hues = (np.arange(n) * 0.618033988749895 + 0.1 * seed) % 1.0
    return np.array([colorsys.hsv_to_rgb(h, 0.85, 0.95) for h in hues]).reshape(n, 3)


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().float().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float32)


def to_numpy_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[3,H,W] tensor or [H,W,3] array in [0,1] -> [H,W,3] float array."""
    if torch.is_tensor(image) and image.ndim == 3 and image.shape[0] in (1, 3):
        image = image.permute(1, 2, 0)
    image = _np(image)
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
    return np.clip(image, 0, 1)


def render_instances(image, masks, *, colors: np.ndarray | None = None, alpha: float = 0.55,
                     outline: bool = True) -> np.ndarray:
    """Overlay instance masks [K,H,W] (bool) on an image; colour k = colors[k] (default palette(K))."""
    out = to_numpy_image(image).copy()
    masks = _np(masks) != 0                                                    # [K,H,W] bool
    colors = palette(len(masks)) if colors is None else np.asarray(colors)
    for k, m in enumerate(masks):
        out[m] = (1 - alpha) * out[m] + alpha * colors[k % len(colors)]
        if outline:
            edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
            out[edge] = colors[k % len(colors)]
    return out


def render_heatmap(values: torch.Tensor | np.ndarray, *, cmap: str = "magma", vmin: float = 0.0,
                   vmax: float = 1.0) -> np.ndarray:
    """[H,W] values -> [H,W,3] colours."""
    import matplotlib
    v = np.clip((_np(values) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    return matplotlib.colormaps[cmap](v)[..., :3]


def show_grid(panels: Sequence[np.ndarray], *, titles: Sequence[str] | None = None, ncols: int | None = None,
              size: float = 2.4, suptitle: str | None = None):
    """Draw [H,W,3] panels in a grid; returns the matplotlib Figure."""
    import matplotlib.pyplot as plt
    n = len(panels)
    ncols = ncols or n
    nrows = -(-n // ncols)
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


def draw_diagram(boxes: dict[str, tuple], arrows: Sequence[tuple], *, size: tuple[float, float] = (12, 5),
                 title: str | None = None):
    """Box-and-arrow diagram (1.8 x 0.72 boxes, data units; the canvas fits the boxes); returns the Figure.
    boxes: {key: (x_centre, y_centre, text, colour)}; arrows: (from_key, to_key, label or "", colour).
    Arrows run between box edges (matplotlib shrinks them to the patches); labels sit at the midpoint."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    fig, ax = plt.subplots(figsize=size)
    xs, ys = [b[0] for b in boxes.values()], [b[1] for b in boxes.values()]
    ax.set_xlim(min(xs) - 1.0, max(xs) + 1.0)
    ax.set_ylim(min(ys) - 0.5, max(ys) + 0.5)
    ax.axis("off")
    patches = {}
    for key, (x, y, text, color) in boxes.items():
        ax.text(x, y, text, ha="center", va="center", fontsize=8.5, zorder=3)
        patches[key] = FancyBboxPatch((x - 0.9, y - 0.36), 1.8, 0.72, boxstyle="round,pad=0.05", fc=color,
                                      ec="0.3", zorder=2)
        ax.add_patch(patches[key])
    for src, dst, label, color in arrows:
        (x0, y0), (x1, y1) = boxes[src][:2], boxes[dst][:2]
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), patchA=patches[src], patchB=patches[dst],
                                     arrowstyle="-|>", mutation_scale=12, color=color, lw=1.4, zorder=1))
        if label:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, label, ha="center", va="center", fontsize=7.5, color=color,
                    zorder=4, bbox={"fc": "white", "ec": "none", "alpha": 0.85, "pad": 0.5})
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def method_schematic(*, inter_weight: float | str = "w", equi_weight: float | str = "λ"):
    """The IUQ method in one picture (METHOD §1-§5): the intra-scene loss (blue rows = the base model, all
    that runs at inference), the inter-scene loss against the pixel memory (Eq. 5, orange) and the
    equivariance loss (Eq. 8, green). Returns the Figure."""
    base, inter, equi, loss = "#dbe7f5", "#fde2c4", "#d5efd2", "#f3d1d1"
    boxes = {
        "Mem": (7.6, 6.4, "Mem [M,C]: F-pixels of\nother images (stop-grad)", inter),
        "dec": (3.0, 5.0, "query decoder\n+ mask MLP", base), "E": (5.3, 5.0, "E   [B,Q,C]", base),
        "EMem": (7.6, 5.0, "E·Memᵀ  [B,Q,M]", inter),
        "Linter": (10.6, 5.0, f"L_inter (Eq. 5) x {inter_weight}\nfocal loss, target 0", loss),
        "I": (0.9, 3.6, "image I", base), "f": (3.0, 3.6, "f: backbone +\npixel decoder", base),
        "F": (5.3, 3.6, "F = f(I)\n[B,C,h,w]", base), "M": (7.6, 3.6, "masks E·F\n[B,Q,h,w]", base),
        "Lintra": (10.6, 3.6, "L_intra: Hungarian,\nCE + BCE + dice", loss),
        "gI": (0.9, 2.0, "g(I)", equi), "fg": (3.0, 2.0, "same model\non g(I)", equi),
        "Eg": (5.3, 2.0, "E^g  [B,Q,C]", equi), "EgF": (7.6, 2.0, "E^g · g(F)\n[B,Q,h',w']", equi),
        "Lequi": (10.6, 2.0, f"L_equi (Eq. 8) x {equi_weight}\nBCE + dice vs g(masks)", loss),
    }
    grey, orange, green = "0.3", "#c66a00", "#2e7d32"
    arrows = [("I", "f", "", grey), ("f", "F", "", grey), ("f", "dec", "multi-scale", grey), ("dec", "E", "", grey),
              ("F", "M", "", grey), ("E", "M", "einsum", grey), ("M", "Lintra", "", grey),
              ("E", "EMem", "", orange), ("Mem", "EMem", "", orange), ("EMem", "Linter", "", orange),
              ("I", "gI", "g: flip | crop", green), ("gI", "fg", "", green), ("fg", "Eg", "", green),
              ("Eg", "EgF", "", green), ("F", "EgF", "g(F)", green), ("EgF", "Lequi", "", green)]
    return draw_diagram(boxes, arrows, title="IUQ = three training losses; inference runs the blue boxes only")


def match_colors(iou: np.ndarray, gt_colors: np.ndarray, *, threshold: float = 0.5) -> np.ndarray:
    """Colours [P,3] for P predictions from their IoU [P,G] with G ground-truth instances: the colour of the
    best-overlapping GT instance when that IoU >= threshold (so one object has one colour across panels),
    else a distinct washed-out grey (palette hues at low saturation, unlike any GT colour)."""
    iou = np.asarray(iou, dtype=np.float64)                  # [P,G]
    out = np.empty((len(iou), 3))
    greys = 0.45 + 0.2 * palette(len(iou), seed=3)        # mostly grey with a hue hint: [0.45, 0.65]
    for k, row in enumerate(iou):
        best = int(row.argmax()) if row.size else -1
        out[k] = gt_colors[best] if best >= 0 and row[best] >= threshold else greys[k]
    return out


def render_overlay(image, values: torch.Tensor | np.ndarray, *, cmap: str = "magma", alpha: float = 0.65,
                   vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """A heat map [h,w] (any resolution with the image's aspect; nearest-upsampled) blended over an image
    [3,H,W] or [H,W,3]: out = (1 - alpha * v) * image + alpha * v * colour(v), so v = 0 leaves the image."""
    img = to_numpy_image(image)
    v = _np(values)
    ry, rx = img.shape[0] // v.shape[0], img.shape[1] // v.shape[1]
    v = np.repeat(np.repeat(v, ry, 0), rx, 1)[:img.shape[0], :img.shape[1]]                   # [H,W]
    w = alpha * np.clip((v - vmin) / max(vmax - vmin, 1e-12), 0, 1)[..., None]
    return (1 - w) * img + w * render_heatmap(v, cmap=cmap, vmin=vmin, vmax=vmax)


def pca_basis(features: torch.Tensor, *, k: int = 3) -> dict[str, torch.Tensor]:
    """The top-k principal directions of feature maps [C,h,w] or [B,C,h,w] (pixels as samples), with the
    1st/99th percentiles of the projections, so that several maps can be drawn in ONE colour space."""
    x = features.detach().float().cpu()
    x = x.reshape(-1, *x.shape[-3:]).permute(0, 2, 3, 1).reshape(-1, x.shape[-3])              # [N,C]
    mean = x.mean(0)
    comps = torch.linalg.svd(x - mean, full_matrices=False).Vh[:k]                             # [k,C]
    proj = (x - mean) @ comps.T                                                                 # [N,k]
    return {"mean": mean, "components": comps, "lo": proj.quantile(0.01, dim=0),
            "hi": proj.quantile(0.99, dim=0)}


def render_pca(features: torch.Tensor, basis: dict[str, torch.Tensor], *,
               valid: torch.Tensor | None = None) -> np.ndarray:
    """Feature map [C,h,w] -> [h,w,3] colours: its projection on pca_basis(...)'s 3 directions, scaled by the
    basis's percentiles; pixels where `valid` [h,w] is False are black."""
    f = features.detach().float().cpu()
    proj = torch.einsum("chw,kc->hwk", f - basis["mean"][:, None, None], basis["components"])  # [h,w,3]
    rgb = ((proj - basis["lo"]) / (basis["hi"] - basis["lo"]).clamp(min=1e-12)).clamp(0, 1)
    if valid is not None:
        rgb = rgb * valid.cpu()[..., None]
    return rgb.numpy()


def explore(render, **controls):
    """ipywidgets.interact over a pure `render(**values)` that draws a matplotlib figure (its return value is
    not displayed again); controls are ipywidgets or interact abbreviations. Returns the interactive widget.
    It renders at once with the initial values; ipywidgets SHOWS (does not raise) a callback's error, so call
    `render` directly once in a plain cell to test it."""
    import ipywidgets as widgets

    def draw(**values) -> None:  # drops render's return value, which interact would display again
        render(**values)

    return widgets.interact(draw, **controls).widget


def mean_sd(v) -> tuple[float | None, float | None]:
    """A table/bar value: float, (mean, sd) or None -> (mean, sd or None)."""
    if v is None:
        return None, None
    return (float(v[0]), float(v[1])) if isinstance(v, (tuple, list)) else (float(v), None)


def render_delta_table(rows: dict[str, dict], *, columns: Sequence[str], headers: Sequence[str] | None = None,
                       reference: str | None = None, digits: int = 1) -> str:
    """Markdown table in the style of the paper's Table S1. rows: {name: {column: value}}, value a float, a
    (mean, sd) pair (shown "m ± s") or None/missing ("–"). Rows other than `reference` (default: the first)
    add their difference of means to it, "↑d" or "↓d". Pure: returns the text."""
    reference = reference or next(iter(rows))
    head = ["", *(headers or columns)]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(columns) + "|"]
    for name, vals in rows.items():
        cells = [name]
        for c in columns:
            (m, s), (ref, _) = mean_sd(vals.get(c)), mean_sd(rows[reference].get(c))
            text = "–" if m is None else f"{m:.{digits}f}" + ("" if s is None else f" ± {s:.{digits}f}")
            if m is not None and ref is not None and name != reference:
                d = round(m - ref, digits)
                text += f" ({'↑' if d >= 0 else '↓'}{abs(d):.{digits}f})"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def show_grouped_bars(values: dict[str, dict], *, ylabel: str = "", title: str | None = None,
                      colors: Sequence | None = None, size: tuple[float, float] = (10, 3.6)):
    """Grouped bar chart: one group per category (the inner keys, in the first series' order), one bar per
    series (the outer keys); value a float, a (mean, sd) pair (error bar) or None (no bar, "n/a"). Each bar is
    labelled with its value. Returns the Figure."""
    import matplotlib.pyplot as plt
    cats = list(next(iter(values.values())))
    colors = palette(len(values)) if colors is None else colors
    width = 0.8 / len(values)
    fig, ax = plt.subplots(figsize=size)
    for i, (series, vals) in enumerate(values.items()):
        for j, cat in enumerate(cats):
            m, s = mean_sd(vals.get(cat))
            x = j - 0.4 + width * (i + 0.5)
            if m is None:
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7)
                continue
            ax.bar(x, m, width, yerr=s, color=colors[i], capsize=3, label=series if j == 0 else None)
            ax.text(x, m + (s or 0), f"{m:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(cats)), cats, rotation=15)
    ax.set_ylabel(ylabel)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path, *, dpi: int = 90) -> Path:
    """Write a matplotlib Figure to `path` (format from its suffix) atomically, then close it."""
    import matplotlib.pyplot as plt
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
    plt.close(fig)
    return path


def show_learning_curves(curves: dict[str, list[dict]], *, size: tuple[float, float] = (10, 3.4),
                         title: str | None = None):
    """AP against training steps and against minutes, one line per run: curves {label: [{"step", "minutes",
    "AP", "final"?}, ...]} as results/*.json records them (`experiments._record`). The final point (all val
    images) is drawn as a filled marker, the intermediate ones (a subset) as open ones. Returns the Figure."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=size, sharey=True)
    for color, (label, pts) in zip(palette(max(len(curves), 1)), curves.items()):
        for ax, key in zip(axes, ("step", "minutes")):
            ax.plot([p[key] for p in pts], [p["AP"] for p in pts], "-o", color=color, mfc="none", label=label)
            ax.plot([p[key] for p in pts if p.get("final")], [p["AP"] for p in pts if p.get("final")], "o",
                    color=color)
    for ax, xlabel in zip(axes, ("training steps", "minutes (one thread, two runs sharing 2 cores)")):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mask AP")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
