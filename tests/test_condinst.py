"""CondInst-style model: head shapes, FCOS assignment by hand, the dynamic head as explicit convolutions, the IUQ
adapter's memory logits = the model's own mask logits, one IUQ step, evaluate()."""
import pytest
import torch
import torch.nn.functional as F

import iuq_lite as iuq
from iuq_lite.model import build_criterion, fcos, iuq_adapter
from iuq_lite.model import condinst as ci

SMALL = {"model.pixel_channels": 32, "model.head_convs": 1, "model.num_queries": 8,
         "iuq.inter.capacity": 200, "iuq.inter.pixels_per_instance": 5}


def _model(preset: str = "shapes_condinst", **over):
    torch.manual_seed(0)
    cfg = iuq.config.from_preset(preset, {**SMALL, **over})
    return iuq.model.build_model(cfg), cfg


def _targets(B: int = 2, S: int = 64):
    out = []
    for b in range(B):
        m = torch.zeros(3, S, S, dtype=torch.bool)
        m[0, 4:20, 4:24] = True
        m[1, 30:60, 10:40] = True
        m[2, 40:48, 48:56] = True
        out.append({"image_id": 10 + b, "labels": torch.tensor([0, 2, 1]), "masks": m,
                    "iscrowd": torch.tensor([False, False, b == 1]), "size": torch.tensor([S, S])})
    return out


def test_output_shapes_of_every_head():
    model, cfg = _model()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    L = 8 * 8 + 4 * 4 + 2 * 2                              # strides 8, 16, 32 on 64 px
    P = ci.num_params(8)
    assert P == 169                                         # CondInst's 169 for 8 channels + 2 coordinates
    assert out["cls_logits"].shape == (2, L, cfg.model.num_classes) and out["ctrness"].shape == (2, L)
    assert out["box_reg"].shape == (2, L, 4) and (out["box_reg"] >= 0).all()
    assert out["params"].shape == (2, L, P) and out["mask_feats"].shape == (2, 8, 16, 16)
    assert out["locations"].shape == (L, 2) and out["levels"].tolist() == [0] * 64 + [1] * 16 + [2] * 4
    torch.testing.assert_close(out["locations"][:2], torch.tensor([[4.0, 4.0], [4.0, 12.0]]))
    torch.testing.assert_close(out["loc_scale"][-1], torch.tensor([64.0, 64.0]) / (32 * 4))   # H / soi_level
    a = iuq_adapter(model).assign(out, _targets())
    E = iuq_adapter(model).embed(a)
    assert E.shape == (2, cfg.model.num_queries, P + 4) and a["proposal_valid"].any()


def _grid(sizes, strides):
    return fcos.locations(sizes, strides)


def test_fcos_assignment_level_ranges_and_centre_sampling():
    centres, level = _grid([(4, 4), (2, 2)], (8, 16))      # 32-px image; soi 16: P3 [0,16], P4 [16,inf]
    small, large = [0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 32.0, 32.0]
    gt = fcos.assign(centres, level, torch.tensor([small, large]), strides=(8, 16), soi=16)
    assert gt.tolist() == [0] + [-1] * 15 + [1] * 4          # small -> the P3 cell at (4, 4); large -> all of P4
    # centre sampling: a 32x12 box, one level; radius 1.5 strides keeps the cells within 12 px of its centre
    centres, level = _grid([(4, 4)], (8,))
    wide = torch.tensor([[0.0, 0.0, 32.0, 12.0]])
    assert fcos.assign(centres, level, wide, strides=(8,), soi=64).tolist() == [-1, 0, 0, -1] + [-1] * 12
    assert fcos.assign(centres, level, wide, strides=(8,), soi=64, radius=0).tolist() == [0] * 4 + [-1] * 12


def test_fcos_assignment_smallest_box_wins_and_invalid_boxes_are_skipped():
    centres, level = _grid([(4, 4)], (8,))
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0], [8.0, 8.0, 24.0, 24.0]])
    gt = fcos.assign(centres, level, boxes, strides=(8,), soi=64, radius=0).view(4, 4)
    inner = torch.zeros(4, 4, dtype=torch.bool)
    inner[1:3, 1:3] = True
    assert (gt[inner] == 1).all() and (gt[~inner] == 0).all()
    gt = fcos.assign(centres, level, boxes, strides=(8,), soi=64, radius=0, valid=torch.tensor([True, False]))
    assert (gt == 0).all()
    assert (fcos.assign(centres, level, torch.zeros(0, 4), strides=(8,), soi=64) == -1).all()
    boxes, ok = fcos.target_boxes(_targets()[1]["masks"], _targets()[1]["iscrowd"])
    assert boxes[0].tolist() == [4.0, 4.0, 24.0, 20.0] and ok.tolist() == [True, True, False]


def test_centerness_and_decode():
    d = torch.tensor([[2.0, 3.0, 2.0, 3.0], [1.0, 1.0, 3.0, 4.0]])
    torch.testing.assert_close(fcos.centerness(d), torch.tensor([1.0, (1 / 3 * 1 / 4) ** 0.5]))
    assert fcos.decode(torch.tensor([[10.0, 20.0]]), d[:1]).tolist() == [[18.0, 7.0, 22.0, 13.0]]


def test_dynamic_head_equals_explicit_conv2d():
    g = torch.Generator().manual_seed(0)
    B, Q, C, h, w = 2, 3, 8, 5, 7
    params = torch.randn(B, Q, ci.num_params(C), generator=g) * 0.5
    loc, scale = torch.rand(B, Q, 2, generator=g), 1 + torch.rand(B, Q, 2, generator=g)
    feats = torch.randn(B, C, h, w, generator=g)
    E = torch.cat([params, loc, scale], -1)
    got = ci.CondInstAdapter(iuq.config.ModelConfig(mask_dim=C)).mask_logits(E, feats)       # [B,Q,h,w]
    pos = ci.grid_positions(h, w).t().reshape(2, h, w)
    for b in range(B):
        for q in range(Q):
            p = params[b, q]
            w1, w2, w3, b1, b2, b3 = p.split([(C + 2) * 8, 64, 8, 8, 8, 1])
            rel = (loc[b, q].view(2, 1, 1) - pos) * scale[b, q].view(2, 1, 1)                    # [2,h,w]
            x = torch.cat([rel, feats[b]])[None]                                                 # CondInst order
            x = F.relu(F.conv2d(x, w1.view(8, C + 2, 1, 1), b1))
            x = F.relu(F.conv2d(x, w2.view(8, 8, 1, 1), b2))
            torch.testing.assert_close(got[b, q], F.conv2d(x, w3.view(1, 8, 1, 1), b3)[0, 0], atol=1e-5, rtol=1e-5)


def test_adapter_logits_on_own_memory_pixels_equal_the_models_mask_logits():
    model, _ = _model()
    with torch.no_grad():
        out = iuq_adapter(model).assign(model(torch.rand(2, 3, 64, 64)), _targets())
    ad = iuq_adapter(model)
    E, feats = ad.embed(out), ad.features(out)
    own = ad.mask_logits(E, feats)                                                           # [B,Q,h,w]
    mem = iuq.iuq.PixelMemory(500, 8, pixels_per_instance=20)
    full = torch.ones(1, 64, 64, dtype=torch.bool)
    mem.push(feats[1:2], [full], [torch.tensor([0])], [11])
    z = ad.logits_fn(E[1:2], mem.features, mem.positions)[0]                                 # [Q,m]
    h, w = feats.shape[-2:]
    iy, ix = (mem.positions[:, 0] * h).long(), (mem.positions[:, 1] * w).long()
    torch.testing.assert_close(z, own[1][:, iy, ix], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="positions"):
        ad.logits_fn(E, mem.features, None)


@pytest.mark.parametrize("queries", ["all", "matched"])
def test_one_iuq_step_reaches_the_controller(queries):
    model, cfg = _model("shapes_condinst_iuq", **{"iuq.inter.queries": queries})
    crit = iuq.iuq.IUQCriterion(build_criterion(cfg), cfg.iuq, adapter=iuq_adapter(model), seed=0)
    images = torch.rand(2, 3, 64, 64)
    for step in range(2):                                   # the second step also reads the memory
        losses = crit(model, images, _targets(), step=step)
        assert {"loss_cls", "loss_box", "loss_ctr", "loss_mask", "loss_inter", "loss_equi"} == set(losses)
        total = sum(losses.values())
        model.zero_grad()
        total.backward()
        crit.after_step()
        assert torch.isfinite(total) and float(losses["loss_inter"].detach()) > 0
        assert model.controller.weight.grad.abs().sum() > 0
    assert len(crit.memory) == 2 * 5 * 5                    # 5 non-crowd instances x 5 pixels, twice
    # the inter loss alone reaches the controller (Eq. 5's gradient flows into the dynamic filters)
    model.zero_grad()
    targets = crit.keyed(_targets(), 2, images.device)
    out = crit.adapter.assign(model(images), targets)
    crit.inter_loss(out, targets, crit.base(out, targets, return_indices=True)[1]).backward()
    assert model.controller.weight.grad.abs().sum() > 0 and model.cls_logits.weight.grad is None


def test_postprocess_and_evaluate(tiny_data):
    from iuq_lite.data.coco import CocoInstances
    model, _ = _model()
    with torch.no_grad():
        model.cls_logits.bias.zero_()                        # p = 0.5: above the score threshold everywhere
    model.eval()
    with torch.no_grad():
        preds = model.postprocess(model(torch.rand(2, 3, 64, 64)), [(64, 64), (48, 40)], topk=5,
                                  orig_sizes=[(64, 64), (96, 80)], input_size=(64, 64))
    assert [tuple(p["masks"].shape) for p in preds] == [(5, 64, 64), (5, 96, 80)]
    assert all(p["masks"].dtype == torch.bool and (p["scores"][:-1] >= p["scores"][1:]).all() for p in preds)
    dataset = CocoInstances(tiny_data["val_images"], tiny_data["val_ann"])
    metrics = iuq.evaluate.evaluate(model, dataset, topk=10)
    assert metrics["segm/AP"] is not None and 0 <= metrics["segm/AP"] <= 100
