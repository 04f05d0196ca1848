"""Figures S1-S3 of the supplement, regenerated from a baseline and an IUQ checkpoint (METHOD §6).

    paths = iuq.figures.make_figures("checkpoints/shapes_long_s0/model.pt",
                                     "checkpoints/shapes_long_iuq_s0/model.pt",
                                     "figures")          # [S1.png, S2.png, S3.png]; S1.json ... beside them

    python -m iuq_lite.figures --out figures/ [--baseline P --ours P] [--s1-baseline P --s1-ours P]
                               [--coco-root DIR] [--num-images N]
        -> last stdout line {"figures": [paths]}

Every row is image | baseline | ours | ground truth. A prediction is drawn when its score >= score_threshold
(default 0.5: above it a query has at most one class, so no query is drawn twice) and takes the colour of the
GT instance it overlaps best if that IoU >= 0.5 (analysis.per_image_iou), else a grey (viz.match_colors).

SELECTION RULE (RULES, also written into each figure's JSON; no hand-picked indices: same inputs, same JSON).
Per image and model: `ap` = COCO mask AP of its top-k predictions on that image alone (evaluate.coco_eval),
`iou` = mean over the non-crowd GT instances of the best IoU of a DRAWN prediction (0 when missed), and
`group_iou[g]` = the same mean over the instances of failure group g. Images without GT are never shown.
S2 takes `rows` images from the "gain" ranking. S1 is the paper's CondInst figure: given a CondInst pair
(`s1_pair`: CondInst baseline and CondInst + IUQ checkpoints) it takes the top `rows` of that pair's own gain
ranking, else the next `rows` of S2's ranking (S2's pair, so titled); S3 takes `rows_per_group` images per group
(analysis.GROUPS order, each image in one group at most) by the "failure" rule. Groups are the annotations'
"groups" tags (shapes) or, when no annotation has them (COCO), analysis.assign_groups on the shown images.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_util

from .analysis import GROUPS, assign_groups, per_image_iou
from .checkpoint import load_model
from .data.coco import CocoInstances, collate, dataset_files
from .data.format import encode_masks, index_coco, split_paths
from .evaluate import coco_eval, postprocess, to_coco_results
from .utils import atomic_write_text, sha256_file
from .viz import match_colors, palette, render_instances, save_figure, to_numpy_image

MATCH_IOU = 0.5                      # a drawn prediction "is" the GT instance it overlaps this much
HARD_IOU = 0.5                       # S3: below this mean IoU a group's instances count as failed
GROUP_TITLES = {"occluded_similar": "(i) highly similar and occluded",
                "complex_topology": "(ii) complex topologies", "small_blurry": "(iii) small and blurry",
                "deformed": "(iv) highly deformed", "transparent": "(v) transparent"}
MODEL_NAMES = {"mask2former": "Mask2Former", "condinst": "CondInst"}
RULES = {"S2": "largest gain ours - baseline in per-image ap, then in iou, then lowest image id",
         "S1": "the next rows of the S2 ranking (disjoint from S2): no CondInst pair was given",
         "S1 CondInst": "largest gain of CondInst + IUQ over CondInst in per-image ap, then in iou, then lowest "
                        "image id (the S2 rule on the CondInst pair)",
         "S3": "per group, images with GT of the group: baseline group_iou < 0.5 first, then ours' group_iou "
               "ascending, baseline's ascending, image id; each image in one group at most"}


def select_rows(scores: Sequence[dict], *, rule: str, n: int, group: str | None = None,
                exclude: Sequence[int] = ()) -> list[int]:
    """Image ids of the `n` rows that `rule` ("gain": S1, S2; "failure": S3, needs `group`; see RULES) picks
    from per-image `scores` = [{"image_id", "baseline": s, "ours": s}], s = {"ap": float | None, "iou": float |
    None (None = no GT), "group_iou": {group: float}} (a group is present iff the image has GT of it).
    `exclude`: image ids never picked."""
    def gain(r: dict) -> tuple:
        b, o = r["baseline"], r["ours"]
        return -((o["ap"] or 0.0) - (b["ap"] or 0.0)), -(o["iou"] - b["iou"]), r["image_id"]

    def failure(r: dict) -> tuple:
        b, o = r["baseline"]["group_iou"][group], r["ours"]["group_iou"][group]
        return b >= HARD_IOU, o, b, r["image_id"]              # False sorts first: hard for both

    if rule not in ("gain", "failure") or (rule == "failure" and group is None):
        raise ValueError(f"rule must be 'gain' or 'failure' (with a group), got {rule!r}, group={group!r}")
    skip = set(exclude)
    pool = [r for r in scores if r["image_id"] not in skip and r["ours"]["iou"] is not None
            and (rule == "gain" or group in r["ours"]["group_iou"])]
    return [r["image_id"] for r in sorted(pool, key=gain if rule == "gain" else failure)[:n]]


def render_figure(sections: Sequence[tuple[str | None, Sequence[Sequence[tuple[np.ndarray, str]]]]], *,
                  title: str, size: float = 1.9):
    """A matplotlib Figure (not registered with pyplot) of `sections` = [(header or None, rows)], each row a
    list of (panel [H,W,3] in [0,1], caption) drawn left to right; a section without rows says so. One axes
    per panel (plus one per empty section), so len(fig.axes) == total panels."""
    from matplotlib.figure import Figure
    heights = [max(1, len(rows)) for _, rows in sections]
    ncols = max([len(r) for _, rows in sections for r in rows] or [1])
    fig = Figure(figsize=(size * ncols, size * 1.12 * sum(heights) + 0.3 * len(sections) + 0.4),
                 layout="constrained")
    fig.suptitle(title, fontsize=10)
    subs = fig.subfigures(len(sections), 1, height_ratios=heights, squeeze=False)[:, 0]
    for sub, (header, rows) in zip(subs, sections):
        if header:
            sub.suptitle(header, fontsize=9, fontweight="bold", x=0.01, ha="left")
        if not rows:
            ax = sub.subplots()
            ax.axis("off")
            ax.text(0.5, 0.5, "no image qualifies", ha="center", va="center", fontsize=8)
            continue
        axes = sub.subplots(len(rows), ncols, squeeze=False)
        for ax_row, row in zip(axes, rows):
            for ax, (panel, caption) in zip(ax_row, row):
                ax.imshow(panel, interpolation="nearest")
                ax.set_title(caption, fontsize=6.5)
                ax.axis("off")
    return fig


# ----------------------------------------------------------------------------------------- scoring
def _mean(x: np.ndarray) -> float:
    return round(float(x.mean()), 4) if x.size else 0.0


@torch.no_grad()
def _score(models: dict[str, Any], ds: CocoInstances, indices: Sequence[int], *, score_threshold: float,
           batch_size: int = 8) -> tuple[list[dict], dict[int, dict]]:
    """Run every model on ds[indices]: per-image scores for select_rows and, per image id, each model's
    drawn predictions kept as RLE (not masks: COCO-sized masks of 200 images would not fit in memory)."""
    scores, drawn = [], {}
    for s in range(0, len(indices), batch_size):
        items = [ds[i] for i in indices[s:s + batch_size]]
        images, padded = collate(items)
        sizes = [t["size"].tolist() for t in padded]
        outs = {name: getattr(m, "postprocess", postprocess)(m(images), sizes, topk=topk,   # the model's own
                                                             input_size=images.shape[-2:])  # inference if any
                for name, (m, topk) in models.items()}                                # per image: [k] preds
        for b, (_, t) in enumerate(items):
            iid, crowd = t["image_id"], t["iscrowd"]
            gt = t["masks"][~crowd]                                                  # [G,H,W] unpadded
            groups = [g for g, c in zip(t["groups"], crowd.tolist()) if not c]
            rec, drawn[iid] = {"image_id": iid}, {}
            for name, preds in outs.items():
                p = preds[b]
                ap = coco_eval(ds.coco, to_coco_results([p], [iid], ds.contiguous_to_cat_id), groups=[],
                               img_ids=[iid])["segm/AP"]
                keep = p["scores"] >= score_threshold
                masks = p["masks"][keep].cpu()                                       # [P,H,W] score order
                best = per_image_iou(masks, gt).max(0) if len(masks) else np.zeros(len(gt))   # [G]
                rec[name] = {"ap": None if ap is None else round(ap, 4),
                             "iou": _mean(best) if len(gt) else None,
                             "group_iou": {g: _mean(best[[g in gs for gs in groups]])
                                           for g in GROUPS if any(g in gs for gs in groups)}}
                drawn[iid][name] = {"rle": encode_masks(masks), "scores": p["scores"][keep].tolist(),
                                    "labels": p["labels"][keep].tolist()}
            scores.append(rec)
        print(f"figures: scored {min(s + batch_size, len(indices))}/{len(indices)} images", file=sys.stderr,
              flush=True)
    return scores, drawn


def _tag_groups(ds: CocoInstances, image_ids: Sequence[int]) -> None:
    """Write analysis.assign_groups' groups into the annotations of `image_ids` (COCO has no tags), computed
    on those images alone: the deformed criterion's category medians then come from them too."""
    sub = index_coco({"images": [ds.coco.imgs[i] for i in image_ids], "categories": ds.coco.dataset["categories"],
                      "annotations": [a for i in image_ids for a in ds.coco.imgToAnns[i]]})
    for aid, groups in assign_groups(sub).items():
        ds.coco.anns[aid]["groups"] = groups      # the same dicts CocoInstances reads "groups" from


# ----------------------------------------------------------------------------------------- figures
def _row(ds: CocoInstances, index: int, drawn: dict, rec: dict, names: dict[str, str],
         group: str | None) -> tuple[list[tuple[np.ndarray, str]], dict]:
    """The four panels of one image and its JSON row (which instances are drawn, matched to which GT)."""
    image, t = ds[index]
    iid, crowd = t["image_id"], t["iscrowd"].numpy()
    gt = t["masks"][~t["iscrowd"]].numpy()                                            # [G,H,W]
    bad = {a for ids in ds.skipped.values() for a in ids}
    anns = [a for a in ds.coco.imgToAnns[iid] if a["id"] not in bad]                  # target order
    gt_ann = [a for a, c in zip(anns, crowd) if not c]
    colors = palette(len(gt))
    panels, row = [(to_numpy_image(image), f"image id {iid}\n{ds.coco.imgs[iid]['file_name']}")], {
        "image_id": iid, "file_name": ds.coco.imgs[iid]["file_name"], "group": group,
        "gt": [{"ann_id": a["id"], "class": ds.coco.cats[a["category_id"]].get("name"),
                "groups": list(a.get("groups", []))} for a in gt_ann]}
    for name in ("baseline", "ours"):
        d, s = drawn[name], rec[name]
        masks = mask_util.decode(d["rle"]).transpose(2, 0, 1).astype(bool) if d["scores"] else np.zeros(
            (0, *gt.shape[1:]), bool)                                                 # [P,H,W]
        iou = per_image_iou(masks, gt)                                                # [P,G]
        c = match_colors(iou, colors, threshold=MATCH_IOU)
        # lowest score first, so the most confident masks end up on top
        panels.append((render_instances(image, masks[::-1], colors=c[::-1]),
                       f"{names[name]}\nAP {s['ap'] or 0:.1f} · "
                       + (f"group IoU {s['group_iou'][group]:.2f}" if group else f"IoU {s['iou']:.2f}")))
        match = [int(r.argmax()) if r.size and r.max() >= MATCH_IOU else None for r in iou]
        row[name] = {**s, "instances": [
            {"score": round(sc, 4), "class": ds.class_names[lab], "match": m,
             "iou": round(float(r.max()), 4) if r.size else 0.0}
            for sc, lab, m, r in zip(d["scores"], d["labels"], match, iou)]}
    panels.append((render_instances(image, gt, colors=colors), f"ground truth\n{len(gt)} instances"))
    return panels, row


def _rel(path: str | Path) -> str:
    """`path` relative to the working directory when inside it: committed JSON holds no machine paths."""
    p = Path(path).resolve()
    return str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(path)


def make_figures(baseline_ckpt: str | Path, ours_ckpt: str | Path, out_dir: str | Path, *,
                 images: str | Path | None = None, ann: str | Path | None = None, num_images: int = 200,
                 coco_root: str | Path | None = None, rows: int = 4, rows_per_group: int = 2,
                 score_threshold: float = 0.5, dpi: int = 150,
                 s1_pair: tuple[str | Path, str | Path] | None = None) -> list[Path]:
    """Write S1-S3 .png (dpi) and .json into out_dir; return the PNG paths. The images are the first
    `num_images` of (images, ann), else of coco_root's val2017, else of the ours checkpoint's val split.
    `s1_pair`: (CondInst baseline, CondInst + IUQ) checkpoints for S1 (see the module docstring).
    Missing checkpoints raise FileNotFoundError (figures never retrain)."""
    pairs = {"main": (baseline_ckpt, ours_ckpt), **({"s1": tuple(s1_pair)} if s1_pair is not None else {})}
    for p in (p for pair in pairs.values() for p in pair):
        if not Path(p).is_file():
            raise FileNotFoundError(f"checkpoint {p} does not exist: run `make reproduce` to produce it "
                                    "(the figures never train a model)")
    if (images is None) != (ann is None):
        raise ValueError("images and ann go together")
    loaded = {k: (load_model(b), load_model(o)) for k, (b, o) in pairs.items()}
    cfg = loaded["main"][1][1]
    if len({repr(m[1].data) for pair in loaded.values() for m in pair}) > 1:
        print("figures: note: the checkpoints were trained on different data configs", file=sys.stderr)
    if images is None:
        images, ann = split_paths(coco_root, "val") if coco_root is not None else dataset_files(cfg.data)[1]
    ds = CocoInstances(images, ann)
    indices = list(range(min(num_images, len(ds))))
    if not any("groups" in a for a in ds.coco.dataset["annotations"]):
        _tag_groups(ds, [ds.ids[i] for i in indices])
    scored = {}                                      # pair -> (scores, drawn, names, ranked)
    for k, ((base, cfg_b), (ours, cfg_o)) in loaded.items():
        models = {"baseline": (base, cfg_b.model.test_topk), "ours": (ours, cfg_o.model.test_topk)}
        scores, drawn = _score(models, ds, indices, score_threshold=score_threshold)
        base_name = MODEL_NAMES.get(cfg_b.model.name, cfg_b.model.name)
        names = {"baseline": base_name, "ours": "ours (IUQ)" if k == "main" else f"{base_name} + IUQ (ours)"}
        scored[k] = (scores, drawn, names, select_rows(scores, rule="gain", n=(2 if k == "main" else 1) * rows))
    scores, _, names, ranked = scored["main"]
    s3, used = [], []
    for g in GROUPS:
        s3.append((g, select_rows(scores, rule="failure", n=rows_per_group, group=g, exclude=used)))
        used += s3[-1][1]
    if "s1" in scored:
        s1_names = scored["s1"][2]
        s1 = ("s1", f"Figure S1: {s1_names['baseline']} vs {s1_names['ours']} vs ground truth",
              [(None, scored["s1"][3])], RULES["S1 CondInst"])
    else:
        s1 = ("main", f"Figure S1: {names['baseline']} vs ours vs ground truth (S2's pair: no CondInst "
                      "checkpoints given)", [(None, ranked[rows:])], RULES["S1"])
    specs = {"S1": s1,
             "S2": ("main", f"Figure S2: {names['baseline']} vs ours vs ground truth", [(None, ranked[:rows])],
                    RULES["S2"]),
             "S3": ("main", "Figure S3: failure cases in five groups", s3, RULES["S3"])}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, (pair, title, groups, rule) in specs.items():
        scores, drawn, names, _ = scored[pair]
        by_id, index_of = {r["image_id"]: r for r in scores}, {ds.ids[i]: i for i in indices}
        built = [(g, [_row(ds, index_of[i], drawn[i], by_id[i], names, g) for i in ids]) for g, ids in groups]
        fig = render_figure([(GROUP_TITLES.get(g), [p for p, _ in rs]) for g, rs in built], title=title)
        save_figure(fig, out_dir / f"{key}.png", dpi=dpi)          # atomic, and closed (not shown twice inline)
        source = {"figure": key, "title": title, "columns": ["image", names["baseline"], names["ours"],
                  "ground truth"], "selection_rule": rule + "; see iuq_lite.figures' docstring",
                  "checkpoints": {"baseline": _rel(pairs[pair][0]), "ours": _rel(pairs[pair][1])},
                  "images": _rel(images), "ann": _rel(ann), "ann_sha256": sha256_file(ann),
                  "num_images": len(indices),
                  "score_threshold": score_threshold, "match_iou": MATCH_IOU, "hard_iou": HARD_IOU,
                  "rows": [r for _, rs in built for _, r in rs], "per_image": "@"}
        # one line per image keeps the 200-image score table diffable without tripling the file
        table = "[\n" + ",\n".join(json.dumps(r) for r in scores) + "\n]"
        atomic_write_text(json.dumps(source, indent=1).replace('"@"', table) + "\n", out_dir / f"{key}.json")
        paths.append(out_dir / f"{key}.png")
        print(f"figures: wrote {paths[-1]} ({len(source['rows'])} rows)", file=sys.stderr, flush=True)
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m iuq_lite.figures", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--baseline", default="checkpoints/shapes_long_s0/model.pt")
    p.add_argument("--ours", default="checkpoints/shapes_long_iuq_s0/model.pt")
    p.add_argument("--s1-baseline", default="checkpoints/shapes_condinst_s0/model.pt",
                   help="S1's CondInst pair; S1 falls back to S2's pair when either file is missing")
    p.add_argument("--s1-ours", default="checkpoints/shapes_condinst_iuq_s0/model.pt")
    p.add_argument("--coco-root", default=None, help="use ROOT/val2017 (default: the checkpoint's val split)")
    p.add_argument("--num-images", type=int, default=200)
    a = p.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):          # the last stdout line stays the JSON result
        s1 = (a.s1_baseline, a.s1_ours)
        if not all(Path(p).is_file() for p in s1):
            print(f"figures: no CondInst pair at {s1}: S1 shows the next rows of S2's pair", file=sys.stderr)
            s1 = None
        paths = make_figures(a.baseline, a.ours, a.out, coco_root=a.coco_root, num_images=a.num_images,
                             s1_pair=s1)
    print(json.dumps({"figures": [str(x) for x in paths]}))


if __name__ == "__main__":
    main()
