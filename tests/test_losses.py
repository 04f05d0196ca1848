"""Set criterion and point losses: perfect predictions, dice of disjoint masks, no-object weighting, crowd
exclusion, validity masking in mask_loss, and a one-batch overfit of the tiny model."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

import iuq_lite as iuq
from iuq_lite.config import LossConfig
from iuq_lite.losses import SetCriterion, dice_loss, sigmoid_ce_loss
from iuq_lite.matcher import HungarianMatcher
from iuq_lite.sampling import get_uncertain_point_coords_with_randomness, point_sample

K = 3


@contextlib.contextmanager
def one_thread():
    # 2 threads on a shared 2-core machine spin against each other; one thread is 5-20x faster there.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _criterion(**loss) -> SetCriterion:
    cfg = LossConfig(num_points=256, **loss)
    return SetCriterion(cfg, K, HungarianMatcher(num_points=cfg.num_points))


def _rect_targets() -> list[dict]:
    """Two 64-px images: two rectangles (labels 0, 2) and one (label 1), on the 4-px grid."""
    def rect(y0, y1, x0, x1):
        m = torch.zeros(64, 64, dtype=torch.bool)
        m[y0:y1, x0:x1] = True
        return m
    return [{"labels": torch.tensor([0, 2]), "masks": torch.stack([rect(8, 40, 8, 32), rect(36, 60, 32, 60)])},
            {"labels": torch.tensor([1]), "masks": rect(16, 48, 12, 52)[None]}]


def _perfect_outputs(targets: list[dict], Q: int = 4, res: int = 64) -> dict:
    """Query t predicts target t (class and mask, logits +-20); the other queries predict no-object."""
    logits = torch.full((len(targets), Q, K + 1), -20.0)
    logits[..., K] = 20.0
    masks = torch.full((len(targets), Q, res, res), -20.0)
    for b, t in enumerate(targets):
        for q, (label, m) in enumerate(zip(t["labels"], t["masks"])):
            logits[b, q] = -20.0
            logits[b, q, label] = 20.0
            m = F.interpolate(m[None, None].float(), size=(res, res), mode="nearest")[0, 0]
            masks[b, q] = 40.0 * m - 20.0
    return {"pred_logits": logits, "pred_masks": masks}


def test_perfect_prediction_gives_near_zero_losses():
    torch.manual_seed(0)
    targets = _rect_targets()
    # Uniform points. Bilinear reads of a 0/1 target give soft labels in a 1-px band at the edges, where a
    # saturated +-20 logit pays BCE: that band (~3 % of the points here) is the floor.
    crit = _criterion(sampling="uniform")
    losses, indices = crit(_perfect_outputs(targets), targets, return_indices=True)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}
    assert losses["loss_ce"] < 1e-6
    assert losses["loss_mask"] < 0.25 and losses["loss_dice"] < 0.1
    assert [(i.tolist(), j.tolist()) for i, j in indices] == [([0, 1], [0, 1]), ([0], [0])]
    wrong = _perfect_outputs(targets)
    wrong["pred_masks"] = -wrong["pred_masks"]
    assert crit(wrong, targets)["loss_mask"] > 20 * losses["loss_mask"]
    # no edges, no floor: a target covering the whole image
    full = [{"labels": torch.tensor([1]), "masks": torch.ones(1, 64, 64, dtype=torch.bool)}]
    losses = _criterion()(_perfect_outputs(full, res=16), full)
    assert losses["loss_ce"] < 1e-6 and losses["loss_mask"] < 1e-6 and losses["loss_dice"] < 1e-6


def test_dice_of_disjoint_masks_is_one_and_identical_is_zero():
    a = torch.zeros(1, 100)
    a[0, :30] = 1
    b = torch.zeros(1, 100)
    b[0, 50:90] = 1
    logits_a = 60 * a - 30
    torch.testing.assert_close(dice_loss(logits_a, b), torch.tensor([1 - 1 / (30 + 40 + 1)]))
    assert dice_loss(logits_a, a)[0] < 1e-6
    # zero weights remove points from all three dice sums and from the BCE mean
    w = torch.zeros(1, 100)
    w[0, :40] = 1
    torch.testing.assert_close(dice_loss(logits_a, b, w), torch.zeros(1) + 1 - 1 / 31)
    torch.testing.assert_close(sigmoid_ce_loss(logits_a, a, w), sigmoid_ce_loss(logits_a[:, :40], a[:, :40]))


def test_no_object_weight():
    torch.manual_seed(0)
    targets = _rect_targets()[1:]                         # one target, matched to query 0
    outputs = _perfect_outputs(targets)
    outputs["pred_logits"] = torch.randn(1, 4, K + 1)
    outputs["pred_logits"][0, 0, 1] = 5.0
    crit = _criterion(no_object_weight=0.1)
    assert crit.empty_weight.tolist() == pytest.approx([1, 1, 1, 0.1])
    nll = -outputs["pred_logits"][0].log_softmax(-1)      # [Q,K+1]
    per_query = torch.stack([nll[0, 1], nll[1, K], nll[2, K], nll[3, K]])
    weights = torch.tensor([1.0, 0.1, 0.1, 0.1])
    expected = 2.0 * (weights * per_query).sum() / weights.sum()
    torch.testing.assert_close(crit(outputs, targets)["loss_ce"], expected)


def test_crowd_annotations_are_excluded():
    targets = _rect_targets()
    outputs = _perfect_outputs(targets)
    outputs["pred_masks"] = outputs["pred_masks"] + torch.randn_like(outputs["pred_masks"])
    crowd = torch.zeros(64, 64, dtype=torch.bool)
    crowd[:20, :20] = True
    # the same targets with a crowd region FIRST, so the original numbering shifts by one
    with_crowd = [{"labels": torch.cat([torch.tensor([1]), t["labels"]]),
                   "masks": torch.cat([crowd[None], t["masks"]]),
                   "iscrowd": torch.tensor([True] + [False] * len(t["labels"]))} for t in targets]
    torch.manual_seed(0)
    ref, ref_idx = _criterion()(outputs, targets, return_indices=True)
    torch.manual_seed(0)
    got, idx = _criterion()(outputs, with_crowd, return_indices=True)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k])
    for (i0, j0), (i1, j1) in zip(ref_idx, idx):
        assert torch.equal(i0, i1) and torch.equal(j0 + 1, j1)   # indices point into the caller's targets
    torch.manual_seed(0)
    m_ref = _criterion().mask_loss(outputs, targets)
    torch.manual_seed(0)
    torch.testing.assert_close(_criterion().mask_loss(outputs, with_crowd), m_ref)


def test_mask_loss_with_class_adds_the_weighted_ce_of_the_same_matching():
    """iuq.equi.class_loss: mask_loss(with_class=True) = mask terms + class_weight * CE (final layer), one matching."""
    torch.manual_seed(0)
    targets = _rect_targets()
    outputs = _perfect_outputs(targets)
    outputs["pred_logits"] = outputs["pred_logits"] + torch.randn_like(outputs["pred_logits"])
    outputs["aux_outputs"] = [dict(outputs)]               # ignored: the equivariance branch is final-layer only
    crit = _criterion()
    idx = [(torch.arange(len(t["labels"])), torch.arange(len(t["labels"]))) for t in targets]
    torch.manual_seed(1)
    mask_only = crit.mask_loss(outputs, targets, indices=idx)
    torch.manual_seed(1)
    both = crit.mask_loss(outputs, targets, indices=idx, with_class=True)
    ce = crit(outputs, targets)["loss_ce"]                # the base loss's weighted CE, same (perfect) matching
    torch.testing.assert_close(both - mask_only, ce)


@pytest.mark.parametrize("sampling", ["importance", "uniform"])
def test_mask_loss_ignores_points_outside_valid_and_size(sampling):
    targets = _rect_targets()
    for t in targets:
        t["size"] = torch.tensor([48, 64])                # real image: the top 48 of 64 rows
    out = _perfect_outputs(targets, res=16)               # stride 4
    out["pred_masks"] = out["pred_masks"] + 3 * torch.randn_like(out["pred_masks"])
    valid = torch.zeros(2, 8, 8, dtype=torch.bool)        # any resolution: here the left half at 1/8
    valid[:, :, :4] = True
    indices = [(torch.tensor([0, 1]), torch.tensor([0, 1])), (torch.tensor([0]), torch.tensor([0]))]
    crit = _criterion(sampling=sampling)

    def loss(pred_masks):
        torch.manual_seed(0)
        return crit.mask_loss({"pred_logits": out["pred_logits"], "pred_masks": pred_masks}, targets,
                              valid=valid, indices=indices)
    base = loss(out["pred_masks"])
    outside = out["pred_masks"].clone()
    # points with x < 1/2 read columns <= 8 bilinearly, points with y < 3/4 rows <= 12 (16-px map)
    outside[..., 9:] = 50.0
    outside[..., 13:, :] = -50.0
    torch.testing.assert_close(loss(outside), base)
    inside = out["pred_masks"].clone()
    inside[..., :8, :6] = 50.0
    assert not torch.allclose(loss(inside), base)


def test_importance_sampling_prefers_uncertain_valid_points():
    torch.manual_seed(0)
    logits = torch.full((1, 1, 16, 16), -10.0)
    logits[..., 8:] = 0.0                                  # uncertain right half
    coords = get_uncertain_point_coords_with_randomness(logits, lambda z: -z.abs(), 100, 3.0, 0.75)
    assert coords.shape == (1, 100, 2)
    assert (coords[0, :75, 0] > 0.45).all()                # the 75 importance points are all uncertain
    coords = get_uncertain_point_coords_with_randomness(logits, lambda z: -z.abs(), 100, 3.0, 0.75,
                                                        valid_fn=lambda c: (c[..., 1] < 0.5).float())
    assert (coords[0, :75, 1] < 0.5).all() and (coords[0, :75, 0] > 0.45).all()
    torch.testing.assert_close(point_sample(logits, coords)[0, 0, :75], torch.zeros(75))


def test_deep_supervision_keys_and_empty_batch():
    targets = _rect_targets()
    out = _perfect_outputs(targets)
    out["aux_outputs"] = [_perfect_outputs(targets), _perfect_outputs(targets)]
    losses = _criterion()(out, targets)
    assert set(losses) == {f"loss_{n}{s}" for n in ("ce", "mask", "dice") for s in ("", "_0", "_1")}
    assert set(_criterion(deep_supervision=False)(out, targets)) == {"loss_ce", "loss_mask", "loss_dice"}
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 64, 64, dtype=torch.bool)}] * 2
    out["pred_masks"].requires_grad_(True)
    losses = _criterion()(out, empty)
    assert losses["loss_mask"] == 0 and losses["loss_dice"] == 0 and losses["loss_mask"].requires_grad


def _synthetic_batch(cfg, B: int = 4, S: int = 64) -> tuple[torch.Tensor, list[dict]]:
    """Flat-coloured, class-coloured rectangles with occlusion (annotations are the visible parts)."""
    g = torch.Generator().manual_seed(0)
    colors = torch.rand(cfg.model.num_classes, 3, generator=g)
    images, targets = torch.full((B, 3, S, S), 0.5), []
    for b in range(B):
        labels = torch.randint(0, cfg.model.num_classes, (3,), generator=g)
        masks = torch.zeros(3, S, S, dtype=torch.bool)
        for k in range(3):
            y, x = torch.randint(0, S - 24, (2,), generator=g).tolist()
            h, w = torch.randint(12, 24, (2,), generator=g).tolist()
            masks[k, y:y + h, x:x + w] = True
        for k in range(3):
            masks[k] &= ~masks[k + 1:].any(0)
            images[b, :, masks[k]] = colors[labels[k]][:, None]
        targets.append({"labels": labels, "masks": masks, "iscrowd": torch.zeros(3, dtype=torch.bool)})
    return images, targets


def test_one_batch_overfit_tiny():
    cfg = iuq.config.from_preset("tiny")
    torch.manual_seed(0)
    model = iuq.model.build_model(cfg)
    crit = SetCriterion(cfg.loss, cfg.model.num_classes, HungarianMatcher(num_points=cfg.loss.num_points))
    images, targets = _synthetic_batch(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    with one_thread():
        for _ in range(60):
            loss = sum(crit(model(images), targets).values())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            history.append(loss.item())
    assert min(history[-5:]) < 0.2 * history[0], history[::10]


def test_costs_and_losses_stay_fp32_under_bf16_autocast(monkeypatch):
    """bf16 autocast (train.amp): the matcher's costs and every loss term are computed in fp32."""
    import iuq_lite.matcher as M
    dtypes = []

    def spy(pred, tgt):
        cost = batch_dice_cost(pred, tgt)
        dtypes.append(cost.dtype)
        return cost
    batch_dice_cost = M.batch_dice_cost
    monkeypatch.setattr(M, "batch_dice_cost", spy)
    targets = _rect_targets()
    outputs = {k: v.bfloat16() for k, v in _perfect_outputs(targets).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = _criterion()(outputs, targets)
    assert dtypes == [torch.float32] and all(v.dtype == torch.float32 for v in losses.values())
