"""The embedded dataset: procedural textured shapes in COCO-2017 layout (DESIGN §3).

    ann = iuq.data.shapes.generate("data/demo", split="val", num_images=100)   # -> data/demo/annotations/...
    paths = iuq.data.shapes.ensure_dataset(num_train=2000, num_val=1000)        # cached, file-locked

Each image holds MANY same-class, same-looking instances (4-14 from 1-3 classes; one class shares colour and
texture within an image, and with probability `class_textures` wears its dataset-wide signature look, else a
random one, so that shape alone must tell the class): the "query collapse" regime IUQ targets. Instances are
painted in depth order over a textured background; annotations are the VISIBLE parts as COCO RLE (polygons
cannot hold holes); instances with fewer than `min_area` visible pixels are dropped (counted in "info"). Each
annotation's extra "groups" list names its failure groups of the paper's Figure S3 (GROUPS), each driven by a
seeded probability knob. At 128 px no object is COCO-"large" (> 96^2): segm/APl is None on shapes.

Layout: ROOT/{split}2017/{id:012d}.png, ROOT/annotations/instances_{split}2017.json (and, with stuff=True,
ROOT/annotations/stuff_{split}2017.json: background regions of STUFF_NAMES, a hook for panoptic work).
Determinism: every image draws from its own stream np.random.default_rng([seed, crc32(split), index]), so val
never repeats train, images can be rendered in parallel, and the same arguments give byte-identical files.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import zlib
from collections import Counter
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
from scipy.ndimage import gaussian_filter

from ..utils import atomic_write_text
from ..utils import sha256_file as _sha256
from .format import encode_masks, rle_json, split_paths

GENERATOR_VERSION = "2"
CLASS_NAMES = ("circle", "square", "triangle", "star", "cross", "ellipse")
GROUPS = ("occluded_similar", "complex_topology", "small_blurry", "deformed", "transparent")
STUFF_NAMES = ("sky", "grass", "wall")
STUFF_ID_OFFSET = 100                    # stuff category ids are 101.. (thing ids are 1..K)
# Sizes are in pixels at 128 px and scale with image_size. Group probabilities are per instance; defaults
# give each group roughly 10-30 % of the instances (measured with `stats`).
DEFAULT_KNOBS: dict[str, Any] = {
    "num_classes": len(CLASS_NAMES), "min_instances": 4, "max_instances": 14, "max_classes_per_image": 3,
    "min_radius": 6.0, "max_radius": 22.0, "min_area": 10, "noise": 4.0,
    "occluded_similar": 0.12,            # P(placed deliberately overlapping a same-class instance)
    "complex_topology": 0.18,            # P(ring with a hole, or split into two parts)
    "small_blurry": 0.15,                # P(radius 3-5.5 px and Gaussian blur)
    "deformed": 0.15,                    # P(sinusoidal elastic warp)
    "transparent": 0.12,                 # P(alpha-blended at opacity 0.35-0.6)
    "class_textures": 0.8,               # P(a class wears its dataset-wide signature texture in an image)
    "stuff": False,
}
# (pattern kind, colour) per class: same-class instances look alike ACROSS images too (what Eq. 5 targets)
_SIGNATURES = [(0, (.95, .35, .3)), (1, (.3, .75, .95)), (2, (.95, .85, .25)), (3, (.55, .95, .4)), (1, (.85, .4, .9)),
               (0, (.95, .6, .2))]


# ------------------------------------------------------------------------------------------ rendering
def _gauge(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shape gauge on object-frame coords (radius 1): inside iff gauge <= 1; ~homogeneous of degree 1."""
    name = CLASS_NAMES[cls]
    if name in ("circle", "ellipse"):
        return np.sqrt(u * u + v * v)
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) / 0.85
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return np.minimum(np.maximum(au, av / 0.36), np.maximum(au / 0.36, av))
    theta = np.arctan2(v, u)
    if name == "triangle":  # regular triangle, circumradius 1.15: max of three half-plane gauges
        a = np.array([-np.pi / 2, np.pi / 6, 5 * np.pi / 6])[:, None, None]
        return (u * np.cos(a) + v * np.sin(a)).max(0) / (1.15 * 0.5)
    # star: 5 tips at radius 1.15, valleys at 0.5; triangle wave in angle
    t = np.abs(((5 * theta / (2 * np.pi)) % 1.0) - 0.5) * 2
    return np.sqrt(u * u + v * v) / (0.5 + 0.65 * t)


def _texture_params(rng: np.random.Generator, scale: float, signature: tuple | None = None) -> dict:
    """Random pattern and colours, or (signature = (kind, rgb)) the class's look with a little colour jitter."""
    c1 = rng.uniform(0.2, 1.0, 3)  # always drawn, so the stream does not depend on the signature
    c2 = c1 * rng.uniform(0.2, 0.6) if rng.random() < 0.5 else rng.uniform(0.0, 1.0, 3)
    kind = int(rng.integers(4))
    if signature is not None:
        kind, base = signature
        c1 = np.clip(np.array(base) + rng.uniform(-0.08, 0.08, 3), 0, 1)
        c2 = c1 * 0.35
    return {"kind": kind, "c1": c1, "c2": c2, "angle": rng.uniform(0, np.pi),
            "period": max(2.5, rng.uniform(3.0, 8.0) * scale)}


def _paint(tex: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Colours [h,w,3] of a texture at object-frame pixel coords x, y [h,w] (so patterns turn with the shape)."""
    ca, sa, p = math.cos(tex["angle"]), math.sin(tex["angle"]), tex["period"]
    a, b = x * ca + y * sa, -x * sa + y * ca
    kind = tex["kind"]
    if kind == 0:    # stripes
        t = 0.5 + 0.5 * np.sin(2 * np.pi * a / p)
    elif kind == 1:  # checker
        t = ((np.floor(a / p) + np.floor(b / p)) % 2).astype(np.float32)
    elif kind == 2:  # dots
        t = (((a % p) - p / 2) ** 2 + ((b % p) - p / 2) ** 2 < (0.3 * p) ** 2).astype(np.float32)
    else:            # concentric rings
        t = 0.5 + 0.5 * np.sin(2 * np.pi * np.sqrt(a * a + b * b) / p)
    return tex["c1"] * (1 - t[..., None]) + tex["c2"] * t[..., None]


def _background(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """[S,S,3] linear gradient between two dull colours plus three random low-frequency sinusoids."""
    c0, c1 = rng.uniform(0.05, 0.6, 3), rng.uniform(0.05, 0.6, 3)
    d = rng.uniform(0, 2 * np.pi)
    ramp = ((xx * math.cos(d) + yy * math.sin(d)) / size + 1) / 2
    img = c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]
    for _ in range(3):
        f, a, ph = rng.uniform(1, 6) * 2 * np.pi / size, rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
        img += rng.uniform(-0.08, 0.08, 3) * np.sin(f * (xx * math.cos(a) + yy * math.sin(a)) + ph)[..., None]
    return img


def _stuff_background(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray):
    """Voronoi partition into 2-3 regions of stuff classes, each with its own texture -> (img, label map)."""
    n = int(rng.integers(2, 4))
    seeds = rng.uniform(0, size, (n, 2))
    region = np.argmin((yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2, 0)
    classes = rng.integers(len(STUFF_NAMES), size=n)
    img = _background(rng, size, yy, xx)
    for k in range(n):
        tex = _texture_params(rng, size / 128)
        tex["kind"], tex["c1"], tex["c2"] = int(classes[k]) % 3, tex["c1"] * 0.6, tex["c2"] * 0.6
        sel = region == k
        img[sel] = 0.5 * img[sel] + 0.5 * _paint(tex, xx, yy)[sel]
    return img, classes[region]


def _render(args: tuple) -> tuple[list[dict], list[dict], int]:
    """Render image `index`, write its PNG; return (thing anns, stuff anns, dropped count) without ann ids."""
    out_dir, split, index, size, seed, k = args
    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
    scale = size / 128
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img, stuff_map = _stuff_background(rng, size, yy, xx) if k["stuff"] else (_background(rng, size, yy, xx), None)

    n_cls = int(rng.integers(1, min(k["max_classes_per_image"], k["num_classes"]) + 1))
    classes = rng.choice(k["num_classes"], n_cls, replace=False)
    textures = {int(c): _texture_params(rng, scale, _SIGNATURES[c % len(_SIGNATURES)]
                                        if rng.random() < k["class_textures"] else None) for c in classes}
    n = int(rng.integers(k["min_instances"], k["max_instances"] + 1))
    inst: list[dict] = []
    for _ in range(n):
        cls = int(rng.choice(classes))
        small = rng.random() < k["small_blurry"]
        complex_ = not small and rng.random() < k["complex_topology"]
        r = rng.uniform(k["min_radius"], k["max_radius"]) * scale
        if small:
            r = max(2.2, rng.uniform(3.0, 5.5) * scale)
        if complex_:  # holes and gaps need room to be visible
            r = max(r, rng.uniform(0.6, 1.0) * k["max_radius"] * scale)
        same = [j for j in inst if j["cls"] == cls]
        if same and rng.random() < k["occluded_similar"]:
            # Deliberate heavy overlap with an existing same-class instance: the hardest case for queries.
            j = same[int(rng.integers(len(same)))]
            ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 0.9) * (r + j["r"]) / 2 + 1
            cy, cx = j["cy"] + dist * math.sin(ang), j["cx"] + dist * math.cos(ang)
        else:  # best of 15 random positions, keeping instances apart when there is room
            cand = rng.uniform(0, size, (15, 2))
            if inst:
                c = np.array([[j["cy"], j["cx"], j["r"]] for j in inst])
                gap = np.sqrt(((cand[:, None] - c[None, :, :2]) ** 2).sum(-1)) / (r + c[None, :, 2])
                cand = cand[np.argmax(np.minimum(gap.min(1), 1.0))][None]
            cy, cx = cand[0]
        inst.append({"cls": cls, "r": r, "cy": cy, "cx": cx, "small": small, "complex": complex_,
                     "deformed": rng.random() < k["deformed"], "transparent": rng.random() < k["transparent"]})

    order = rng.permutation(n)  # depth order, bottom -> top; independent of placement order
    amodal = np.zeros((n, size, size), bool)
    for d, i in enumerate(order):
        o = inst[i]
        r, sigma = o["r"], rng.uniform(0.8, 1.4) * max(scale, 0.6) if o["small"] else 0.0
        half = math.ceil(1.6 * r + 2 + 3 * sigma)
        y0, y1 = max(0, int(o["cy"]) - half), min(size, int(o["cy"]) + half + 1)
        x0, x1 = max(0, int(o["cx"]) - half), min(size, int(o["cx"]) + half + 1)
        rot = rng.uniform(0, 2 * np.pi)
        aspect = rng.uniform(0.45, 0.65) if CLASS_NAMES[o["cls"]] == "ellipse" else rng.uniform(0.85, 1.15)
        dy, dx = yy[y0:y1, x0:x1] - o["cy"], xx[y0:y1, x0:x1] - o["cx"]
        px, py = dx * math.cos(rot) + dy * math.sin(rot), -dx * math.sin(rot) + dy * math.cos(rot)
        u, v = px / r, py / (r * aspect)
        if o["deformed"]:
            amp, freq = rng.uniform(0.15, 0.3), rng.uniform(2.5, 4.5)
            ph = rng.uniform(0, 2 * np.pi, 2)
            u, v = u + amp * np.sin(freq * v + ph[0]), v + amp * np.sin(freq * u + ph[1])
        g = _gauge(o["cls"], u, v)
        # ~1 px anti-aliased edge; alpha >= 0.5 <=> gauge <= 1, so mask and picture agree
        alpha = np.clip((1 - g) * r + 0.5, 0, 1)
        if o["complex"]:
            if rng.random() < 0.5:   # ring: remove a scaled copy of the shape
                hole = rng.uniform(0.4, 0.6)
                alpha = np.minimum(alpha, np.clip((g - hole) * r + 0.5, 0, 1))
            else:                    # two parts: cut by a straight gap through the centre
                b, w = rng.uniform(0, np.pi), rng.uniform(0.12, 0.22)
                alpha = np.minimum(alpha, np.clip((np.abs(u * math.cos(b) + v * math.sin(b)) - w) * r + 0.5, 0, 1))
        amodal[d, y0:y1, x0:x1] = alpha >= 0.5
        if sigma:  # blur the picture only: the annotation stays the object's true extent
            alpha = gaussian_filter(alpha, sigma, mode="constant")
        opacity = rng.uniform(0.35, 0.6) if o["transparent"] else 1.0
        a = (alpha * opacity)[..., None]
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + _paint(textures[o["cls"]], px, py) * a
    img += rng.normal(0, k["noise"] / 255, img.shape)
    Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)).save(
        Path(out_dir) / f"{index + 1:012d}.png", format="PNG", compress_level=6)

    # Visible parts, top -> bottom; transparent instances do not hide what is behind them (seen through).
    ordered = [inst[i] for i in order]
    flat = amodal.reshape(n, -1).astype(np.float32)
    overlap = flat @ flat.T
    areas = np.diag(overlap)
    cls_arr = np.array([o["cls"] for o in ordered])
    similar = (cls_arr[:, None] == cls_arr[None]) & ~np.eye(n, dtype=bool) & (
        overlap >= np.maximum(1.0, 0.05 * np.minimum(areas[:, None], areas[None])))
    visible, covered = np.zeros_like(amodal), np.zeros((size, size), bool)
    for d in range(n - 1, -1, -1):
        visible[d] = amodal[d] & ~covered
        if not ordered[d]["transparent"]:
            covered |= amodal[d]
    keep = [d for d in range(n) if visible[d].sum() >= k["min_area"]]
    anns = []
    for d, rle in zip(keep, encode_masks(visible[keep])):
        o = ordered[d]
        flags = (similar[d].any(), o["complex"], o["small"], o["deformed"], o["transparent"])
        anns.append(_ann(index + 1, o["cls"] + 1, rle, [g for g, f in zip(GROUPS, flags) if f]))
    stuff_anns = []
    for c in () if stuff_map is None else np.unique(stuff_map):
        m = (stuff_map == c) & ~visible.any(0)                    # the region's pixels that no thing covers
        if m.sum() >= k["min_area"]:
            stuff_anns.append(_ann(index + 1, STUFF_ID_OFFSET + int(c) + 1, encode_masks(m[None])[0]))
    return anns, stuff_anns, n - len(keep)


def _ann(image_id: int, cat_id: int, rle: dict, groups: list[str] | None = None) -> dict:
    """One annotation without its id; stuff annotations have no "groups"."""
    ann = {"image_id": image_id, "category_id": cat_id, "segmentation": rle_json(rle),
           "area": int(mask_util.area(rle)), "bbox": [float(x) for x in mask_util.toBbox(rle)], "iscrowd": 0}
    return ann if groups is None else {**ann, "groups": groups}


# ------------------------------------------------------------------------------------------ public API
def resolve_knobs(knobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULT_KNOBS updated with `knobs`; unknown names raise TypeError listing the valid ones."""
    if bad := set(knobs or {}) - set(DEFAULT_KNOBS):
        raise TypeError(f"unknown shapes knobs {sorted(bad)}; valid: {', '.join(DEFAULT_KNOBS)}")
    return {**DEFAULT_KNOBS, **(knobs or {})}


def _write_json(obj: Any, path: Path) -> None:      # dicts built in a fixed order: stable bytes
    atomic_write_text(json.dumps(obj, separators=(",", ":")), path)


def generate(root: str | Path, *, split: str, num_images: int, image_size: int = 128, seed: int = 0,
             workers: int | None = None, progress: bool = False, **knobs: Any) -> Path:
    """Write `num_images` images of `split` under ROOT in COCO-2017 layout; return the annotation json path.
    knobs: see DEFAULT_KNOBS. `workers` (default min(2, cpus)) and `progress` (stderr) never change the output."""
    k = resolve_knobs(knobs)
    img_dir, ann_file = split_paths(root, split)
    for d in (img_dir, ann_file.parent):
        d.mkdir(parents=True, exist_ok=True)
    jobs = [(str(img_dir), split, i, image_size, seed, k) for i in range(num_images)]
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    anns, stuff, dropped = [], [], 0
    pool = get_context("fork").Pool(workers) if workers > 1 and num_images >= 32 else None
    with pool or contextlib.nullcontext():  # imap keeps image order: the output does not depend on the workers
        for i, (a, s, d) in enumerate(pool.imap(_render, jobs, chunksize=16) if pool else map(_render, jobs)):
            anns += a
            stuff += s
            dropped += d
            if progress and ((i + 1) % max(1, num_images // 10) == 0 or i + 1 == num_images):
                print(f"shapes {split}: {i + 1}/{num_images} images", file=sys.stderr, flush=True)
    for i, a in [*enumerate(anns, 1), *enumerate(stuff, 1)]:  # stuff is empty without the stuff knob
        a["id"] = i
    images = [{"id": i + 1, "file_name": f"{i + 1:012d}.png", "height": image_size, "width": image_size}
              for i in range(num_images)]
    info = {"description": "iuq_lite procedural shapes", "generator_version": GENERATOR_VERSION,
            "split": split, "seed": seed, "image_size": image_size, "knobs": k, "dropped_instances": dropped}
    head = {"info": info, "licenses": [], "images": images}
    if k["stuff"]:
        stuff_cats = [{"id": STUFF_ID_OFFSET + c + 1, "name": n, "supercategory": "stuff"}
                      for c, n in enumerate(STUFF_NAMES)]
        _write_json({**head, "annotations": stuff, "categories": stuff_cats},
                    ann_file.with_name(f"stuff_{split}2017.json"))
    cats = [{"id": c + 1, "name": CLASS_NAMES[c], "supercategory": "shape"} for c in range(k["num_classes"])]
    _write_json({**head, "annotations": anns, "categories": cats}, ann_file)  # last: it marks the split complete
    return ann_file


def ensure_dataset(*, num_train: int, num_val: int, image_size: int = 128, seed: int = 0,
                   knobs: dict[str, Any] | None = None, cache_dir: str | Path | None = None) -> dict[str, str]:
    """Generate (once, under a file lock) or reuse `<cache_dir>/shapes-<hash>`; return its paths
    {root, train_images, train_ann, val_images, val_ann}. cache_dir defaults to $IUQ_DATA_DIR or <repo>/data.
    The hash covers GENERATOR_VERSION and all arguments, knobs resolved against the defaults."""
    args = {"num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed,
            "knobs": resolve_knobs(knobs)}
    key = json.dumps({"generator_version": GENERATOR_VERSION, **args}, sort_keys=True)
    cache = Path(cache_dir or os.environ.get("IUQ_DATA_DIR") or Path(__file__).resolve().parents[2] / "data")
    root = cache / f"shapes-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    paths = {"root": str(root)}
    for split in ("train", "val"):
        paths[f"{split}_images"], paths[f"{split}_ann"] = map(str, split_paths(root, split))
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{root.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if (root / "manifest.json").exists() and all(Path(paths[s + "_ann"]).exists() for s in ("train", "val")):
            return paths
        shutil.rmtree(root, ignore_errors=True)  # a half-written folder from an interrupted run
        print(f"generating shapes dataset into {root} ...", file=sys.stderr, flush=True)
        files = {}
        for split, n in (("train", num_train), ("val", num_val)):
            ann = generate(root, split=split, num_images=n, image_size=image_size, seed=seed, **args["knobs"])
            files[str(ann.relative_to(root))] = _sha256(ann)
        _write_json({"generator_version": GENERATOR_VERSION, "args": args, "sha256": files}, root / "manifest.json")
    return paths


def ensure_from_config(data_cfg: Any) -> dict[str, str]:
    """ensure_dataset for an iuq_lite.config.DataConfig (num_train, num_val, image_size, seed, knobs); a
    val_split other than train/val (e.g. "dev") is added to the same folder with num_val images."""
    paths = ensure_dataset(num_train=data_cfg.num_train, num_val=data_cfg.num_val,
                           image_size=data_cfg.image_size, seed=data_cfg.seed, knobs=dict(data_cfg.knobs))
    if data_cfg.val_split not in ("train", "val"):
        paths.update(ensure_split(paths["root"], data_cfg.val_split, num_images=data_cfg.num_val,
                                  image_size=data_cfg.image_size, seed=data_cfg.seed, knobs=dict(data_cfg.knobs)))
    return paths


def ensure_split(root: str | Path, split: str, *, num_images: int, image_size: int, seed: int,
                 knobs: dict[str, Any] | None = None) -> dict[str, str]:
    """Generate (once, under the folder's lock) an extra split of a shapes folder, e.g. the "dev" split for
    choosing schedules: its own stream (seed, crc32(split)), so it never repeats train or val images. Returns
    {split_images, split_ann}; the folder's hash (train / val) is unchanged."""
    root = Path(root)
    img_dir, ann_file = split_paths(root, split)
    with open(root.parent / f"{root.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ann_file.exists() or len(json.loads(ann_file.read_text())["images"]) != num_images:
            print(f"generating shapes split {split!r} ({num_images} images) into {root} ...", file=sys.stderr,
                  flush=True)
            generate(root, split=split, num_images=num_images, image_size=image_size, seed=seed,
                     **resolve_knobs(knobs))
    return {f"{split}_images": str(img_dir), f"{split}_ann": str(ann_file)}


def stats(ann_file: str | Path) -> dict[str, Any]:
    """Counts for a shapes (or any COCO) annotation file: images, instances, per class, per group, ..."""
    d = json.loads(Path(ann_file).read_text())
    names = {c["id"]: c["name"] for c in d["categories"]}
    anns = d["annotations"]
    per_class = Counter(names[a["category_id"]] for a in anns)
    per_group = Counter(g for a in anns for g in a.get("groups", ()))
    areas = np.array([a["area"] for a in anns], dtype=np.float64)
    buckets = np.digitize(areas, [32 ** 2, 96 ** 2])     # COCO small / medium / large
    return {"images": len(d["images"]), "instances": len(anns),
            "per_class": {n: per_class.get(n, 0) for n in names.values()},
            "per_group": {g: per_group.get(g, 0) for g in GROUPS},
            "mean_instances_per_image": len(anns) / max(1, len(d["images"])),
            "area_small_medium_large": [int((buckets == i).sum()) for i in range(3)],
            "dropped_instances": d.get("info", {}).get("dropped_instances")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True)
    p.add_argument("--split", required=True, choices=["train", "val"])
    p.add_argument("--num-images", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=None)
    a = p.parse_args(argv)
    ann = generate(a.root, split=a.split, num_images=a.num_images, image_size=a.image_size, seed=a.seed,
                   workers=a.workers, progress=True)
    print(json.dumps({"ann": str(ann), **{k: stats(ann)[k] for k in ("images", "instances")}}))


if __name__ == "__main__":
    main()
