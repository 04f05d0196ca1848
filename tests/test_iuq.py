"""iuq_lite.iuq: the inter-scene loss kernel, the pixel memory, the equivariance loss and IUQCriterion."""
import io
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from iuq_lite import iuq
from iuq_lite import transforms as T
from iuq_lite.config import EquiConfig, InterConfig, IUQConfig, LossConfig
from iuq_lite.iuq.inter import inter_mask_loss_reference
from iuq_lite.losses import SetCriterion
from iuq_lite.matcher import HungarianMatcher

SETTINGS = settings(derandomize=True, deadline=None, max_examples=20)


def _einsum(e, m, pos=None):
    return torch.einsum("bqc,mc->bqm", e, m)


def _problem(seed: int, B: int, Q: int, C: int, M: int, *, stuff=True, own=True, qmask=True):
    g = torch.Generator().manual_seed(seed)
    E = (torch.randn(B, Q, C, generator=g, dtype=torch.float64) * 0.7).requires_grad_()
    mem = torch.randn(M, C, generator=g, dtype=torch.float64) * 1.5
    kw = {}
    if stuff:   # few classes so that stuff queries do hit positives
        kw["memory_labels"] = torch.randint(0, 3, (M,), generator=g)
        kw["query_labels"] = torch.randint(-2, 3, (B, Q), generator=g)
    if own:
        kw["memory_image_ids"] = torch.randint(0, B + 2, (M,), generator=g)
        kw["image_ids"] = torch.arange(B)
    if qmask:
        kw["query_mask"] = torch.rand(B, Q, generator=g) > 0.3
    return E, mem, kw


def _check(E, mem, kw, **extra):
    ref = inter_mask_loss_reference(E, mem, **kw, **{k: v for k, v in extra.items() if k != "chunk"})
    g_ref, = torch.autograd.grad(ref, E)
    out = iuq.inter_mask_loss(E, mem, **kw, **extra)
    g_out, = torch.autograd.grad(out, E)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_out, g_ref, rtol=1e-5, atol=1e-7)
    return out


# ---------------------------------------------------------------------------------- inter_mask_loss
@SETTINGS
@given(seed=st.integers(0, 10**6), B=st.integers(1, 3), Q=st.integers(1, 6), C=st.integers(1, 9),
       M=st.integers(1, 40), chunk=st.sampled_from([1, 3, 7, 16384]), stuff=st.booleans(), own=st.booleans(),
       qmask=st.booleans())
def test_inter_loss_matches_torchvision_focal_value_and_gradient(seed, B, Q, C, M, chunk, stuff, own, qmask):
    E, mem, kw = _problem(seed, B, Q, C, M, stuff=stuff, own=own, qmask=qmask)
    if bool(kw.get("query_mask", torch.ones(1)).any()):
        _check(E, mem, kw, chunk=chunk)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 1.5), (0.9, 0.0)])
def test_inter_loss_other_alpha_gamma_and_large_logits(alpha, gamma):
    E, mem, kw = _problem(1, 2, 4, 5, 50)
    mem = mem * 40          # |z| ~ 100: the stable forms must not overflow
    _check(E, mem, kw, alpha=alpha, gamma=gamma, chunk=8)


def test_logits_fn_path_equals_dot_product_path():
    E, mem, kw = _problem(2, 2, 5, 6, 33)
    fused = iuq.inter_mask_loss(E, mem, **kw, chunk=7)
    g_fused, = torch.autograd.grad(fused, E)
    auto = iuq.inter_mask_loss(E, mem, **kw, chunk=7, logits_fn=_einsum)
    g_auto, = torch.autograd.grad(auto, E)
    torch.testing.assert_close(auto, fused, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_auto, g_fused, rtol=1e-10, atol=1e-12)


def test_segments_equal_the_concatenated_memory():
    E, mem, kw = _problem(3, 2, 4, 5, 30)
    whole = iuq.inter_mask_loss(E, mem, **kw, chunk=4)
    segs = [iuq.Segment(mem[:11], kw["memory_labels"][:11], kw["memory_image_ids"][:11]),
            iuq.Segment(mem[11:], kw["memory_labels"][11:], kw["memory_image_ids"][11:])]
    split = iuq.inter_mask_loss(E, segs, **{k: v for k, v in kw.items() if not k.startswith("memory")}, chunk=4)
    torch.testing.assert_close(split, whole)


@pytest.mark.parametrize("case", ["query_mask", "own_image", "empty_memory"])
def test_nothing_kept_gives_zero_in_graph_with_zero_grad(case):
    E = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    mem = torch.randn(0 if case == "empty_memory" else 6, 4, dtype=torch.float64)
    kw = {}
    if case == "query_mask":
        kw["query_mask"] = torch.zeros(2, 3, dtype=torch.bool)
    if case == "own_image":   # every pixel belongs to one of the two batch images; each image sees only its own
        kw = {"memory_image_ids": torch.tensor([7] * 6), "image_ids": torch.tensor([7, 7])}
    for logits_fn in (None, _einsum):
        loss = iuq.inter_mask_loss(E, mem, **kw, logits_fn=logits_fn)
        assert loss.requires_grad and float(loss.detach()) == 0.0
        grad, = torch.autograd.grad(loss, E)
        assert torch.equal(grad, torch.zeros_like(E))


def test_memory_is_detached_and_no_grad_mode_works():
    E = torch.randn(1, 2, 3, requires_grad=True)
    mem = torch.randn(5, 3, requires_grad=True)
    iuq.inter_mask_loss(E, mem).backward()
    assert mem.grad is None and E.grad is not None
    with torch.no_grad():
        assert torch.isfinite(iuq.inter_mask_loss(E, mem))


def test_bf16_embeddings_compute_in_fp32():
    E = torch.randn(2, 3, 8, dtype=torch.float64)
    mem = torch.randn(20, 8, dtype=torch.float64)
    e16 = E.to(torch.bfloat16).requires_grad_()
    loss = iuq.inter_mask_loss(e16, mem.float())
    loss.backward()
    assert loss.dtype == torch.float32 and e16.grad.dtype == torch.bfloat16
    ref = inter_mask_loss_reference(e16.detach().double(), mem.float().double())
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["compiled_plumbing", "compile_fails"])
def test_compiled_route_and_its_eager_fallback(monkeypatch, mode):
    """The compiled route (workspace, tiles) with the tile math run eagerly, and a failing compile that must
    fall back to the eager kernel with a warning; both equal the reference."""
    from iuq_lite.iuq import inter as K

    def boom(z, gamma):
        raise RuntimeError("no compiler")
    monkeypatch.setattr(K, "COMPILE_MIN_ELEMENTS", 0)
    monkeypatch.setitem(K._COMPILE, "enabled", True)
    monkeypatch.setitem(K._COMPILE, "failed", False)
    monkeypatch.setitem(K._COMPILE, "fn", K._neg_math if mode == "compiled_plumbing" else boom)
    E, mem, kw = _problem(5, 2, 4, 5, 45, stuff=False)
    if mode == "compile_fails":
        with pytest.warns(RuntimeWarning, match="no compiler"):
            _check(E, mem, kw, chunk=16)
        assert not K.compile_active()
    else:
        _check(E, mem, kw, chunk=16)


@pytest.mark.parametrize("mode", ["compiled_plumbing", "compile_fails"])
def test_logits_fn_compiled_route_and_its_eager_fallback(monkeypatch, mode):
    """The logits_fn route above its compile threshold: the compiled chunk (here run eagerly) or a failing
    compile (warning, eager from then on) both equal the dot-product kernel with stuff, own-image and
    query-mask exclusions over several chunks."""
    from iuq_lite.iuq import inter as K

    def boom(*args):
        raise RuntimeError("no compiler")
    monkeypatch.setattr(K, "COMPILE_MIN_ELEMENTS", 0)
    monkeypatch.setitem(K._COMPILE, "enabled", True)
    monkeypatch.setitem(K._COMPILE, "failed", False)
    monkeypatch.setitem(K._COMPILE, "chunk", K._chunk_loss if mode == "compiled_plumbing" else boom)
    E, mem, kw = _problem(4, 2, 5, 6, 37)
    fused = iuq.inter_mask_loss(E, mem, **kw, chunk=8)
    g_fused, = torch.autograd.grad(fused, E)
    if mode == "compile_fails":
        with pytest.warns(RuntimeWarning, match="no compiler"):
            auto = iuq.inter_mask_loss(E, mem, **kw, chunk=8, logits_fn=_einsum)
        assert not K.compile_active()
    else:
        auto = iuq.inter_mask_loss(E, mem, **kw, chunk=8, logits_fn=_einsum)
    g_auto, = torch.autograd.grad(auto, E)
    torch.testing.assert_close(auto, fused, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_auto, g_fused, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(os.environ.get("IUQ_TEST_COMPILE") != "1", reason="compiling takes ~20 s; IUQ_TEST_COMPILE=1")
def test_compiled_logits_fn_chunk_matches_eager(monkeypatch):
    from iuq_lite.iuq import inter as K
    monkeypatch.setattr(K, "COMPILE_MIN_ELEMENTS", 0)
    monkeypatch.setitem(K._COMPILE, "enabled", True)
    monkeypatch.setitem(K._COMPILE, "failed", False)
    E, mem, kw = _problem(5, 2, 6, 5, 70)
    E, mem = E.detach().float().requires_grad_(), mem.float()
    out = {}
    for compiled in (False, True):
        monkeypatch.setitem(K._COMPILE, "enabled", compiled)
        loss = iuq.inter_mask_loss(E, mem, **kw, chunk=16, logits_fn=lambda e, m, p: torch.tanh(e) @ m.T)
        out[compiled] = (loss, *torch.autograd.grad(loss, E))
    assert K.compile_active()                                          # it compiled, no fallback
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(os.environ.get("IUQ_TEST_COMPILE") != "1", reason="compiling takes ~20 s; IUQ_TEST_COMPILE=1")
def test_compiled_tile_math_matches_eager():
    from iuq_lite.iuq import inter as K
    z = torch.randn(64, 300) * 8
    z[0, :5] = float("-inf")
    eager = K._neg_eager(z.clone(), 2.0, *(torch.empty_like(z) for _ in range(3)), True)
    compiled = torch.compile(K._neg_math, dynamic=True)(z, 2.0)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- PixelMemory
def _sample(ids, C=3):
    n = len(ids)
    return {"features": torch.arange(n, dtype=torch.float32)[:, None].repeat(1, C),
            "labels": torch.tensor(ids) % 5, "image_ids": torch.tensor(ids),
            "positions": torch.rand(n, 2)}


def test_memory_fifo_capacity_and_wraparound():
    mem = iuq.PixelMemory(5, 3)
    assert len(mem) == 0 and mem.features.shape == (0, 3)
    mem.push_sampled(_sample([0, 1, 2]))
    assert len(mem) == 3 and mem.image_ids.tolist() == [0, 1, 2]
    mem.push_sampled(_sample([3, 4, 5, 6]))          # wraps: 0 and 1 are the oldest, overwritten
    assert len(mem) == 5 and sorted(mem.image_ids.tolist()) == [2, 3, 4, 5, 6]
    assert mem.image_ids[mem.order].tolist() == [2, 3, 4, 5, 6]
    assert mem.labels.tolist() == [i % 5 for i in mem.image_ids.tolist()]
    mem.push_sampled(_sample(list(range(10, 22))))   # more than the capacity in one push: newest 5 survive
    assert mem.image_ids[mem.order].tolist() == [17, 18, 19, 20, 21] and mem.pushed == 19
    # the ring state equals pushing the same entries one by one
    one = iuq.PixelMemory(5, 3)
    for ids in ([0, 1, 2], [3, 4, 5, 6], *[[i] for i in range(10, 22)]):
        one.push_sampled(_sample(ids))
    assert torch.equal(one.image_ids, mem.image_ids) and one.ptr == mem.ptr


def test_memory_capacity_zero_stores_nothing():
    mem = iuq.PixelMemory(0, 4)
    mem.push_sampled(_sample([1, 2, 3], C=4))
    assert len(mem) == 0 and mem.features.shape == (0, 4) and mem.pushed == 3


def _coord_features(B, h, w):
    """Channel 0 = y index, channel 1 = x index, channel 2 = image index: sampled features name their pixel."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    f = torch.stack([y, x, torch.zeros(h, w, dtype=torch.long)]).float()[None].repeat(B, 1, 1, 1)
    f[:, 2] = torch.arange(B).float()[:, None, None]
    return f


def test_balanced_sampling_counts_replacement_and_skipping():
    ppi, s = 6, 4
    h = w = 8
    feats = _coord_features(2, h, w)
    m0 = torch.zeros(4, h * s, w * s, dtype=torch.bool)
    m0[0, :16, :] = True                  # 4 x 8 = 32 feature pixels: distinct samples
    m0[1, 20:24, 20:28] = True            # rows 20..23 -> feature row 5 only; cols -> 5, 6: 2 pixels
    m0[2, 1:3, 1:3] = True                # between stride-4 sample points: empty at feature resolution
    m0[3, 28, 4] = True                   # on the grid: exactly 1 pixel (7, 1)
    m1 = torch.zeros(0, h * s, w * s, dtype=torch.bool)
    mem = iuq.PixelMemory(100, 3, pixels_per_instance=ppi)
    out = mem.sample_pixels(feats, [m0, m1], [torch.tensor([3, 1, 2, 4]), torch.zeros(0, dtype=torch.long)],
                            [10, 11], generator=torch.Generator().manual_seed(0))
    assert out["features"].shape == (3 * ppi, 3)
    assert out["labels"].tolist() == [3] * ppi + [1] * ppi + [4] * ppi
    assert out["image_ids"].tolist() == [10] * 3 * ppi
    yx = out["features"][:, :2].long()
    big = yx[:ppi]
    assert len({tuple(p) for p in big.tolist()}) == ppi and bool((big[:, 0] < 4).all())   # distinct, inside
    assert {tuple(p) for p in yx[ppi:2 * ppi].tolist()} <= {(5, 5), (5, 6)}                 # with replacement
    assert {tuple(p) for p in yx[2 * ppi:].tolist()} == {(7, 1)}
    torch.testing.assert_close(out["positions"], (yx.float() + 0.5) / torch.tensor([h, w]))
    # same generator state -> same sample
    again = mem.sample_pixels(feats, [m0, m1], [torch.tensor([3, 1, 2, 4]), torch.zeros(0, dtype=torch.long)],
                              [10, 11], generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["features"], out["features"])


def test_push_samples_gathers_and_enqueues_then_state_dict_round_trips():
    feats = torch.randn(2, 5, 4, 4)
    masks = [torch.ones(2, 16, 16, dtype=torch.bool), torch.ones(1, 16, 16, dtype=torch.bool)]
    mem = iuq.PixelMemory(16, 5, pixels_per_instance=4)
    got = mem.push(feats, masks, [torch.tensor([0, 1]), torch.tensor([2])], torch.tensor([5, 6]))
    assert got["features"].shape == (12, 5) and len(mem) == 12
    mem.push(feats, masks, [torch.tensor([0, 1]), torch.tensor([2])], torch.tensor([7, 8]))
    assert len(mem) == 16 and mem.ptr == 8
    buf = io.BytesIO()
    torch.save(mem.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    back = iuq.PixelMemory(16, 5, pixels_per_instance=4)
    back.load_state_dict(state)
    for k in ("features", "labels", "image_ids", "positions"):
        assert torch.equal(getattr(back, k), getattr(mem, k))
    assert (back.ptr, back.pushed) == (mem.ptr, mem.pushed)
    with pytest.raises(ValueError):
        iuq.PixelMemory(8, 5).load_state_dict(state)


# ---------------------------------------------------------------------------------- equivariance
class MaskChannelModel(nn.Module):
    """Image channel k is instance k's mask; F = 4 (2 avgpool_4(I) - 1) (+ an x-ramp channel), per pixel, so
    f(flip I) == flip f(I). Query k reads channel k with a sign: +1 for pos_weight = 0 (exactly
    flip-equivariant); with pos_weight > 0 the sign depends on which half the instance lies in, measured
    with the (non-flipping) x channel: E^g != E, the model is not equivariant."""

    def __init__(self, pos_weight: float = 0.0):
        super().__init__()
        self.pos_weight = pos_weight
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, images):
        B = images.shape[0]
        pooled = F.avg_pool2d(images, 4)                                               # [B,3,h,w]
        h, w = pooled.shape[-2:]
        ramp = ((torch.arange(w) + 0.5) / w - 0.5).expand(B, 1, h, w) * self.pos_weight
        feats = torch.cat([self.scale * (2 * pooled - 1), ramp], 1)                    # [B,4,h,w]
        inst = pooled[:, :2]
        xbar = (inst * ramp).sum((2, 3)) / inst.sum((2, 3)).clamp(min=1e-6)            # [B,2]
        sign = torch.where(xbar <= 0, 1.0, -1.0)
        embed = torch.zeros(B, 2, 4)
        embed[:, 0, 0], embed[:, 1, 1] = sign[:, 0], sign[:, 1]
        return {"pred_logits": torch.zeros(B, 2, 3), "mask_embed": embed, "mask_features": feats,
                "pred_masks": torch.einsum("bqc,bchw->bqhw", embed, feats)}


def dense_mask_loss(outputs, targets, *, valid=None):
    """A deterministic stand-in for SetCriterion.mask_loss: query k <-> target k, BCE over all pixels."""
    logits = outputs["pred_masks"]
    total = logits.sum() * 0.0
    for b, t in enumerate(targets):
        k = len(t["labels"])
        if k:
            tgt = F.interpolate(t["masks"][None].float(), size=logits.shape[-2:], mode="area")[0]
            total = total + F.binary_cross_entropy_with_logits(logits[b, :k], tgt)
    return total


def _instance_batch(B=2, H=32, W=32):
    """Two instances per image, both in the LEFT half, as image channels 0 and 1 (stride-4 aligned)."""
    masks = torch.zeros(B, 2, H, W, dtype=torch.bool)
    masks[:, 0, 4:12, 0:8] = True
    masks[:, 1, 16:28, 4:12] = True
    masks[1, 1, 16:28, 4:16] = True
    images = torch.cat([masks.float(), torch.zeros(B, 1, H, W)], 1)
    targets = [{"image_id": b, "labels": torch.tensor([0, 1]), "masks": masks[b],
                "iscrowd": torch.zeros(2, dtype=torch.bool)} for b in range(B)]
    return images, targets


def _equi(model, images, targets, g):
    out = model(images)
    return iuq.equivariance_loss(model(g.image(images)), out["mask_features"], targets, g,
                                 mask_criterion=dense_mask_loss)


def test_equivariance_loss_is_transform_invariant_for_an_equivariant_model():
    images, targets = _instance_batch()
    ident = T.GeoTransform("identity", {}, (32, 32), 4)
    flip = T.GeoTransform("hflip", {}, (32, 32), 4)
    model = MaskChannelModel(0.0)
    a, b = _equi(model, images, targets, ident), _equi(model, images, targets, flip)
    torch.testing.assert_close(a, b)
    bad = MaskChannelModel(1.0)
    torch.testing.assert_close(_equi(bad, images, targets, ident), a)    # same model output on I
    assert float(_equi(bad, images, targets, flip).detach()) > float(a.detach()) + 1.0


def test_equivariance_loss_with_set_criterion_drops_empty_and_keeps_graph():
    images, targets = _instance_batch()
    model = MaskChannelModel(0.0)
    crit = SetCriterion(LossConfig(num_points=64), 2, HungarianMatcher(num_points=64))
    crop = T.GeoTransform("crop", {"top": 0, "left": 16, "height": 16, "width": 16}, (32, 32), 4)
    assert [len(t["labels"]) for t in iuq.transform_targets(targets, crop)] == [0, 0]
    out = model(images)
    loss = iuq.equivariance_loss(model(crop.image(images)), out["mask_features"], targets, crop,
                                 mask_criterion=crit.mask_loss)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    rot = T.GeoTransform("rotate", {"angle": 30.0}, (32, 32), 4)
    padded = [{**t, "size": torch.tensor([24, 28])} for t in targets]
    valid = iuq.valid_region(padded, rot, (32, 32), torch.device("cpu"))
    assert valid.shape == (2, 32, 32) and 0 < int(valid.sum()) < 2 * 24 * 28
    loss = iuq.equivariance_loss(model(rot.image(images)), out["mask_features"], padded, rot,
                                 mask_criterion=crit.mask_loss)
    loss.backward()
    assert float(loss.detach()) > 0 and model.scale.grad is not None


def test_detached_features_give_the_same_loss_and_no_gradient_to_f():
    """iuq.equi.detach_features (investigation row): same value, but only E^g learns from Eq. 8."""
    images, targets = _instance_batch()
    flip = T.GeoTransform("hflip", {}, (32, 32), 4)
    feats = torch.randn(2, 8, 8, 8, requires_grad=True)
    embed = torch.randn(2, 3, 8, requires_grad=True)
    out_g = {"pred_logits": torch.zeros(2, 3, 3), "mask_embed": embed}
    vals = [iuq.equivariance_loss(out_g, feats, targets, flip, mask_criterion=dense_mask_loss, detach_features=d)
            for d in (False, True)]
    torch.testing.assert_close(vals[0], vals[1])
    g_attached = torch.autograd.grad(vals[0], [feats, embed])
    g_feats, g_embed = torch.autograd.grad(vals[1], [feats, embed], allow_unused=True)
    assert g_attached[0].abs().sum() > 0 and g_feats is None
    torch.testing.assert_close(g_embed, g_attached[1])


# ---------------------------------------------------------------------------------- IUQCriterion
class ToySeg(nn.Module):
    """Pointwise stride-4 features, queries = learned + globally pooled features, two decoder layers."""

    def __init__(self, C=8, Q=6, K=3):
        super().__init__()
        self.proj = nn.Conv2d(3, C, 1)
        self.queries = nn.Parameter(torch.randn(Q, C))
        self.embed = nn.Linear(C, C)
        self.cls = nn.Linear(C, K + 1)

    def forward(self, images):
        f = self.proj(F.avg_pool2d(images, 4))                                         # [B,C,h,w]
        q = self.queries[None] + f.mean((2, 3))[:, None]                               # [B,Q,C]
        outs = []
        for scale in (0.5, 1.0):
            e = self.embed(q) * scale
            outs.append({"pred_logits": self.cls(q * scale), "mask_embed": e,
                         "pred_masks": torch.einsum("bqc,bchw->bqhw", e, f)})
        return {**outs[-1], "mask_features": f, "aux_outputs": outs[:-1]}


def _toy_batch(seed=0, B=2, S=32):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, 3, S, S, generator=g)
    targets = []
    for b in range(B):
        masks = torch.zeros(3, S, S, dtype=torch.bool)
        masks[0, 4:20, 4:20] = True
        masks[1, 12:28, 16:30] = True
        masks[2, 0:8, 24:32] = True
        targets.append({"image_id": 100 * seed + b, "labels": torch.tensor([0, 2, 1]), "masks": masks,
                        "iscrowd": torch.tensor([False, False, b == 1]), "size": torch.tensor([S, S])})
    return images, targets


def _crit(**inter):
    cfg = IUQConfig(inter=InterConfig(enabled=True, capacity=50, pixels_per_instance=4, **inter),
                    equi=EquiConfig(enabled=True))
    base = SetCriterion(LossConfig(num_points=64), 3, HungarianMatcher(num_points=64))
    return iuq.IUQCriterion(base, cfg, seed=3)


@pytest.mark.parametrize("inter", [{}, {"queries": "matched", "layers": "all"}])
def test_criterion_step_then_push(inter):
    torch.manual_seed(0)
    model, crit = ToySeg(), _crit(**inter)
    images, targets = _toy_batch()
    losses = crit(model, images, targets, step=0)
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_inter", "loss_equi"} <= set(losses)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total) and model.queries.grad.abs().sum() > 0
    assert len(crit.memory) == 0 and float(losses["loss_inter"].detach()) > 0   # in-batch negatives only
    crit.after_step()
    assert len(crit.memory) == 5 * 4                                    # 5 non-crowd instances x 4 pixels
    images, targets = _toy_batch(seed=1)
    losses = crit(model, images, targets, step=1)
    crit.after_step()
    assert len(crit.memory) == 40 and torch.isfinite(sum(losses.values()))
    state = crit.state_dict()
    fresh = _crit(**inter)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.memory.features, crit.memory.features)


def test_criterion_as_augmentation_and_disabled_terms():
    torch.manual_seed(0)
    cfg = IUQConfig(equi=EquiConfig(enabled=True, as_augmentation=True, kinds=("crop",)))
    base = SetCriterion(LossConfig(num_points=64), 3, HungarianMatcher(num_points=64))
    crit = iuq.IUQCriterion(base, cfg)
    images, targets = _toy_batch()
    losses = crit(ToySeg(), images, targets, step=4)
    assert "loss_inter" not in losses and losses["loss_equi"].requires_grad
    crit.after_step()
    assert crit.memory is None and crit.state_dict() == {"memory": None}


def test_transform_is_keyed_by_seed_and_step():
    a, b = _crit(), _crit()
    draws = [a.draw_transform(s, (64, 64)) for s in range(8)]
    assert draws == [b.draw_transform(s, (64, 64)) for s in range(8)]
    assert len({(d.kind, tuple(sorted(d.params.items()))) for d in draws}) > 1
    assert {d.kind for d in draws} == {"hflip", "crop"}
    c = _crit()
    c.seed = 4
    assert [c.draw_transform(s, (64, 64)) for s in range(8)] != draws


def test_two_views_and_per_image_draws_make_split_batches_add_up():
    """TwoViews(model) (what DDP wraps) gives the plain model's losses; with draws keyed per image and the
    step's normalisers, two half batches add up to the whole batch (the basis of DDP == one process and of
    gradient accumulation; the inter loss differs: each half sees only its own in-batch negatives)."""
    torch.manual_seed(0)
    model = ToySeg()
    images, targets = _toy_batch(B=4)
    whole = _crit()(model, images, targets, step=2)
    wrapped = _crit()(iuq.TwoViews(model), images, targets, step=2)
    assert whole.keys() == wrapped.keys() and all(torch.equal(whole[k], wrapped[k]) for k in whole)
    crit = _crit()
    halves = [crit(model, images[i:i + 2], targets[i:i + 2], step=2, step_targets=targets) for i in (0, 2)]
    for k in ("loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_equi"):
        torch.testing.assert_close(halves[0][k] + halves[1][k], whole[k], msg=k)
