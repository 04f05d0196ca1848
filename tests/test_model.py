"""Model contract: output keys and shapes, mask logits = einsum(E, F) for every head, normalisation inside the
model, no NaN when a query's previous mask is empty (fully masked attention rows are re-enabled)."""
import pytest
import torch
import torch.nn.functional as F

import iuq_lite as iuq
from iuq_lite.model.mask2former import IMAGENET_MEAN, IMAGENET_STD


def _build(preset: str, **overrides):
    torch.manual_seed(0)
    return iuq.model.build_model(iuq.config.from_preset(preset, overrides)).eval()


def _check_outputs(out: dict, B: int, Q: int, K: int, C: int, h: int, w: int, layers: int) -> None:
    assert set(out) == {"pred_logits", "pred_masks", "mask_embed", "mask_features", "aux_outputs"}
    assert out["pred_logits"].shape == (B, Q, K + 1)
    assert out["pred_masks"].shape == (B, Q, h, w)
    assert out["mask_embed"].shape == (B, Q, C)
    assert out["mask_features"].shape == (B, C, h, w)
    assert len(out["aux_outputs"]) == layers          # head before layer 1 and after layers 1..L-1
    for aux in out["aux_outputs"] + [out]:
        assert aux["pred_logits"].shape == (B, Q, K + 1)
        # the dot-product model: masks are exactly einsum(E, F) for every prediction head (METHOD §1)
        assert torch.equal(aux["pred_masks"], torch.einsum("bqc,bchw->bqhw", aux["mask_embed"],
                                                           out["mask_features"]))
        assert torch.isfinite(aux["pred_masks"]).all() and torch.isfinite(aux["pred_logits"]).all()


@pytest.mark.parametrize("preset,size", [("tiny", 64), ("smoke", 64), ("shapes", 128)])
def test_output_contract(preset, size):
    cfg = iuq.config.from_preset(preset)
    model = _build(preset)
    assert model.mask_stride == 4
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    m = cfg.model
    _check_outputs(out, 2, m.num_queries, m.num_classes, m.mask_dim, size // 4, size // 4, m.dec_layers)


def test_coco_r50_builds_and_runs_small():
    cfg = iuq.config.from_preset("coco_r50", {"model.pretrained": None})   # "imagenet" would download
    model = _build("coco_r50", **{"model.pretrained": None})
    assert model.backbone.channels == (256, 512, 1024, 2048)
    n = sum(p.numel() for p in model.backbone.parameters())
    assert 23e6 < n < 24e6                              # torchvision ResNet-50 trunk without fc
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    m = cfg.model
    _check_outputs(out, 1, m.num_queries, m.num_classes, m.mask_dim, 16, 16, m.dec_layers)


def test_tiny_backbone_is_small_and_multiscale():
    model = _build("shapes")
    n = sum(p.numel() for p in model.backbone.parameters())
    assert 0.8e6 < n < 1.5e6
    feats = model.backbone(torch.rand(1, 3, 128, 128))
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4]
    assert [f.shape[1] for f in feats] == list(model.backbone.channels)


def test_normalisation_inside_model():
    model = _build("tiny")
    seen = {}
    model.backbone.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(seen["x"], (x - mean) / std)


def test_attention_mask_from_previous_prediction():
    model = _build("tiny")
    B, Q, C = 2, model.num_queries, 32
    output = torch.randn(B, Q, 32)
    mask_features = torch.randn(B, C, 16, 16)
    with torch.no_grad():
        pred, blocked = model.heads(output, mask_features, (4, 4))
    assert blocked.shape == (B, 1, Q, 16) and blocked.dtype == torch.bool
    expect = F.interpolate(pred["pred_masks"], size=(4, 4), mode="bilinear", align_corners=False).flatten(2) < 0
    expect &= ~expect.all(-1, keepdim=True)
    assert torch.equal(blocked[:, 0], expect)          # one mask for every head (broadcast by attend)


def test_fully_masked_rows_are_reenabled():
    model = _build("tiny")
    with torch.no_grad():
        # F = 1 everywhere and E = -1 for every query: every previous mask is all-negative, i.e. every
        # attention row would be fully blocked (softmax over nothing = NaN) unless re-enabled.
        model.pixel_decoder.mask_features.weight.zero_()
        model.pixel_decoder.mask_features.bias.fill_(1.0)
        model.mask_embed.layers[-1].weight.zero_()
        model.mask_embed.layers[-1].bias.fill_(-1.0)
        _, blocked = model.heads(torch.randn(1, model.num_queries, 32), torch.ones(1, 32, 16, 16), (4, 4))
        out = model(torch.rand(1, 3, 64, 64))
    assert not blocked.any()
    assert (out["pred_masks"] < 0).all()
    assert all(torch.isfinite(o["pred_logits"]).all() for o in out["aux_outputs"] + [out])


def test_build_model_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown model"):
        iuq.model.build_model(iuq.config.from_preset("tiny", {"model.name": "nope"}))


def test_pretrained_imagenet_offline_message(monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="model.pretrained=/path/to/resnet18.pth"):
        iuq.model.build_model(iuq.config.from_preset("tiny", {"model.backbone": "resnet18",
                                                                "model.pretrained": "imagenet"}))


def test_pretrained_state_dict_file(tmp_path):
    import torchvision
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    model = iuq.model.build_model(iuq.config.from_preset("tiny", {"model.backbone": "resnet18",
                                                                  "model.pretrained": str(path)}))
    torch.testing.assert_close(model.backbone.stem[0].weight, ref.conv1.weight)
    torch.testing.assert_close(model.backbone.layers[3][1].bn2.running_var, ref.layer4[1].bn2.running_var)


def test_attend_equals_multihead_attention_with_a_per_query_mask():
    from iuq_lite.model.mask2former import attend
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    q, k, v = torch.randn(2, 5, 32), torch.randn(2, 9, 32), torch.randn(2, 9, 32)
    blocked = torch.rand(2, 5, 9) < 0.5
    blocked[:, :, 0] = False                                    # no fully blocked row (the model re-enables them)
    want = mha(q, k, v, attn_mask=blocked.repeat_interleave(4, dim=0), need_weights=False)[0]
    torch.testing.assert_close(attend(mha, q, k, v, blocked.unsqueeze(1)), want, rtol=1e-5, atol=1e-6)
    x = torch.randn(2, 5, 32)                                    # self-attention: key is the query, value differs
    torch.testing.assert_close(attend(mha, q, q, x), mha(q, q, x, need_weights=False)[0], rtol=1e-5, atol=1e-6)
