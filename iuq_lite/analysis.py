"""Measurements behind notebooks 02, 04 and 05: failure groups, query uniqueness, equivariance error, and
how the IUQ terms' gradients align with the instance losses'.

    groups = iuq.analysis.assign_groups(coco, image_dir="data/coco/val2017")  # {ann_id: ["deformed", ...]}
    report = iuq.analysis.group_criteria_report(val_ann, val_dir, tune_ann=train_ann, tune_images=train_dir)
    u = iuq.analysis.query_uniqueness(model, dataset)     # {"cross_fire": ..., "cross_fire_same_class": ...}
    e = iuq.analysis.equivariance_errors(model, dataset)  # {"hflip": ..., "crop": ..., ...}
    a = iuq.analysis.gradient_alignment(model, cfg)       # {"all": {"norm", "cos": {"intra·equi": ...}}, ...}

The five failure groups of the paper's Figure S3 for ANY COCO-format dataset, by measurable criteria (pure
functions on masks, documented below): occluded_similar `contact_ratio`, complex_topology `topology`,
small_blurry relative area or `sharpness`, deformed `solidity` relative to the category, transparent a name in
TRANSPARENT_COCO or, where none matches (shapes), `opacity`. Thresholds: `tune_thresholds` on a TRAIN split.
"""
from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from scipy import ndimage
from scipy.spatial import ConvexHull

from .data.coco import build_datasets, collate, load_image
from .data.format import encode_masks, index_coco
from .data.shapes import GROUPS  # the five failure groups of Figure S3, one definition
from .evaluate import eval_mode
from .matcher import HungarianMatcher
from .iuq import IUQCriterion
from .model import build_criterion, iuq_adapter
from .model.condinst import grid_positions
from .train import batches
from .transforms import sample
from .utils import seed_everything

TRANSPARENT_COCO = ("wine glass", "cup", "bottle", "vase")  # COCO thing classes that are usually glass
# occluded_similar: contact > t; complex_topology: topology score > t; small_blurry: area / image area < t
# or (if not None) Laplacian variance < t; deformed: solidity / category median < t; transparent: opacity < t
DEFAULT_THRESHOLDS: dict[str, float | None] = {"contact": 0.084, "topology": 0.091, "area": 0.00415,
                                               "sharpness": None, "solidity": 0.947, "opacity": 0.605}


def topology(mask: np.ndarray) -> dict[str, float]:
    """mask [H,W] bool -> {"components", "holes", "euler", "score"}: 8-connected parts, 4-connected holes
    (background regions not reaching the border; the dual pairing), Euler number = components - holes,
    score = max(2nd-largest part, largest hole) / mask area (0 for a simply connected or an empty mask)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return {"components": 0, "holes": 0, "euler": 0, "score": 0.0}
    parts, n = ndimage.label(mask, structure=np.ones((3, 3), int))
    bg, nb = ndimage.label(~np.pad(mask, 1))  # the padding joins all outside pixels into the corner's region
    holes = np.delete(np.bincount(bg.ravel())[1:], bg[0, 0] - 1)
    biggest = max(np.sort(np.bincount(parts.ravel())[1:])[-2] if n > 1 else 0, holes.max(initial=0))
    return {"components": n, "holes": nb - 1, "euler": n - nb + 1, "score": float(biggest) / mask.sum()}


def solidity(mask: np.ndarray, *, occluders: np.ndarray | None = None) -> float:
    """mask [H,W] bool -> area / area of the convex hull of its pixel SQUARES, in (0, 1]; 1.0 when empty.
    Holes are filled (a hole is topology, not deformation); `occluders` [H,W] bool (other instances) inside
    the hull count as the object's (a bite taken by an occluder is no deformation). The hull of pixel squares
    is that of each row's outer corners: a rectangle gives exactly 1, one pixel is not a degenerate set."""
    mask = ndimage.binary_fill_holes(np.asarray(mask, bool))
    rows = np.flatnonzero(mask.any(1))
    if len(rows) == 0:
        return 1.0
    first, last = mask[rows].argmax(1), mask.shape[1] - mask[rows, ::-1].argmax(1)  # last: 1 past the end
    pts = np.concatenate([np.stack([x, rows + dy], 1) for x in (first, last) for dy in (0, 1)]).astype(float)
    hull = ConvexHull(pts)                                               # its 2-D "volume" is the area
    area = float(mask.sum())
    if occluders is not None:
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, int(first.min()), int(last.max())
        yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5                            # pixel centres of the bbox
        eq = hull.equations                                               # [F,3]: inside iff n . p + d <= 0
        inside = (xx[..., None] * eq[:, 0] + yy[..., None] * eq[:, 1] + eq[:, 2] <= 1e-9).all(-1)
        area += float((inside & occluders[y0:y1, x0:x1] & ~mask[y0:y1, x0:x1]).sum())
    return min(1.0, area / hull.volume)


def _dilate(m: np.ndarray, radius: int) -> np.ndarray:
    return ndimage.binary_dilation(m, np.ones((2 * radius + 1,) * 2, bool))


def contact_ratio(a: np.ndarray, b: np.ndarray, *, radius: int = 1, dilated: bool = False) -> float:
    """|D(a) & D(b)| / min(|D(a)|, |D(b)|), D = dilation by a (2r+1)^2 square (none if `dilated`): 0 when
    more than 2r px apart, > 0 when touching (visible parts of an occlusion) or overlapping (transparency)."""
    da, db = (a, b) if dilated else (_dilate(a, radius), _dilate(b, radius))
    return float((da & db).sum()) / max(1, min(da.sum(), db.sum()))


def sharpness(image: np.ndarray, mask: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image [H,W,3] in [0,1] on the mask dilated by 1 px (the edge is
    part of the object: a blurred object has soft edges). NaN for an empty mask."""
    sel = _dilate(mask, 1)
    return float(ndimage.laplace(image.mean(-1).astype(np.float64))[sel].var()) if sel.any() else math.nan


def opacity(mean_colour: np.ndarray, reference: np.ndarray, background: np.ndarray) -> float:
    """a with mean_colour ~ a * reference + (1 - a) * background (least squares over RGB [3]); NaN when the
    reference and background colours are too close (< 0.1 apart) for the estimate to mean anything."""
    d = reference - background
    return float(np.dot(mean_colour - background, d) / np.dot(d, d)) if np.linalg.norm(d) >= 0.1 else math.nan


def annotation_features(coco: COCO, *, image_dir: str | Path | None = None,
                        image_loader: Callable[[dict], np.ndarray] | None = None, contact_radius: int = 1,
                        img_ids: Sequence[int] | None = None) -> dict[int, dict[str, float]]:
    """{ann_id: features} for the non-crowd annotations of `img_ids` (default all images): category_id,
    area_frac, topology (score), solidity (occluder-aware), solidity_rel (/ category median), contact (max
    contact_ratio with a same-class instance) and, given images (image_loader(image info) -> [H,W,3] float in
    [0,1], or image_dir), sharpness and opacity; NaN where not measurable."""
    load = image_loader or (image_dir is not None and (
        lambda info: load_image(Path(image_dir) / info["file_name"]).permute(1, 2, 0).numpy()))
    feats: dict[int, dict[str, float]] = {}
    for img_id in sorted(coco.imgs) if img_ids is None else img_ids:
        anns = [a for a in coco.imgToAnns[img_id] if not a.get("iscrowd", 0)]
        if not anns:
            continue
        masks = np.stack([coco.annToMask(a).astype(bool) for a in anns])                  # [N,H,W]
        image = load(coco.imgs[img_id]) if load else None                                # [H,W,3] or None
        means = [image[m].mean(0) if image is not None and m.any() else None for m in masks]
        dil, cover = [_dilate(m, contact_radius) for m in masks], masks.sum(0)          # cover: [H,W] count
        for i, (a, m) in enumerate(zip(anns, masks)):
            same = [j for j in range(len(anns)) if j != i and anns[j]["category_id"] == a["category_id"]]
            f = {"category_id": a["category_id"], "area_frac": float(m.sum()) / m.size,
                 "topology": topology(m)["score"],
                 "solidity": solidity(m, occluders=cover - m > 0),                       # other instances
                 "contact": max([contact_ratio(dil[i], dil[j], dilated=True) for j in same], default=0.0),
                 "sharpness": math.nan, "opacity": math.nan}
            refs = [means[j] for j in same if means[j] is not None]
            if image is not None and m.any():
                f["sharpness"] = sharpness(image, m)
                ring = _dilate(m, 3) & (cover == 0)                                       # nearby background
                if ring.any() and refs:
                    f["opacity"] = opacity(means[i], np.median(refs, 0), np.median(image[ring], 0))
            feats[a["id"]] = f
    cats = {f["category_id"] for f in feats.values()}  # solidity relative to the category: no tags involved
    med = {c: np.median([f["solidity"] for f in feats.values() if f["category_id"] == c]) for c in cats}
    for f in feats.values():
        f["solidity_rel"] = f["solidity"] / med[f["category_id"]]
    return feats


def flag_groups(f: dict[str, float], thresholds: dict[str, float | None], *,
                transparent_ids: set[int] | frozenset = frozenset(), colour: bool = True) -> list[str]:
    """The groups (in GROUPS order) whose criteria one annotation's features `f` meet. NaN features never
    flag; a None threshold disables its optional term."""
    t = {**DEFAULT_THRESHOLDS, **thresholds}
    sharp, opac = t["sharpness"], t["opacity"]
    flags = {"occluded_similar": f["contact"] > t["contact"],
             "complex_topology": f["topology"] > t["topology"],
             "small_blurry": f["area_frac"] < t["area"] or (sharp is not None and f["sharpness"] < sharp),
             "deformed": f["solidity_rel"] < t["solidity"], "transparent": f["category_id"] in transparent_ids
             or (colour and opac is not None and f["opacity"] < opac)}
    return [g for g in GROUPS if flags[g]]


def _transparent_ids(coco: COCO, names: Sequence[str]) -> set[int]:
    wanted = {n.lower() for n in names}
    return {c for c, cat in coco.cats.items() if str(cat.get("name", "")).lower() in wanted}


def assign_groups(coco: COCO, *, thresholds: dict[str, float | None] | None = None,
                  transparent_categories: Sequence[str] = TRANSPARENT_COCO, image_dir: Any = None,
                  image_loader: Callable | None = None, contact_radius: int = 1,
                  colour: bool | None = None) -> dict[int, list[str]]:
    """{ann_id: [group, ...]} for every annotation of `coco` (crowd ones get []); thresholds override
    DEFAULT_THRESHOLDS. Without images the image terms (sharpness, opacity) never flag. colour: use `opacity`
    for transparent; None = iff no category is named in `transparent_categories` (it assumes that same-class
    instances of an image share a colour, as in shapes)."""
    ids = _transparent_ids(coco, transparent_categories)
    feats = annotation_features(coco, image_dir=image_dir, image_loader=image_loader,
                                contact_radius=contact_radius)
    colour = not ids if colour is None else colour
    flag = lambda f: flag_groups(f, thresholds or {}, transparent_ids=ids, colour=colour)
    return {a: flag(feats[a]) if a in feats else [] for a in coco.anns}


def _prf(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1 of bool vectors; 0.0 (not NaN) when nothing is flagged / nothing is true."""
    tp = int((pred & truth).sum())
    p, r = tp / max(1, int(pred.sum())), tp / max(1, int(truth.sum()))
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "support": int(truth.sum()), "flagged": int(pred.sum()), "true_positives": tp}


def tune_thresholds(features: dict[int, dict[str, float]], truth: dict[int, list[str]], *,
                    grid: int = 101) -> dict[str, float | None]:
    """Thresholds maximising each group's F1 against `truth` ({ann_id: tagged groups}) over `grid` quantiles
    of its feature; sharpness is kept (OR-ed with the tuned area) only if it raises F1. Fit on TRAIN only."""
    ids = sorted(features)
    if not ids:
        return dict(DEFAULT_THRESHOLDS)
    col = {k: np.array([features[a][k] for a in ids], np.float64) for k in features[ids[0]]}
    tags = {g: np.array([g in truth.get(a, ()) for a in ids], bool) for g in GROUPS}

    def fit(feat: str, group: str, above: bool, base: Any = None) -> tuple[float, float | None]:
        # (F1, threshold) of the best `base | (x > t)` (or x < t); NaN never passes; first on ties
        x, base = col[feat], np.zeros(len(ids), bool) if base is None else base
        ok = np.isfinite(x)
        cands = np.unique(np.quantile(x[ok], np.linspace(0, 1, grid))) if ok.any() else []
        opts = [(_prf(base | (x > t if above else x < t), tags[group])["f1"], float(t)) for t in cands]
        return max(opts, key=lambda o: o[0], default=(0.0, None))

    out = {key: fit(feat, g, above)[1] for g, key, feat, above in (
        ("occluded_similar", "contact", "contact", True), ("complex_topology", "topology", "topology", True),
        ("small_blurry", "area", "area_frac", False), ("deformed", "solidity", "solidity_rel", False),
        ("transparent", "opacity", "opacity", False))}
    out = {k: DEFAULT_THRESHOLDS[k] if v is None and k != "opacity" else v for k, v in out.items()}
    small = col["area_frac"] < out["area"]
    f1_blur, out["sharpness"] = fit("sharpness", "small_blurry", False, base=small)
    if f1_blur <= _prf(small, tags["small_blurry"])["f1"]:
        out["sharpness"] = None
    return out


def group_criteria_report(ann_file: str | Path, image_dir: str | Path | None, *,
                          tune_ann: str | Path | None = None, tune_images: str | Path | None = None,
                          thresholds: dict | None = None, num_images: int | None = None,
                          tune_num_images: int | None = None, contact_radius: int = 1,
                          transparent_categories: Sequence[str] = TRANSPARENT_COCO) -> dict[str, Any]:
    """Precision/recall of each criterion against the annotations' "groups" tags (shapes data), thresholds
    tuned on (tune_ann, tune_images) when given (a TRAIN split; its own scores go to "tuned"), else
    `thresholds` over DEFAULT_THRESHOLDS. num_images / tune_num_images: the first N image ids. Returns
    {"thresholds", "tuned_on", "num_images", "num_annotations", "groups": {group: {"precision", "recall",
    "f1", "support", "flagged", "true_positives"}}, "tuned": the same on the tuning split or None}."""
    def load(ann: str | Path, images: Any, n: int | None) -> tuple[COCO, dict, dict]:
        coco = index_coco(ann)
        f = annotation_features(coco, image_dir=images, contact_radius=contact_radius,
                                img_ids=sorted(coco.imgs)[:n])
        return coco, f, {a: list(coco.anns[a].get("groups", [])) for a in f}

    def scores(coco: COCO, feats: dict, truth: dict, t: dict) -> dict[str, dict[str, float]]:
        ids, keys = _transparent_ids(coco, transparent_categories), sorted(feats)
        pred = {a: flag_groups(feats[a], t, transparent_ids=ids, colour=not ids) for a in keys}
        flag = lambda tags, g: np.array([g in tags[a] for a in keys], bool)
        return {g: _prf(flag(pred, g), flag(truth, g)) for g in GROUPS}

    t, tuned = {**DEFAULT_THRESHOLDS, **(thresholds or {})}, None
    if tune_ann is not None:
        tune = load(tune_ann, tune_images, tune_num_images)
        t = {**t, **tune_thresholds(*tune[1:])}
        tuned = scores(*tune, t)
    coco, feats, truth = load(ann_file, image_dir, num_images)
    return {"thresholds": t, "tuned_on": None if tune_ann is None else str(tune_ann),
            "num_images": len(sorted(coco.imgs)[:num_images]), "num_annotations": len(feats),
            "groups": scores(coco, feats, truth, t), "tuned": tuned}


def _matched(model: torch.nn.Module, dataset: Any, *, num_images: int, batch_size: int, matcher: Any,
             seed: int) -> list[dict]:
    """For a seeded pool of `num_images` images, per image: "features" [P,C] (its valid, unpadded stride-s
    pixels) at "positions" [P,2] (normalised on the batch's feature grid, as PixelMemory stores them), "embed"
    [n,D] and "labels" [n] of its matched queries: Hungarian-matched to its GT (default
    HungarianMatcher(num_points=1024), seeded points), or for target-dependent queries (CondInst's adapter)
    the proposals assigned to a GT; "classes" (set of GT labels), "index" (in dataset)."""
    adapter, matcher = iuq_adapter(model), matcher or HungarianMatcher(num_points=1024)
    indices = sorted(np.random.default_rng(seed).permutation(len(dataset))[:num_images].tolist())  # the pool
    with eval_mode(model) as device:
        gen, recs = torch.Generator(device=device).manual_seed(seed), []
        for s in range(0, len(indices), batch_size):
            images, targets = collate([dataset[i] for i in indices[s:s + batch_size]])
            targets = [{"labels": t["labels"].to(device), "masks": t["masks"].to(device), "size": t["size"],
                        "generator": gen} for t in targets]
            out = model(images.to(device))
            feats = adapter.features(out)                                                # [B,C,H',W']
            stride, (H, W) = images.shape[-1] // feats.shape[-1], feats.shape[-2:]
            pos = grid_positions(H, W, device).view(H, W, 2)                         # PixelMemory's convention
            if adapter.logits_fn is None:
                pairs, embed = matcher(out, targets, generator=gen), adapter.embed(out)
            else:                                  # target-dependent queries: each proposal and its GT
                out = adapter.assign(out, targets)
                embed, ok = adapter.embed(out), adapter.query_mask(out)
                pairs = [(ok[b].nonzero()[:, 0], out["proposal_gt"][b][ok[b]]) for b in range(len(targets))]
            for b, (iq, it) in enumerate(pairs):
                h, w = (math.ceil(int(v) / stride) for v in targets[b]["size"])
                recs.append({"features": feats[b, :, :h, :w].flatten(1).T.float(),      # [h*w,C]
                             "positions": pos[:h, :w].reshape(-1, 2),                   # [h*w,2]
                             "embed": embed[b, iq.to(device)].float(),                  # [n,D]
                             "labels": targets[b]["labels"][it.to(device)].cpu(),
                             "classes": set(targets[b]["labels"].tolist()), "index": indices[s + b]})
    return recs


def query_uniqueness(model: torch.nn.Module, dataset: Any, *, num_images: int = 100, threshold: float = 0.5,
                     batch_size: int = 8, seed: int = 0, matcher: Any = None) -> dict[str, Any]:
    """How often a matched query fires in OTHER images (lower = more instance-unique; METHOD §2's aim). The
    matched queries of a seeded pool of `num_images` images (see _matched) meet every pool image's mask
    features: fire = sigmoid(E . F) > threshold. Returns {"cross_fire": mean fired fraction over (query,
    other image) pairs, "cross_fire_same_class" / "cross_fire_other_class": over other images that do / do
    not contain its class, "own_fire": on its own image (None: no pairs), "per_query" [n] mean cross fire,
    "labels" [n] GT labels, "num_queries", "num_images", "threshold"}."""
    recs = _matched(model, dataset, num_images=num_images, batch_size=batch_size, matcher=matcher, seed=seed)
    n_img, feats = len(recs), torch.cat([r["features"] for r in recs])               # [P,C] all pixels
    owner = torch.cat([torch.full((len(r["features"]),), j, device=feats.device) for j, r in enumerate(recs)])
    emb, labels = torch.cat([r["embed"] for r in recs]), torch.cat([r["labels"] for r in recs])  # [n,C], [n]
    src = torch.cat([torch.full((len(r["labels"]),), j) for j, r in enumerate(recs)])  # [n] query's image
    cut = math.log(threshold / (1 - threshold))                          # sigmoid(z) > t <=> z > logit(t)
    logits_fn, pos = iuq_adapter(model).logits_fn, torch.cat([r["positions"] for r in recs])   # [P,2]
    logits = (lambda e: e @ feats.T) if logits_fn is None else (lambda e: logits_fn(e[None], feats, pos)[0])
    # fired pixels per (query, image), a chunk of queries at a time so that [n,P] logits never exist at once
    # (dynamic heads: 32, their [q,8,P] hidden activations are the large tensor)
    fired = [torch.zeros(len(e), n_img, device=feats.device).index_add_(1, owner, (logits(e) > cut).float())
             for e in emb.split(256 if logits_fn is None else 32)]                       # [n,N] pixel counts
    frac = torch.cat(fired or [torch.zeros(0, n_img)]).cpu() / torch.bincount(owner, minlength=n_img).cpu()
    other = src[:, None] != torch.arange(n_img)[None]                                # [n,N]
    has = torch.tensor([[lab in r["classes"] for r in recs] for lab in labels.tolist()], dtype=torch.bool)
    has = has.reshape(other.shape)                                                   # [n,N] class present
    mean = lambda sel: float(frac[sel].mean()) if sel.any() else None  # over selected (query, image) pairs
    return {"cross_fire": mean(other), "cross_fire_same_class": mean(other & has),
            "cross_fire_other_class": mean(other & ~has), "own_fire": mean(~other),
            "per_query": (frac * other).sum(1) / other.sum(1).clamp(min=1), "labels": labels,
            "num_queries": len(labels), "num_images": n_img, "threshold": threshold}


def cross_image_heatmaps(model: torch.nn.Module, image_a: torch.Tensor, images_b: torch.Tensor, *,
                         target_a: dict | None = None, top_k: int = 5, seed: int = 0) -> dict[str, Any]:
    """Heat maps of image A's queries on images B (pictures of query collapse). image_a [3,H,W], images_b
    [B,3,H',W'] in [0,1]. Queries: those Hungarian-matched to target_a ({"labels" [T], "masks" [T,H,W]};
    in GT order), else the top_k by 1 - p(no-object). Returns, on the CPU, {"queries" [n],
    "labels" [n] predicted class, "own" [n,h,w] sigmoid on A, "heatmaps" [n,B,h',w'] sigmoid(E_A . F_B)}."""
    with eval_mode(model) as device:
        out_a, out_b = model(image_a[None].to(device)), model(images_b.to(device))
        prob = out_a["pred_logits"][0].softmax(-1)                                    # [Q,K+1]
        q = (1 - prob[:, -1]).topk(min(top_k, len(prob))).indices
        if target_a is not None:
            t, gen = {k: target_a[k].to(device) for k in ("labels", "masks")}, torch.Generator(device)
            iq, it = HungarianMatcher(num_points=1024)(out_a, [t], generator=gen.manual_seed(seed))[0]
            q = iq[it.argsort()].to(device)
        e = out_a["mask_embed"][0, q]                                                 # [n,C]
        own = torch.einsum("nc,chw->nhw", e, out_a["mask_features"][0]).sigmoid()
        heat = torch.einsum("nc,bchw->nbhw", e, out_b["mask_features"]).sigmoid()
    return {"queries": q.cpu(), "labels": prob[q, :-1].argmax(-1).cpu(), "own": own.cpu(),
            "heatmaps": heat.cpu()}


def embedding_similarity(model: torch.nn.Module, dataset: Any, *, num_images: int = 16, batch_size: int = 8,
                         seed: int = 0, matcher: Any = None) -> dict[str, Any]:
    """Cosine similarity [N,N] of the matched mask embeddings of a seeded pool of images (see _matched), in
    (GT label, image) order so that classes form blocks. Returns {"similarity", "labels" [N], "image_index"
    [N] (in dataset), "mean_same_class" / "mean_other_class": over pairs of DIFFERENT images, or None}."""
    recs = _matched(model, dataset, num_images=num_images, batch_size=batch_size, matcher=matcher, seed=seed)
    emb, labels = torch.cat([r["embed"] for r in recs]).cpu(), torch.cat([r["labels"] for r in recs])
    image = torch.cat([torch.full((len(r["labels"]),), r["index"]) for r in recs])
    order = sorted(range(len(labels)), key=lambda k: (int(labels[k]), int(image[k])))  # stable sort
    emb, labels, image = emb[order], labels[order], image[order]
    e = torch.nn.functional.normalize(emb, dim=1)                                     # [N,C]
    sim, cross, same = e @ e.T, image[:, None] != image[None], labels[:, None] == labels[None]
    return {"similarity": sim, "labels": labels, "image_index": image,
            "mean_same_class": float(sim[same & cross].mean()) if (same & cross).any() else None,
            "mean_other_class": float(sim[~same & cross].mean()) if (~same & cross).any() else None}


def _equi_sums(model: torch.nn.Module, images: torch.Tensor, g: Any, f: Any = None) -> np.ndarray:
    """[sum of (f(g(I)) - g(f(I)))^2, sum of g(f(I))^2] over g.valid pixels, all channels and images."""
    feats = iuq_adapter(model).features                   # F: "mask_features" (CondInst: its mask branch)
    f = feats(model(images)) if f is None else f                                    # [B,C,h,w]
    f_g, g_f = feats(model(g.image(images))), g.features(f)                         # both [B,C,h',w']
    if f_g.shape != g_f.shape:
        raise ValueError(f"f(g(I)) {tuple(f_g.shape)} != g(f(I)) {tuple(g_f.shape)}: crop off the stride?")
    v = g.valid(tuple(f.shape[-2:]), device=f.device).to(f.dtype)                  # [h',w']
    return np.array([float(((f_g - g_f) ** 2 * v).sum()), float((g_f ** 2 * v).sum())])


def equivariance_error(model: torch.nn.Module, images: torch.Tensor, g: Any) -> float:
    """||f(g(I)) - g(f(I))|| / ||g(f(I))|| (METHOD §4; 0 for an exactly equivariant f), f = mask_features
    [B,C,h,w], norms over the batch on g.valid pixels, so the denominator is ||f(I)|| on the region the
    numerator sees (all of it for hflip). images [B,3,H,W] in [0,1]; g: iuq_lite.transforms.sample(...)."""
    with eval_mode(model) as device:
        num, den = _equi_sums(model, images.to(device), g)
    return math.sqrt(num / den) if den > 0 else math.nan


def equivariance_errors(model: torch.nn.Module, dataset: Any, *,
                        kinds: Sequence[str] = ("hflip", "crop", "rotate", "scale"), num_images: int = 64,
                        seed: int = 0, batch_size: int = 8, ranges: dict | None = None) -> dict[str, float]:
    """{kind: error} over a seeded pool of `num_images` images: one g per batch and kind (transforms.sample,
    crops aligned to model.mask_stride, default 4; `ranges`), pooled as sqrt(sum of squared differences /
    sum of squared g(f(I))) over all batches."""
    stride = int(getattr(model, "mask_stride", 4))
    # one generator per kind, keyed by its name: adding a kind does not change the others' transforms
    gens = {k: torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(k.encode())) for k in kinds}
    sums = {k: np.zeros(2) for k in kinds}
    indices = sorted(np.random.default_rng(seed).permutation(len(dataset))[:num_images].tolist())  # the pool
    with eval_mode(model) as device:
        for s in range(0, len(indices), batch_size):
            images = collate([dataset[i] for i in indices[s:s + batch_size]])[0].to(device)
            f = iuq_adapter(model).features(model(images))
            for k in kinds:
                g = sample(k, image_size=images.shape[-2:], stride=stride, generator=gens[k], ranges=ranges)
                sums[k] += _equi_sums(model, images, g, f)
    return {k: math.sqrt(n / d) if d > 0 else math.nan for k, (n, d) in sums.items()}


def _alignment(grads: dict[str, torch.Tensor]) -> dict[str, dict[str, float | None]]:
    """{"norm": {term: ||g||}, "cos": {"a·b": cosine}} of flat gradient vectors (cosine None when one is 0)."""
    n = {k: float(g.norm()) for k, g in grads.items()}
    return {"norm": n, "cos": {f"{a}·{b}": float(grads[a] @ grads[b]) / (n[a] * n[b]) if n[a] * n[b] else None
                               for i, a in enumerate(grads) for b in list(grads)[i + 1:]}}


def gradient_alignment(model: torch.nn.Module, cfg: Any, *, num_batches: int = 16, warmup: int = 40) -> dict:
    """Do the IUQ terms pull with or against the instance losses at this model? Per batch (images [B,3,H,W],
    targets) of cfg's training stream (seed 0), the gradients over the model's parameters of L_intra (the base
    criterion's terms, summed), w_inter L_inter (Eq. 5) and lambda L_equi (Eq. 8) with cfg's IUQ terms: their
    norms and pairwise cosines ("all"; and per top-level child module, e.g. "backbone", "pixel_decoder",
    "layers"), means over `num_batches` batches. `warmup` batches first fill the pixel memory without
    gradients, as ~40 training steps do. Train mode, as in training, on a copy of the model."""
    model = copy.deepcopy(model).train()
    named = [(n.split(".")[0], p) for n, p in model.named_parameters() if p.requires_grad]
    crit = IUQCriterion(build_criterion(cfg), cfg.iuq, adapter=iuq_adapter(model), seed=0)
    seed_everything(0)                                                # augmentation draws from the global RNG
    stream = batches(build_datasets(cfg.data)[0], batch_size=cfg.train.batch_size, seed=0, start_step=0)
    rows = []
    with torch.no_grad():
        for step in range(warmup):
            crit(model, *next(stream), step=step)
            crit.after_step()
    for step in range(warmup, warmup + num_batches):
        losses = crit(model, *next(stream), step=step)
        terms = {"intra": sum(v for k, v in losses.items() if k not in ("loss_inter", "loss_equi")),
                 **{k[5:]: v for k, v in losses.items() if k in ("loss_inter", "loss_equi")}}
        grads = {t: torch.autograd.grad(loss, [p for _, p in named], retain_graph=True, materialize_grads=True)
                 for t, loss in terms.items()}                                   # unused parameters: zeros
        crit.after_step()
        flat = {part: {t: torch.cat([g.flatten() for g, (m, _) in zip(gs, named) if part in ("all", m)])
                       for t, gs in grads.items()} for part in ["all", *dict(named)]}
        rows.append({part: _alignment(g) for part, g in flat.items()})
    return {"num_batches": num_batches, "warmup": warmup,
            **{part: {s: _means([r[part][s] for r in rows]) for s in ("norm", "cos")} for part in rows[0]}}


def _means(dicts: list[dict]) -> dict:
    """Key-wise means over the dicts where the value is not None (None where it is None in all)."""
    return {k: float(np.mean(v)) if (v := [d[k] for d in dicts if d[k] is not None]) else None for k in dicts[0]}


def per_image_iou(pred_masks: torch.Tensor | np.ndarray, gt_masks: torch.Tensor | np.ndarray) -> np.ndarray:
    """pred [P,H,W], gt [G,H,W] (bool or {0,1}) -> IoU [P,G] float64 via pycocotools.mask.iou on RLE (every
    GT a plain, non-crowd instance). An empty side gives a [P,G] array of zeros."""
    p, g = encode_masks(pred_masks), encode_masks(gt_masks)                                   # RLE lists
    if len(p) == 0 or len(g) == 0:
        return np.zeros((len(p), len(g)))
    return np.asarray(mask_util.iou(p, g, [0] * len(g)), dtype=np.float64).reshape(len(p), len(g))
