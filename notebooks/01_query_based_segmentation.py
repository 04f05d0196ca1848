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
# # 01 · Query-based segmentation: the base model IUQ plugs into
#
# IUQ changes only the *training* of a query-based segmenter. This notebook opens that segmenter
# (METHOD §1): the data it eats (COCO json with RLE masks), the model's anatomy with every tensor's
# shape, masks as dot products, the Hungarian matching of queries to instances, and the intra-scene
# losses. It ends with a ten-second `tiny` training run to watch the loss fall.

# %% tags=["parameters"]
PRESET = "shapes"            # model and data config (the baseline; IUQ comes in notebooks 03-04)
BATCH = 2                    # images in the example batch
IMAGE = 0                    # which image of the batch the matching section looks at
SEED = 0                     # model initialisation and the matcher's sampled points
TRAIN_TINY = True            # run the `tiny` preset for its few steps at the end

# %%
import json
import tempfile

import matplotlib.pyplot as plt
import torch
from pycocotools import mask as mask_util
from scipy.optimize import linear_sum_assignment

import iuq_lite as iuq

cfg = iuq.config.from_preset(PRESET)
paths = iuq.data.shapes.ensure_from_config(cfg.data)   # cached in data/ after the first call
torch.manual_seed(SEED)

# %% [markdown]
# ## 1 · The data: a COCO instances json
#
# The embedded dataset uses the COCO-2017 layout, so everything below works unchanged on real COCO.
# Masks are stored as **RLE** (run-length encoding), since polygons cannot hold holes; each annotation also
# carries our extra `"groups"` list (the paper's Figure S3 failure groups it belongs to).

# %%
with open(paths["val_ann"]) as fh:
    coco = json.load(fh)
print("top-level keys:", list(coco))
print("categories:", [(c["id"], c["name"]) for c in coco["categories"]])
ann = coco["annotations"][0]
shown = {**ann, "segmentation": {**ann["segmentation"], "counts": ann["segmentation"]["counts"][:32] + "..."}}
print("one annotation:")
for key, value in shown.items():
    print(f"  {key!r}: {value!r}")
n_grouped = sum(bool(a["groups"]) for a in coco["annotations"])
print(f"{n_grouped} of {len(coco['annotations'])} val annotations are in at least one failure group")

# %% [markdown]
# `pycocotools` decodes an RLE into a binary mask; its area is the annotation's `"area"`.

# %%
rle_mask = mask_util.decode(ann["segmentation"]).astype(bool)       # [H,W]
val = iuq.data.coco.CocoInstances(paths["val_images"], paths["val_ann"])
image, target = val[val.ids.index(ann["image_id"])]
fig = iuq.viz.show_grid([iuq.viz.to_numpy_image(image), iuq.viz.render_instances(image, rle_mask[None]),
                         iuq.viz.render_instances(image, target["masks"])],
                        titles=[f"image {ann['image_id']}", f"annotation {ann['id']}: {ann['groups']}",
                                f"all {len(target['labels'])} instances"], size=3)
assert rle_mask.sum() == ann["area"]
assert (torch.from_numpy(rle_mask) == target["masks"][0]).all()   # the dataset decodes the same mask

# %% [markdown]
# ## 2 · `CocoInstances` items and batches
#
# An item is `(image [3,H,W] float in [0,1], target)`; `collate` pads a batch to a multiple of 32
# (the backbone's largest stride) and records each image's real size in `target["size"]`.

# %%
def describe(x):
    return f"{tuple(x.shape)} {x.dtype}" if torch.is_tensor(x) else repr(x)

print("image :", describe(image), f"range [{image.min():.2f}, {image.max():.2f}]")
for key, value in target.items():
    print(f"target[{key!r}]:", describe(value))
images, targets = iuq.data.coco.collate([val[i] for i in range(BATCH)])
print("batch :", describe(images), "| sizes", [t["size"].tolist() for t in targets])
assert images.shape[-1] % iuq.data.coco.PAD_MULTIPLE == 0

# %% [markdown]
# ## 3 · The model's anatomy
#
# Mask2Former-style (Cheng et al., 2022): a backbone and an FPN **pixel decoder** give per-pixel features
# $F = f(I)$ at stride 4; a **query decoder** (masked cross-attention → self-attention → FFN per layer)
# turns $Q$ learned queries into class logits and mask embeddings $E$. Prediction heads run before the
# first layer and after every layer (deep supervision), so there are `dec_layers` auxiliary outputs.

# %%
model = iuq.model.build_model(cfg).eval()
with torch.no_grad():
    out = model(images)
for key, value in out.items():
    print(f"{key:14s}", describe(value) if torch.is_tensor(value) else f"list of {len(value)} dicts "
          f"with keys {list(value[0])}")
B, Q, K, C = BATCH, cfg.model.num_queries, cfg.model.num_classes, cfg.model.mask_dim
h, w = (s // model.mask_stride for s in images.shape[-2:])
assert out["pred_logits"].shape == (B, Q, K + 1) and out["pred_masks"].shape == (B, Q, h, w)
assert out["mask_embed"].shape == (B, Q, C) and out["mask_features"].shape == (B, C, h, w)
assert len(out["aux_outputs"]) == cfg.model.dec_layers

# %% [markdown]
# Parameters per part (randomly initialised here; the decoder layers hold most of them):

# %%
m = cfg.model
print(f"backbone {m.backbone!r}, {m.dec_layers} decoder layers, width {m.hidden_dim}, Q = {m.num_queries}")
counts = {name: sum(p.numel() for p in part.parameters()) for name, part in model.named_children()}
for name, n in counts.items():
    print(f"{name:14s} {n:>10,d}")
print(f"{'total':14s} {sum(counts.values()):>10,d}")
assert sum(counts.values()) == sum(p.numel() for p in model.parameters())

# %% [markdown]
# ## 4 · Masks are dot products
#
# Each query's mask logit at a pixel is the dot product of its embedding with the pixel's feature:
# $\hat m_q = E_q \cdot F$, i.e. `einsum('bqc,bchw->bqhw', mask_embed, mask_features)`. This is the
# hook IUQ uses: the same $E_q$ can be dotted with pixels of *other* images (the memory, Eq. 5) or with
# *transformed* features $g(F)$ (Eq. 8).

# %%
dots = torch.einsum("bqc,bchw->bqhw", out["mask_embed"], out["mask_features"])
assert torch.allclose(out["pred_masks"], dots, atol=1e-5)
F0, M0 = out["mask_features"][IMAGE], out["pred_masks"][IMAGE].sigmoid()
panels = ([iuq.viz.to_numpy_image(images[IMAGE])]
          + [iuq.viz.render_heatmap(f, vmin=float(f.min()), vmax=float(f.max())) for f in F0[:3]]
          + [iuq.viz.render_heatmap(M0[q]) for q in range(4)])
fig = iuq.viz.show_grid(panels, titles=["image"] + [f"F channel {c}" for c in range(3)]
                        + [f"sigmoid(E_{q}·F)" for q in range(4)], ncols=4, size=2.4,
                        suptitle="untrained: features and query masks are still arbitrary")

# %% [markdown]
# ## 5 · Hungarian matching
#
# Training needs to know which query should predict which ground-truth instance. DETR's answer: the
# one-to-one assignment minimising a cost, here (METHOD §1) `class_weight`·class + `mask_weight`·BCE +
# `dice_weight`·dice, the mask terms on points sampled uniformly in the image. The cost functions in
# `iuq.matcher` are pure; below we evaluate them for one image, add them up, and let `scipy` solve the
# assignment. Two things to notice in the picture: when the instances share a class (common in this
# dataset) the class cost is constant along each row, so only the mask terms tell look-alikes apart;
# and for an untrained model all costs are nearly flat, yet the assignment is still one-to-one.

# %%
one = {k: out[k][IMAGE:IMAGE + 1] for k in ("pred_logits", "pred_masks")}
tgt = targets[IMAGE]
coords = torch.rand(1, cfg.loss.num_points, 2, generator=torch.Generator().manual_seed(SEED))    # [1,P,2]
pred_pts = iuq.losses.point_sample(one["pred_masks"], coords)                                   # [1,Q,P]
tgt_pts = iuq.losses.point_sample(tgt["masks"][None].float(), coords)                           # [1,T,P]
costs = {"class": iuq.matcher.batch_class_cost(one["pred_logits"], tgt["labels"][None]),
         "BCE": iuq.matcher.batch_sigmoid_ce_cost(pred_pts, tgt_pts),
         "dice": iuq.matcher.batch_dice_cost(pred_pts, tgt_pts)}
weights = {"class": cfg.loss.class_weight, "BCE": cfg.loss.mask_weight, "dice": cfg.loss.dice_weight}
costs["total"] = sum(weights[k] * costs[k] for k in weights)                                    # [1,Q,T]
rows, cols = linear_sum_assignment(costs["total"][0].numpy())
matcher = iuq.matcher.HungarianMatcher(cost_class=weights["class"], cost_mask=weights["BCE"],
                                       cost_dice=weights["dice"], num_points=cfg.loss.num_points)
index_q, index_t = matcher(one, [tgt], generator=torch.Generator().manual_seed(SEED))[0]
assert (index_q.numpy() == rows).all() and (index_t.numpy() == cols).all()   # same points, same answer
assert len(set(rows)) == len(tgt["labels"])                                  # one query per instance

# %%
fig, axes = plt.subplots(1, 4, figsize=(13, 4.2))
for ax, (name, cost) in zip(axes, costs.items()):
    im = ax.imshow(cost[0].numpy(), aspect="auto", cmap="viridis")
    ax.scatter(cols, rows, marker="s", facecolors="none", edgecolors="red", s=40)
    ax.set_title(f"{name} cost" + (f" (x{weights[name]})" if name in weights else ""))
    ax.set_xlabel("ground-truth instance")
    fig.colorbar(im, ax=ax, fraction=0.05)
axes[0].set_ylabel("query")
fig.suptitle("cost matrices [Q, T] for one image; red squares = the Hungarian assignment")
fig.tight_layout()
print("instance classes:", [val.class_names[c] for c in tgt["labels"].tolist()])
print("query -> instance:", dict(zip(rows.tolist(), cols.tolist())))

# %% [markdown]
# ## 6 · The intra-scene losses
#
# `SetCriterion` matches every decoder layer's prediction (deep supervision), then computes for each:
# class cross-entropy over all queries (unmatched ones target *no-object*, down-weighted by
# `no_object_weight`), and sigmoid BCE + dice of the matched masks on importance-sampled points
# (Mask2Former §3.3), normalised by the number of ground-truth masks. Every term comes back already
# weighted, so the loss is `sum(losses.values())`. This is $L_{intra}$; IUQ adds its two terms to it.

# %%
criterion = iuq.losses.SetCriterion(cfg.loss, cfg.model.num_classes, matcher)
with torch.no_grad():
    losses, indices = criterion(out, targets, return_indices=True)
terms = ("loss_ce", "loss_mask", "loss_dice")
print(f"{'prediction head':20s}" + "".join(f"{t:>11s}" for t in terms))
for i in range(len(out["aux_outputs"]) + 1):       # aux i = the head before decoder layer i+1; then final
    name, suffix = (f"aux {i} (before L{i + 1})", f"_{i}") if i < len(out["aux_outputs"]) else ("final", "")
    print(f"{name:20s}" + "".join(f"{float(losses[t + suffix]):11.3f}" for t in terms))
print(f"total = {float(sum(losses.values())):.3f} over {len(losses)} terms")
assert len(losses) == 3 * (cfg.model.dec_layers + 1)
ce = criterion.class_loss(out["pred_logits"], targets, indices)      # unweighted, from the same matching
assert torch.isclose(losses["loss_ce"], cfg.loss.class_weight * ce)

# %% [markdown]
# ## 7 · Training, briefly
#
# `iuq.train.train(cfg)` runs the whole loop (data, model, matcher, criterion, AdamW, cosine schedule) and
# writes a run folder. The `tiny` preset is a miniature model on 64-px images, meant for tests; a few
# steps are enough to see the intra-scene loss fall (not to segment anything: notebooks 02-05 load
# committed checkpoints for that).

# %%
if TRAIN_TINY:
    tiny = iuq.config.from_preset("tiny", {"train.log_every": 2, "train.eval_at_end": False})
    with tempfile.TemporaryDirectory() as run_dir:
        result = iuq.train.train(tiny, out=run_dir, progress=True)    # a tqdm bar (a widget in Jupyter)
    hist = result.history
    plt.figure(figsize=(6, 3))
    for key in ("loss", "loss_ce", "loss_mask", "loss_dice"):
        label = "loss (all layers)" if key == "loss" else f"{key} (final layer)"
        plt.plot([r["step"] for r in hist], [r[key] for r in hist], label=label, marker=".")
    plt.xlabel("step")
    plt.ylabel("weighted loss")
    plt.legend()
    plt.title(f"tiny: {tiny.train.iters} steps")
    print(f"{result.seconds:.1f} s; loss {hist[0]['loss']:.2f} (step {hist[0]['step']}) -> "
          f"{hist[-1]['loss']:.2f} (step {hist[-1]['step']})")
    assert hist[-1]["loss"] < hist[0]["loss"]

# %% [markdown]
# ## Summary
#
# * Data: COCO json, RLE masks (holes allowed), an extra per-annotation `"groups"` list; items are
#   `(image [3,H,W], target)` and batches are padded to a multiple of 32.
# * Model: backbone → pixel decoder → $F$ `[B,C,h,w]`; query decoder → $E$ `[B,Q,C]` and class logits
#   `[B,Q,K+1]`; masks are $E \cdot F$, with one auxiliary prediction per decoder layer.
# * Training: Hungarian matching on a weighted class + BCE + dice cost, then CE + BCE + dice on every
#   layer. Every term sees **one image at a time** — the gap IUQ's inter-scene loss closes (notebook 03).
#
# ## Exercises
#
# 1. Set `cost_class=0` in the matcher above. Which assignments change, and why might a class-blind
#    matcher hurt early in training?
# 2. Recompute the losses with `iuq.config.from_preset(PRESET, {"loss.deep_supervision": False})`. How many
#    terms remain? What does deep supervision buy a 6-layer decoder?
# 3. Take one query's embedding $E_q$ from image 0 and dot it with image 1's `mask_features`. What does
#    the resulting map mean, and which loss in IUQ pushes it towards zero?
