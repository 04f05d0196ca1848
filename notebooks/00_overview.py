# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Overview: Learning Equivariant Segmentation with Instance-Unique Querying
#
# Wang, Liang, Liu, *NeurIPS 2022* ([arXiv 2210.00911](https://arxiv.org/abs/2210.00911)).
#
# Query-based instance segmenters (DETR, Mask2Former, SOLQ, ...) learn one query per object, and a query
# segments its object by a dot product with per-pixel features. They are trained **scene by scene**:
# a query only ever learns to tell its instance apart from the other instances *of the same image*.
# IUQ adds two training-only losses so that queries become **unique across the whole dataset** and
# **equivariant to geometric transforms**, at no inference cost.
#
# This notebook: the problem on our embedded dataset, the method in one picture, a notation table
# from the paper's symbols to `iuq_lite` names, the dataset's statistics, and a trained baseline beside
# IUQ (committed checkpoints from `make reproduce`; nothing is trained here).

# %% tags=["parameters"]
PRESET = "shapes_long_iuq"   # config whose data and IUQ settings are shown
NUM_SHOW = 4                 # images in the look-alike gallery
SEED = 0                     # which same-class pair the cross-scene picture uses
BASELINE = "../checkpoints/shapes_long_s0/model.pt"      # converged baseline, committed by `make reproduce`
OURS = "../checkpoints/shapes_long_iuq_s0/model.pt"

# %%
import operator

import matplotlib.pyplot as plt
import numpy as np

import iuq_lite as iuq

cfg = iuq.config.from_preset(PRESET)
paths = iuq.data.shapes.ensure_from_config(cfg.data)   # generated once into data/, then cached
val = iuq.data.coco.CocoInstances(paths["val_images"], paths["val_ann"])
print(f"{PRESET}: {len(val)} val images, classes {val.class_names}")

# %% [markdown]
# ## 1 · The problem: look-alikes inside a scene and across scenes
#
# The paper's observation: a query that is trained only against the other instances of its own image
# can still *fire on look-alike instances in other images* — nothing in the intra-scene loss forbids it,
# so the learned embeddings are not discriminative enough at the dataset level. Our embedded dataset is
# built to live in that regime: many same-class, same-looking instances per image, often overlapping.
# Below, the validation images with the most instances of one class: the class view (middle row, one
# colour per class) cannot separate them; a query must pick out exactly one (bottom row, one colour
# per instance).

# %%
def most_of_one_class(image_id):
    cats = [a["category_id"] for a in val.coco.imgToAnns[image_id]]
    return max(np.bincount(cats)) if cats else 0

ranked = sorted(range(len(val)), key=lambda i: -most_of_one_class(val.ids[i]))[:NUM_SHOW]
items = [val[i] for i in ranked]
class_colors = iuq.viz.palette(val.num_classes)
panels = ([iuq.viz.to_numpy_image(img) for img, _ in items]
          + [iuq.viz.render_instances(img, t["masks"], colors=class_colors[t["labels"]]) for img, t in items]
          + [iuq.viz.render_instances(img, t["masks"]) for img, t in items])
titles = [f"image {t['image_id']}: {len(t['labels'])} instances" for _, t in items] * 3
fig = iuq.viz.show_grid(panels, titles=titles, ncols=NUM_SHOW, size=2.6,
                        suptitle="image / one colour per class / one colour per instance")
assert all(most_of_one_class(val.ids[i]) >= 2 for i in ranked)

# %% [markdown]
# **Across scenes.** The paper's fix is to make a query retrieve its instance from the *whole dataset*
# ("instance-unique querying"): a query of image A must fire on its own instance (green) and **nowhere**
# in other images — in particular not on the same-class look-alikes of image B (red). Those pixels are
# exactly the negatives of the inter-scene loss (Eq. 5), read from a memory of other images' pixels.

# %%
rng = np.random.default_rng(SEED)
a_img, a_t = items[0]
cls = int(np.bincount(a_t["labels"].numpy()).argmax())             # the look-alike class of image A
others = [i for i in range(len(val)) if i not in ranked and cls + 1 in
          [a["category_id"] for a in val.coco.imgToAnns[val.ids[i]]]]
b_img, b_t = val[int(rng.choice(others))]
areas = a_t["masks"].flatten(1).sum(1) * (a_t["labels"] == cls)     # [K] visible area, class cls only
pick = int(areas.argmax())                                          # the query's instance in A: the largest
same_b = b_t["masks"][b_t["labels"] == cls]
name = val.class_names[cls]
fig = iuq.viz.show_grid(
    [iuq.viz.render_instances(a_img, a_t["masks"][pick:pick + 1], colors=[(0.1, 0.85, 0.2)]),
     iuq.viz.render_instances(b_img, same_b, colors=[(0.95, 0.1, 0.1)])],
    titles=[f"A (image {a_t['image_id']}): the query's {name}",
            f"B (image {b_t['image_id']}): {len(same_b)} look-alikes, target 0"], size=3.2)
n_same = sum(a["category_id"] == cls + 1 for a in val.coco.anns.values())
print(f"one {name} query vs. {n_same - 1} other {name}s in the val split alone")
assert len(same_b) >= 1

# %% [markdown]
# ## 2 · The method in one picture
#
# One training step (METHOD §5): $L = L_{intra}(I) + w_{inter}\, L_{inter} + \lambda\, L_{equi}$.
#
# * **Intra-scene** (blue): the usual Mask2Former loss — Hungarian matching, class CE + mask BCE + dice.
# * **Inter-scene, Eq. 5** (orange): the query embeddings $E$ against a memory $Mem$ of *other images'*
#   instance pixels, $Z = E\,Mem^\top$, sigmoid focal loss with target 0 — a query must fire nowhere else.
#   The memory is detached (stop-gradient), a FIFO queue filled after each step.
# * **Equivariance, Eq. 8** (green): $f(g(I)) \approx g(f(I))$. Queries of the transformed image $g(I)$
#   against the *transformed features of the original image* $g(F)$ must give the transformed masks $g(M)$.
#   This is not augmentation: augmentation would train $f(g(I))$ against $g(M)$.
# * **Inference** is the base model unchanged (blue boxes only): the memory and $g$ are discarded.

# %%
fig = iuq.viz.method_schematic(inter_weight=cfg.iuq.inter.weight, equi_weight=cfg.iuq.equi.weight)

# %% [markdown]
# ## 3 · Notation: paper → `iuq_lite`
#
# | paper | meaning | `iuq_lite` |
# |---|---|---|
# | $I$ | a batch of images in $[0,1]$ | `images` `[B,3,H,W]` |
# | $F = f(I)$ | per-pixel features (stride 4) | `outputs["mask_features"]` `[B,C,h,w]` |
# | $E$ | query mask embeddings | `outputs["mask_embed"]` `[B,Q,C]` |
# | $E \cdot F$ | mask logits (dot product) | `outputs["pred_masks"]` `[B,Q,h,w]` |
# | class scores | $K$ classes + no-object | `outputs["pred_logits"]` `[B,Q,K+1]` |
# | model | backbone + pixel decoder + query decoder | `iuq.model.build_model(cfg)` |
# | $L_{intra}$ | matching + CE + BCE + dice | `iuq.matcher.HungarianMatcher`, `iuq.losses.SetCriterion` |
# | $Mem$ | external memory of instance pixels | `iuq.iuq.PixelMemory(...).features` `[M,C]` |
# | Eq. 5, $L_{inter}$ | inter-scene focal loss against $Mem$ | `iuq.iuq.inter_mask_loss` |
# | $g$ | a geometric transform | `iuq.transforms.sample(...)` → `g.image`, `g.masks`, `g.features` |
# | Eq. 8, $L_{equi}$ | equivariance loss | `iuq.iuq.equivariance_loss` |
# | $L$ | the whole objective | `iuq.iuq.IUQCriterion` |
# | $w_{inter}$, $\lambda$, $\alpha$, $\gamma$ | hyper-parameters | `cfg.iuq.inter.*`, `cfg.iuq.equi.*` |
#
# The values for this preset, read from the config (never restated in prose, so they cannot drift):

# %%
names = ["model.build_model", "matcher.HungarianMatcher", "losses.SetCriterion", "iuq.PixelMemory",
         "iuq.inter_mask_loss", "transforms.sample", "iuq.equivariance_loss", "iuq.IUQCriterion"]
for name in names:                      # every name of the table exists in the library
    assert callable(operator.attrgetter(name)(iuq)), name
symbols = {"Q (queries)": "model.num_queries", "C (embedding dim)": "model.mask_dim",
           "K (classes)": "model.num_classes", "w_inter": "iuq.inter.weight",
           "M (memory capacity, px)": "iuq.inter.capacity",
           "pixels per instance": "iuq.inter.pixels_per_instance",
           "alpha (focal)": "iuq.inter.alpha", "gamma (focal)": "iuq.inter.gamma",
           "lambda": "iuq.equi.weight", "g kinds": "iuq.equi.kinds",
           "intra: class weight": "loss.class_weight", "intra: BCE weight": "loss.mask_weight",
           "intra: dice weight": "loss.dice_weight"}
for sym, key in symbols.items():
    print(f"{sym:26s} cfg.{key:32s} = {operator.attrgetter(key)(cfg)}")
assert cfg.iuq.inter.enabled and cfg.iuq.equi.enabled       # the *_iuq preset switches both losses on

# %% [markdown]
# ## 4 · The embedded dataset
#
# Procedural textured shapes in COCO-2017 layout (RLE masks), generated from a seed. Each annotation
# carries a `"groups"` list naming the failure groups of the paper's Figure S3 it belongs to
# (an instance can be in several groups, or none). Counts for the training split:

# %%
st = iuq.data.shapes.stats(paths["train_ann"])
print({k: st[k] for k in ("images", "instances", "mean_instances_per_image", "dropped_instances")})
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
for ax, key in zip(axes, ("per_group", "per_class")):
    ax.bar(list(st[key]), list(st[key].values()), color=iuq.viz.palette(len(st[key])))
    ax.set_title(f"instances {key.replace('_', ' ')}")
    ax.tick_params(axis="x", labelrotation=25)
fig.tight_layout()
print("COCO area buckets small / medium / large:", st["area_small_medium_large"])
assert sum(st["per_class"].values()) == st["instances"]
assert all(n > 0 for n in st["per_group"].values())
assert st["area_small_medium_large"][2] == 0          # 128 px: no "large" objects, so segm/APl is None

# %% [markdown]
# ## 5 · Baseline and IUQ side by side
#
# Both models share the architecture, data, seed and number of steps; only the two training losses differ.
# Inference is identical: IUQ's memory and second forward exist only in training. Their COCO metrics on the
# full val split are recorded in each checkpoint's `manifest.json`; below, four val images with each
# model's predictions (score > 0.5) and the ground truth.

# %%
import json
from pathlib import Path

runs = {name: iuq.checkpoint.load_model(path) for name, path in (("baseline", BASELINE), ("IUQ", OURS))}
manifests = {name: json.loads((Path(p).parent / "manifest.json").read_text())
             for name, p in (("baseline", BASELINE), ("IUQ", OURS))}
for name, m in manifests.items():
    print(f"{name:8s} preset {m['preset']:10s} AP {m['metrics']['segm/AP']:.1f}  AP50 {m['metrics']['segm/AP50']:.1f}"
          f"  AP@occluded_similar {m['metrics']['segm/AP@occluded_similar']:.1f}")
assert runs["baseline"][1].model == runs["IUQ"][1].model and runs["baseline"][1].train == runs["IUQ"][1].train

# %%
import torch

images, targets = iuq.data.coco.collate([val[i] for i in range(NUM_SHOW)])
panels, titles = [], []
with torch.no_grad():
    preds = {name: iuq.evaluate.postprocess(model(images), [tuple(t["size"].tolist()) for t in targets])
             for name, (model, _) in runs.items()}
for i, t in enumerate(targets):
    panels.append(iuq.viz.render_instances(images[i], t["masks"]))
    titles.append(f"ground truth ({len(t['masks'])})")
    for name, p in preds.items():
        keep = p[i]["scores"] > 0.5
        panels.append(iuq.viz.render_instances(images[i], p[i]["masks"][keep]))
        titles.append(f"{name} ({int(keep.sum())})")
iuq.viz.show_grid(panels, titles=titles, ncols=3, size=2.6);

# %% [markdown]
# ## Summary
#
# * Query-based segmenters learn queries scene by scene; with many look-alikes a query can fire on
#   instances of other images, because the intra-scene loss never sees them.
# * IUQ adds, for training only: the **inter-scene loss** (Eq. 5) against a detached memory of other
#   images' pixels, and the **equivariance loss** (Eq. 8), queries of $g(I)$ against $g(f(I))$.
# * The notation table maps every symbol to the `iuq` name that implements it; the values come from the
#   config. Notebook 01 opens the base model; 02-04 take the three ideas one at a time.
#
# ## Exercises
#
# 1. Generate a small split with `iuq.data.shapes.generate(..., occluded_similar=0.5)` and redraw the group
#    bar chart. Which other groups change, and why (hint: read how `"occluded_similar"` is assigned)?
# 2. How many (query, memory pixel) logits does Eq. 5 compute per step for this preset? Write it in terms
#    of `cfg.train.batch_size`, `cfg.model.num_queries` and `cfg.iuq.inter.capacity`, then compute it.
# 3. Why must the memory be detached? Think about what the gradient would do to the *other* images'
#    features if it were not.
