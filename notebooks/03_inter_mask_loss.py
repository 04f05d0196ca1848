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
# # 03 · The inter-scene mask loss (Eq. 5) and the pixel memory
#
# IUQ's first idea: a query of image $I$ must retrieve its instance from the **whole dataset**, so it must
# fire nowhere in other images. Other images' pixels come from an external memory $Mem$ (METHOD §2-§3):
#
# $$Z = E\,Mem^\top \in \mathbb{R}^{B \times Q \times M}, \qquad
#   L_{inter} = \operatorname{mean}_{\text{kept }(b,q,j)} \mathrm{FL}(Z_{bqj},\, 0),$$
#
# with $\mathrm{FL}$ the sigmoid focal loss ($\alpha$, $\gamma$ from the config). This notebook derives it on
# a tiny case with plain torch ops and checks the library's fused kernel against it (value **and** gradient),
# adds the two exclusions and the stuff-class rule, fills a memory from real features, and reads the
# capacity sweep (the paper's Table S4 analog) from the committed results.

# %% tags=["parameters"]
BASELINE = "checkpoints/shapes_long_s0/model.pt"      # relative to the repository root (`make reproduce`)
OURS = "checkpoints/shapes_long_iuq_s0/model.pt"      # the same preset with IUQ
B, Q, M, C = 2, 3, 6, 4      # the tiny case: images, queries per image, memory pixels, embedding width
BATCH = 8                    # val images per memory push
STEPS = 6                    # memory pushes
CAPACITY = 12_000            # pixels; small, so that the FIFO wraps around within STEPS pushes
SEED = 0

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display
from torchvision.ops import sigmoid_focal_loss

import iuq_lite as iuq

# %% [markdown]
# The two committed checkpoints, loaded strictly (the weights' sha256 and config must match their
# manifest), and the inter-scene settings the IUQ model was trained with.

# %%
models, cfgs = {}, {}
for name, path in (("baseline", BASELINE), ("IUQ", OURS)):
    models[name], cfgs[name], _ = iuq.checkpoint.load_checkpoint(path, root=iuq.studies.ROOT)
    print(f"{name:8s} {path}: preset {cfgs[name].preset!r}, inter-scene loss {cfgs[name].iuq.inter.enabled}")
cfg = cfgs["IUQ"]                                     # the inter-scene settings it was trained with
alpha, gamma, ppi = cfg.iuq.inter.alpha, cfg.iuq.inter.gamma, cfg.iuq.inter.pixels_per_instance
print(f"alpha = {alpha}, gamma = {gamma}, pixels per instance = {ppi}, capacity = {cfg.iuq.inter.capacity}")
paths = iuq.data.shapes.ensure_from_config(cfg.data)
val = iuq.data.coco.CocoInstances(paths["val_images"], paths["val_ann"])

# %% [markdown]
# ## 1 · Logits: every query against every memory pixel
#
# A query's mask on its own image is $E_q \cdot F$ (notebook 01). The same dot product with *stored* pixel
# features of other images gives one logit per (query, memory pixel): `einsum('bqc,mc->bqm', E, Mem)`.
# The memory is detached (stop-gradient), so only $E$ receives a gradient.

# %%
gen = torch.Generator().manual_seed(SEED)
E = torch.randn(B, Q, C, generator=gen, requires_grad=True)       # query mask embeddings of this batch
mem = torch.randn(M, C, generator=gen)                             # other images' pixel features (no grad)
Z = torch.einsum("bqc,mc->bqm", E, mem)                            # [B,Q,M] logits
print("E   ", tuple(E.shape), "  [B,Q,C]")
print("Mem ", tuple(mem.shape), "     [M,C]")
print("Z   ", tuple(Z.shape), "  [B,Q,M]   one logit per (query, memory pixel)")
assert torch.allclose(Z[1, 2, 4], E[1, 2] @ mem[4])

# %% [markdown]
# ## 2 · The focal loss against zeros
#
# Every target is 0 (for thing classes): a query should not fire on any pixel of another image. With
# $t = 0$ the sigmoid focal loss $-\alpha_t (1-p_t)^\gamma \log p_t$ reduces to
# $(1-\alpha)\,\sigma(z)^\gamma\,\mathrm{softplus}(z)$: logits that are already negative cost almost nothing,
# so the loss concentrates on the pairs where the query *does* fire. Three ways to compute it: by hand,
# with `torchvision.ops.sigmoid_focal_loss`, and with the library's fused, chunked kernel
# (`iuq.iuq.inter_mask_loss`, which never holds the `[B,Q,M]` tensor at once).

# %%
by_hand = ((1 - alpha) * Z.sigmoid() ** gamma * F.softplus(Z)).mean()
tv = sigmoid_focal_loss(Z, torch.zeros_like(Z), alpha=alpha, gamma=gamma, reduction="mean")
lib = iuq.iuq.inter_mask_loss(E, mem, alpha=alpha, gamma=gamma)
grads = {k: torch.autograd.grad(v, E, retain_graph=True)[0] for k, v in
         {"by hand": by_hand, "torchvision": tv, "library": lib}.items()}
for k, v in zip(grads, (by_hand, tv, lib)):
    print(f"{k:12s} loss {float(v.detach()):.6f}   |dL/dE| {float(grads[k].norm()):.6f}")
assert torch.allclose(by_hand, tv, rtol=1e-5) and torch.allclose(lib, tv, rtol=1e-5)
assert all(torch.allclose(g, grads["torchvision"], rtol=1e-4, atol=1e-7) for g in grads.values())

# %%
z = torch.linspace(-6, 6, 241)
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(z, F.softplus(z), label="BCE against 0 = softplus(z)")
ax.plot(z, (1 - alpha) * z.sigmoid() ** gamma * F.softplus(z), label=f"focal, alpha={alpha}, gamma={gamma}")
ax.set_xlabel("logit z = E_q · Mem_j")
ax.set_ylabel("loss")
ax.set_yscale("log")
ax.legend()
ax.set_title("the focal loss ignores pixels on which the query is already off")
fig.tight_layout()

# %% [markdown]
# ## 3 · What is left out: own-image pixels and masked queries
#
# The memory may hold pixels of the *current* image (it was pushed in an earlier epoch, or it is an in-batch
# pixel); those are its own instances, not negatives, so pairs with `memory_image_ids[j] == image_ids[b]`
# are excluded. Queries can be left out too (`query_mask`, e.g. matched queries only). The loss is the
# mean over the **kept** pairs.

# %%
image_ids = torch.arange(B) + 100                                   # [B] this batch's image ids
mem_ids = 100 + torch.arange(M) % (B + 1)                           # [M] ids 100..100+B: some are own pixels
query_mask = torch.ones(B, Q, dtype=torch.bool)
query_mask[0, -1] = False                                           # leave one query out
keep = (mem_ids[None, :] != image_ids[:, None])[:, None, :] & query_mask[:, :, None]   # [B,Q,M]
focal = sigmoid_focal_loss(Z, torch.zeros_like(Z), alpha=alpha, gamma=gamma, reduction="none")
by_hand = (focal * keep).sum() / keep.sum()
lib = iuq.iuq.inter_mask_loss(E, mem, memory_image_ids=mem_ids, image_ids=image_ids, query_mask=query_mask,
                              alpha=alpha, gamma=gamma)
print(f"kept {int(keep.sum())} of {keep.numel()} pairs; loss by hand {float(by_hand.detach()):.6f}, "
      f"library {float(lib.detach()):.6f}")
grad_lib, grad_hand = (torch.autograd.grad(v, E, retain_graph=True)[0] for v in (lib, by_hand))
assert torch.allclose(lib, by_hand, rtol=1e-5) and torch.allclose(grad_lib, grad_hand, rtol=1e-4, atol=1e-7)
fig, ax = plt.subplots(figsize=(4, 3))
ax.imshow(keep.reshape(B * Q, M).numpy(), cmap="gray", vmin=0, vmax=1)
ax.set_xticks(range(M), mem_ids.tolist())
ax.set_xlabel("memory pixel j, labelled by its image id")
ax.set_yticks(range(B * Q), [f"b{b} (img {int(image_ids[b])}) q{q}" for b in range(B) for q in range(Q)])
ax.set_title("kept pairs (white)")
fig.tight_layout()

# %% [markdown]
# ## 4 · The stuff-class target rule
#
# For panoptic segmentation (supplement §S1) a query matched to a **stuff** class $c$ gets target
# $\mathbb{1}[\text{label}_j = c]$: stuff is instance-agnostic, so the same stuff class in another image is a
# positive. Callers pass `query_labels[b,q] = c` for such a query and $-1$ for every other query, whose
# targets stay 0. (Our shapes data has no stuff; the rule is kept for a panoptic variant.)

# %%
mem_labels = torch.arange(M) % 3                                    # [M] class of each memory pixel
query_labels = torch.full((B, Q), -1)
query_labels[1, 0] = 2                                              # one query matched to stuff class 2
target = ((query_labels[:, :, None] >= 0) & (query_labels[:, :, None] == mem_labels)).float()   # [B,Q,M]
by_hand = sigmoid_focal_loss(Z, target, alpha=alpha, gamma=gamma, reduction="mean")
lib = iuq.iuq.inter_mask_loss(E, mem, memory_labels=mem_labels, query_labels=query_labels,
                              alpha=alpha, gamma=gamma)
print("targets of query (b=1, q=0):", target[1, 0].int().tolist(), "  memory labels:", mem_labels.tolist())
print(f"{int(target.sum())} positive pairs; loss by hand {float(by_hand.detach()):.6f}, "
      f"library {float(lib.detach()):.6f}")
grad_lib, grad_hand = (torch.autograd.grad(v, E, retain_graph=True)[0] for v in (lib, by_hand))
assert torch.allclose(lib, by_hand, rtol=1e-5) and torch.allclose(grad_lib, grad_hand, rtol=1e-4, atol=1e-7)

# %% [markdown]
# ## 5 · The memory bank filling up
#
# `PixelMemory` (METHOD §3) is a FIFO ring buffer of **instance** pixels with their class, source image id
# and position. After each step, every instance of every image contributes a fixed number of pixels
# (instance-balanced, so large objects do not dominate; masks nearest-downsampled to the feature grid).
# Below: `STEPS` pushes of real features from both checkpoints, into a deliberately small memory. The
# same seeded generator draws the same pixels for both models (sampling reads only masks and generator).

# %%
memories = {name: iuq.iuq.PixelMemory(CAPACITY, cfg.model.mask_dim, pixels_per_instance=ppi)
            for name in models}
gens = {name: torch.Generator().manual_seed(SEED) for name in models}
log, pushed, slots = [], {name: [] for name in models}, []
with torch.no_grad():
    for step in range(STEPS):
        images, targets = iuq.data.coco.collate([val[i] for i in range(step * BATCH, (step + 1) * BATCH)])
        batch = [[t[k] for t in targets] for k in ("masks", "labels", "image_id")]   # per-image lists
        for name, model in models.items():
            feats = model(images)["mask_features"]                                   # [BATCH,C,h,w]
            pushed[name].append(memories[name].push(feats, *batch, generator=gens[name]))  # the sample
        mm = memories["baseline"]
        log.append({"step": step + 1, "pushed": len(pushed["baseline"][-1]["labels"]), "len": len(mm),
                    "ptr": mm.ptr, "oldest image": int(mm.image_ids[mm.order[0]]),
                    "newest image": int(mm.image_ids[mm.order[-1]])})
        slots.append(torch.cat([mm.image_ids, torch.full((CAPACITY - len(mm),), -1)]))   # image id per slot
        print(log[-1])
assert torch.equal(memories["baseline"].image_ids, memories["IUQ"].image_ids)   # same pixels, other features

# %% [markdown]
# Until the memory is full, `len()` grows by each push; then the oldest entries are overwritten (the ring
# pointer `ptr` wraps around), so the memory always holds exactly the newest `CAPACITY` pixels.

# %%
total = np.cumsum([r["pushed"] for r in log])
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 3))
im = ax2.imshow(np.ma.masked_less(torch.stack(slots).numpy(), 0), aspect="auto", interpolation="nearest")
ax2.set_xlabel("memory slot")
ax2.set_ylabel("after push")
ax2.set_yticks(range(STEPS), range(1, STEPS + 1))
ax2.set_title("source image id per slot (white = empty): the ring wraps around")
fig.colorbar(im, ax=ax2, label="image id")
ax.plot([r["step"] for r in log], total, "o--", label="pixels pushed so far")
ax.plot([r["step"] for r in log], [r["len"] for r in log], "o-", label="len(memory)")
ax.axhline(CAPACITY, color="k", lw=0.8, ls=":", label="capacity")
ax.set_xlabel("push")
ax.set_ylabel("pixels")
ax.legend()
fig.tight_layout()
mm, everything = memories["baseline"], torch.cat([p["features"] for p in pushed["baseline"]])
assert [r["len"] for r in log] == np.minimum(total, CAPACITY).tolist()
assert torch.equal(mm.features[mm.order], everything[-CAPACITY:])                # FIFO: the newest CAPACITY

# %% [markdown]
# **Instance-balanced sampling.** One push takes `pixels_per_instance` pixels from every instance that
# covers at least one cell of the feature grid — distinct pixels when it has that many, with replacement
# when it is smaller — whatever its area. Large objects would otherwise dominate the negatives. On 128-px
# images the feature grid is small, so count how many of the sampled pixels are distinct.

# %%
images, targets = iuq.data.coco.collate([val[i] for i in range(BATCH)])
with torch.no_grad():
    feats = models["baseline"](images)["mask_features"]
s = images.shape[-1] // feats.shape[-1]                                      # feature stride
areas = torch.cat([t["masks"][:, ::s, ::s].flatten(1).sum(1) for t in targets])   # [K] cells per instance
sample = mm.sample_pixels(feats, [t["masks"] for t in targets], [t["labels"] for t in targets],
                          [t["image_id"] for t in targets], generator=torch.Generator().manual_seed(SEED))
where = torch.cat([sample["image_ids"][:, None].float(), sample["positions"]], 1)      # [N,3]: image, y, x
print(f"{len(areas)} instances, {int((areas > 0).sum())} visible at stride {s}, "
      f"{int((areas < ppi).sum())} with fewer than {ppi} cells: {len(sample['labels'])} pixels sampled, "
      f"{len(torch.unique(where, dim=0))} of them distinct")
fig, ax = plt.subplots(figsize=(7, 3))
ax.bar(range(len(areas)), areas.sort(descending=True).values, label="instance area (feature cells)")
ax.axhline(ppi, color="C3", label=f"pixels sampled per instance ({ppi})")
ax.set_xlabel("instance (sorted by area)")
ax.set_yscale("log")
ax.set_ylim(top=10 * float(areas.max()))
ax.legend(loc="upper right")
fig.tight_layout()
assert len(sample["labels"]) == ppi * int((areas > 0).sum())

# %% [markdown]
# ## 6 · Eq. 5 on real features
#
# The loss of a new batch against each model's memory: every query of the batch against every stored
# pixel (minus its own image's). The fused kernel equals the naive `einsum` + torchvision reference
# (`iuq.iuq.inter_mask_loss_reference`), here at a realistic size. Which model has the lower value, and
# how many of its (query, pixel) logits are positive, is measured below; only the IUQ checkpoint was
# trained on this loss.

# %%
images, targets = iuq.data.coco.collate([val[i] for i in range(STEPS * BATCH, (STEPS + 1) * BATCH)])
ids = torch.tensor([t["image_id"] for t in targets])
with torch.no_grad():
    for name, model in models.items():
        E_real, mem_real = model(images)["mask_embed"], memories[name]                  # [BATCH,Q,C], [M,C]
        kw = {"memory_image_ids": mem_real.image_ids, "image_ids": ids, "alpha": alpha, "gamma": gamma}
        t0 = time.perf_counter()
        fused = iuq.iuq.inter_mask_loss(E_real, mem_real.features, **kw)
        t1 = time.perf_counter()
        naive = iuq.iuq.inter_mask_loss_reference(E_real, mem_real.features, **kw)
        t2 = time.perf_counter()
        fires = float((torch.einsum("bqc,mc->bqm", E_real, mem_real.features) > 0).float().mean())
        print(f"{name:8s} Z {tuple(E_real.shape[:2]) + (len(mem_real),)}: L_inter {float(fused):.5f} "
              f"(reference {float(naive):.5f}); positive logits {fires:.4f}; "
              f"{1e3 * (t1 - t0):.0f} ms fused vs {1e3 * (t2 - t1):.0f} ms naive (forward only, busy CPU)")
        assert torch.allclose(fused, naive, rtol=1e-4)

# %% [markdown]
# ## 7 · How large must the memory be? (Table S4 analog)
#
# The paper varies the capacity (CondInst R50 on COCO): no inter-scene loss, in-batch negatives only
# ("mini-batch only"), then 10k-100k pixels, reporting AP, training time and GPU memory. Our analog uses
# the `shapes` baseline with the inter-scene loss alone at several capacities (`iuq.studies.STUDIES`),
# one seed each, read from `results/capacity.json` (written by `make reproduce`).

# %%
for row, preset, overrides, seeds in iuq.studies.STUDIES["capacity"]:
    inter = iuq.config.from_preset(preset, overrides).iuq.inter
    print(f"{row:16s} {preset:8s} seeds {list(seeds)} inter-scene loss {inter.enabled}, capacity {inter.capacity}")
results = iuq.studies.load_results("capacity")
table = iuq.studies.markdown_table("capacity")
if not results["runs"]:
    print("\nresults/capacity.json does not exist yet: `make reproduce` has not produced the capacity sweep.")
else:
    display(Markdown(table))

# %% [markdown]
# Each row's AP recomputed from the raw runs must be what the table shows, and the same numbers as a
# picture: AP and step time against the capacity (the mini-batch-only row at 0, the baseline left out).

# %%
rows = iuq.studies.summarize("capacity")
capacity = {row: iuq.config.from_preset(preset, over).iuq.inter.capacity        # rows with the inter loss
            for row, preset, over, _ in iuq.studies.STUDIES["capacity"] if over}
assert iuq.studies.table_matches_runs("capacity")            # each row's AP recomputed from the runs
if rows:
    pts = sorted(((capacity[r["row"]], r) for r in rows if r["row"] in capacity), key=lambda t: t[0])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    for ax, key in zip(axes, ("AP", "step s")):
        ys = [r["metrics"]["segm/AP"][0] if key == "AP" else r["step_s"] for _, r in pts]
        ax.plot([c for c, _ in pts], ys, "o-")
        ax.set_xlabel("memory capacity (pixels)")
        ax.set_ylabel(key)
    base = next((r for r in rows if r["row"] not in capacity), None)
    if base is not None:
        axes[0].axhline(base["metrics"]["segm/AP"][0], color="k", ls=":", label="no inter-scene loss")
        axes[0].legend()
    fig.tight_layout()
print("paper, Table S4 (AP, min/epoch, GB):", {
    "none": (35.5, 90, 19.68), "mini-batch only": (36.9, 106, 19.68), "10k": (37.0, 91, 20.24),
    "50k": (37.3, 93, 22.37), "70k": (37.5, 93, 23.72), "100k": (37.6, 94, 25.37)})

# %% [markdown]
# ## Summary
#
# * Eq. 5 is a dot product of this batch's query embeddings with stored pixels of other images, followed by
#   a sigmoid focal loss against 0, averaged over the kept pairs (own-image pixels and masked-out queries
#   are dropped); a stuff query's targets are $\mathbb{1}[\text{label}_j = c]$.
# * `iuq.iuq.inter_mask_loss` computes it in tiles over the memory and accumulates the gradient in the
#   forward pass; it matches the torchvision formulation in value and gradient.
# * `PixelMemory` is an instance-balanced FIFO of detached pixels, pushed after each step; its capacity is
#   the knob of the Table S4 analog.
#
# ## Exercises
#
# 1. Set `gamma = 0` in section 2. Which loss do you get, and why would it be dominated by the easy
#    negatives when $M$ is large?
# 2. With `B·Q·M` logits per step, how does the cost of Eq. 5 grow with the capacity? Time
#    `iuq.iuq.inter_mask_loss` against `inter_mask_loss_reference` for `M` = 1k ... 100k (or run
#    `python -m iuq_lite.bench inter-loss`) and explain the memory use of each.
# 3. Push a batch twice into a `PixelMemory` and then compute the loss for that same batch with and without
#    `image_ids`. Why must own-image pixels be excluded, and what would the loss teach without it?
