"""iuq_lite.analysis: failure-group criteria on constructed masks, the criteria report on the tiny shapes
split, query uniqueness and equivariance error on a tiny untrained model and on toy models with known answers."""
from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from torch import nn

from iuq_lite import analysis
from iuq_lite.data.coco import CocoInstances
from iuq_lite.transforms import GeoTransform


# ------------------------------------------------------------------------------------------ helpers
def square(size: int = 32, top: int = 8, left: int = 8, side: int = 10) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[top:top + side, left:left + side] = True
    return m


def ring() -> np.ndarray:
    m = square(side=14)
    m[12:18, 12:18] = False
    return m


def l_shape() -> np.ndarray:
    m = np.zeros((32, 32), bool)
    m[4:28, 4:10] = True     # vertical bar
    m[22:28, 4:28] = True    # horizontal foot
    return m


def make_coco(masks: list[np.ndarray], cats: list[int]) -> COCO:
    """A one-image COCO object holding `masks` (RLE) with category ids `cats`."""
    h, w = masks[0].shape
    anns = []
    for i, (m, c) in enumerate(zip(masks, cats)):
        rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        anns.append({"id": i + 1, "image_id": 1, "category_id": c, "iscrowd": 0, "area": int(m.sum()),
                     "bbox": [float(x) for x in mask_util.toBbox(rle)],
                     "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")}})
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "height": h, "width": w, "file_name": "x.png"}], "annotations": anns,
                    "categories": [{"id": c, "name": f"c{c}"} for c in sorted(set(cats))]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class ToyModel(nn.Module):
    """A tiny dot-product segmenter: features = 4x4 average pool of tanh(conv3x3(image)). With a mirror-
    symmetric kernel (and zero padding) it is exactly hflip-equivariant; `ramp` adds an x-coordinate channel
    that breaks the symmetry."""

    mask_stride = 4

    def __init__(self, *, symmetric: bool = True, ramp: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        if symmetric:
            with torch.no_grad():
                self.conv.weight.copy_((self.conv.weight + self.conv.weight.flip(-1)) / 2)
        self.embed = nn.Parameter(torch.randn(5, 8))
        self.cls = nn.Linear(8, 7)                                       # 6 shapes classes + no-object
        self.ramp = ramp

    def forward(self, images: torch.Tensor) -> dict:
        f = F.avg_pool2d(torch.tanh(self.conv(images)), 4)                               # [B,8,H/4,W/4]
        if self.ramp:
            f = f + torch.linspace(0, 1, f.shape[-1])
        e = self.embed.expand(len(images), -1, -1)                                       # [B,5,8]
        return {"pred_logits": self.cls(e), "pred_masks": torch.einsum("bqc,bchw->bqhw", e, f),
                "mask_embed": e, "mask_features": f, "aux_outputs": []}


@pytest.fixture(scope="module")
def tiny_model() -> nn.Module:
    from iuq_lite.config import from_preset
    from iuq_lite.model import build_model

    torch.manual_seed(0)
    return build_model(from_preset("tiny"))


@pytest.fixture(scope="module")
def val_set(tiny_data) -> CocoInstances:
    return CocoInstances(tiny_data["val_images"], tiny_data["val_ann"])


# ------------------------------------------------------------------------------------------ criteria
def test_topology_ring_blobs_and_square():
    assert analysis.topology(ring())["holes"] == 1 and analysis.topology(ring())["score"] > 0
    blobs = square(top=2, left=2, side=6) | square(top=20, left=20, side=6)
    t = analysis.topology(blobs)
    assert t["components"] == 2 and t["holes"] == 0 and t["score"] == pytest.approx(0.5)
    t = analysis.topology(square())
    assert (t["components"], t["holes"], t["euler"], t["score"]) == (1, 0, 1, 0.0)
    assert analysis.topology(np.zeros((5, 5), bool))["score"] == 0.0


def test_solidity_l_shape_square_and_degenerate():
    assert analysis.solidity(square()) == pytest.approx(1.0)
    assert analysis.solidity(l_shape()) < 0.7
    one = np.zeros((8, 8), bool)
    one[3, 4] = True
    assert analysis.solidity(one) == pytest.approx(1.0)       # one pixel square: not a degenerate hull
    assert analysis.solidity(np.zeros((8, 8), bool)) == 1.0
    assert analysis.solidity(ring()) == pytest.approx(1.0)    # holes are topology, not deformation
    # a bite taken by an occluder inside the hull does not count against the object
    bitten = square(side=12) & ~square(top=8, left=14, side=6)
    assert analysis.solidity(bitten) < 0.9
    assert analysis.solidity(bitten, occluders=square(top=8, left=14, side=6)) == pytest.approx(1.0)


def test_contact_ratio():
    a, b = square(top=8, left=4, side=10), square(top=8, left=14, side=10)           # touching
    assert analysis.contact_ratio(a, b) > 0.1
    assert analysis.contact_ratio(a, square(top=8, left=20, side=6)) == 0.0          # 6 px apart


def test_assign_groups_constructed():
    a, b = square(top=8, left=4, side=10), square(top=8, left=14, side=10)           # touching squares
    groups = analysis.assign_groups(make_coco([a, b], [1, 1]))
    assert all("occluded_similar" in g for g in groups.values())
    groups = analysis.assign_groups(make_coco([a, b], [1, 2]))
    assert not any("occluded_similar" in g for g in groups.values())
    groups = analysis.assign_groups(make_coco([ring(), square(top=24, left=24, side=6)], [1, 2]),
                                    thresholds={"area": 0.0})
    assert "complex_topology" in groups[1] and "complex_topology" not in groups[2]
    assert not any("small_blurry" in g for g in groups.values())
    # a category named like a glass object is transparent by name; no colour criterion without images
    coco = make_coco([a, square(top=24, left=24, side=6)], [1, 2])
    coco.cats[2]["name"] = "wine glass"
    groups = analysis.assign_groups(coco)
    assert "transparent" in groups[2] and "transparent" not in groups[1]


def test_assign_groups_deformed_is_relative_to_category():
    # three same-category squares and one L: only the L is deformed relative to its kind
    masks = [square(64, 2, 2, 10), square(64, 2, 30, 10), square(64, 30, 2, 10),
             np.pad(l_shape(), ((32, 0), (32, 0)))]
    groups = analysis.assign_groups(make_coco(masks, [1, 1, 1, 1]))
    assert [("deformed" in groups[i]) for i in (1, 2, 3, 4)] == [False, False, False, True]


def test_group_criteria_report_tiny(tiny_data):
    r = analysis.group_criteria_report(tiny_data["val_ann"], tiny_data["val_images"],
                                       tune_ann=tiny_data["train_ann"], tune_images=tiny_data["train_images"])
    assert set(r["groups"]) == set(analysis.GROUPS) and r["num_annotations"] > 0
    for stats in (*r["groups"].values(), *r["tuned"].values()):
        assert 0.0 <= stats["precision"] <= 1.0 and 0.0 <= stats["recall"] <= 1.0
    assert r["thresholds"]["contact"] is not None and r["num_images"] == 32
    again = analysis.group_criteria_report(tiny_data["val_ann"], tiny_data["val_images"], num_images=8,
                                           thresholds=r["thresholds"])
    assert again["num_images"] == 8 and again["tuned"] is None


def test_per_image_iou():
    a, b = square(), square(top=8, left=13, side=10)                                  # half overlap
    iou = analysis.per_image_iou(np.stack([a, b]), torch.from_numpy(np.stack([a])))
    assert iou.shape == (2, 1) and iou[0, 0] == pytest.approx(1.0) and iou[1, 0] == pytest.approx(50 / 150)
    assert analysis.per_image_iou(np.zeros((0, 32, 32), bool), np.stack([a])).shape == (0, 1)


# ------------------------------------------------------------------------------------- model measurements
def test_query_uniqueness_tiny_model(tiny_model, val_set):
    tiny_model.train()
    u = analysis.query_uniqueness(tiny_model, val_set, num_images=6, batch_size=3)
    assert tiny_model.training                                                       # mode restored
    assert u["num_images"] == 6 and u["num_queries"] == len(u["per_query"]) == len(u["labels"]) > 0
    for k in ("cross_fire", "own_fire"):
        assert 0.0 <= u[k] <= 1.0 and math.isfinite(u[k])
    assert u["cross_fire_same_class"] is not None and u["cross_fire_other_class"] is not None
    again = analysis.query_uniqueness(tiny_model, val_set, num_images=6, batch_size=2)   # seeded: same pool
    assert again["cross_fire"] == pytest.approx(u["cross_fire"], abs=1e-6)
    assert torch.equal(again["labels"], u["labels"])


def test_query_uniqueness_counts_fired_pixels(val_set):
    """Toy model with constant features 1 and embeddings of sign +-1: queries fire everywhere or nowhere."""
    class Const(ToyModel):
        def forward(self, images):
            out = super().forward(images)
            out["mask_features"] = torch.ones_like(out["mask_features"])
            sign = torch.where(torch.arange(5)[:, None] % 2 == 0, 1.0, -1.0)                # [5,1]
            out["mask_embed"] = sign.expand(len(images), 5, 8)
            out["pred_masks"] = torch.einsum("bqc,bchw->bqhw", out["mask_embed"], out["mask_features"])
            return out

    u = analysis.query_uniqueness(Const(), val_set, num_images=4)
    fires = torch.tensor([0.0, 1.0])
    assert all(float(v) in fires for v in u["per_query"])


def test_query_uniqueness_and_equivariance_error_on_condinst(val_set):
    """Target-dependent queries (CondInst): the proposals assigned to a GT fire through their dynamic heads at
    the pixels' normalised positions, which must give the model's own mask logits on the own image."""
    from iuq_lite.config import from_preset
    from iuq_lite.model import build_model, iuq_adapter

    torch.manual_seed(0)
    model = build_model(from_preset("shapes_condinst", {"model.pixel_channels": 32, "model.head_convs": 1,
                                                        "model.num_queries": 8}))
    u = analysis.query_uniqueness(model, val_set, num_images=4, batch_size=2)
    assert u["num_queries"] > 0 and 0.0 <= u["cross_fire"] <= 1.0 and 0.0 <= u["own_fire"] <= 1.0
    ad, r = iuq_adapter(model), analysis._matched(model, val_set, num_images=2, batch_size=2, matcher=None,
                                                    seed=0)[0]
    side = round(len(r["features"]) ** 0.5)                          # 64-px images, stride 4: a 16x16 grid
    own = ad.mask_logits(r["embed"][None], r["features"].T.reshape(1, -1, side, side))[0].flatten(1)  # [n,P]
    torch.testing.assert_close(ad.logits_fn(r["embed"][None], r["features"], r["positions"])[0], own,
                               atol=1e-5, rtol=1e-5)
    e = analysis.equivariance_errors(model, val_set, kinds=("hflip",), num_images=2, batch_size=2)
    assert math.isfinite(e["hflip"]) and e["hflip"] > 0


def test_heatmaps_and_similarity(tiny_model, val_set):
    (img_a, tgt_a), (img_b, _) = val_set[0], val_set[1]
    h = analysis.cross_image_heatmaps(tiny_model, img_a, torch.stack([img_b, img_b]), target_a=tgt_a)
    n = min(len(tgt_a["labels"]), tiny_model.num_queries)
    assert h["heatmaps"].shape == (n, 2, 16, 16) and h["own"].shape == (n, 16, 16)
    assert torch.allclose(h["heatmaps"][:, 0], h["heatmaps"][:, 1])
    s = analysis.embedding_similarity(tiny_model, val_set, num_images=4)
    assert s["similarity"].shape == (len(s["labels"]),) * 2
    assert torch.allclose(s["similarity"].diagonal(), torch.ones(len(s["labels"])), atol=1e-5)
    assert (s["labels"].diff() >= 0).all()


def test_equivariance_errors_tiny_model(tiny_model, val_set):
    e = analysis.equivariance_errors(tiny_model, val_set, num_images=4, batch_size=4)
    assert set(e) == {"hflip", "crop", "rotate", "scale"}
    assert all(math.isfinite(v) and v >= 0 for v in e.values())


def test_flip_equivariant_toy_model_has_zero_hflip_error():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    g = GeoTransform("hflip", {}, (32, 32), 4)
    assert analysis.equivariance_error(ToyModel(), images, g) < 1e-5
    assert analysis.equivariance_error(ToyModel(symmetric=False), images, g) > 1e-2
    assert analysis.equivariance_error(ToyModel(ramp=True), images, g) > 1e-2
    # an identity transform is trivially equivariant, whatever the model
    identity = GeoTransform("identity", {}, (32, 32), 4)
    assert analysis.equivariance_error(ToyModel(symmetric=False), images, identity) == 0.0


# ------------------------------------------------------------------------------------ gradient alignment
def test_alignment_of_known_vectors():
    g = torch.tensor([1.0, 2.0, 0.0])
    out = analysis._alignment({"a": g, "b": -3 * g, "c": torch.tensor([0.0, 0.0, 5.0]), "z": torch.zeros(3)})
    assert out["norm"]["b"] == pytest.approx(3 * math.sqrt(5))
    assert out["cos"]["a·b"] == pytest.approx(-1.0) and out["cos"]["a·c"] == pytest.approx(0.0)
    assert out["cos"]["a·z"] is None                        # undefined for a zero gradient, not nan in the JSON


def test_gradient_alignment_scales_with_the_term_weight_and_leaves_the_model(tiny_model, tiny_data):
    """Doubling lambda doubles ||grad lambda L_equi|| and changes no cosine; the measured model is untouched."""
    from iuq_lite.config import from_preset

    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    one, two = (analysis.gradient_alignment(tiny_model, from_preset("tiny_iuq", {"iuq.equi.weight": w}),
                                            num_batches=2, warmup=2) for w in (1.0, 2.0))
    assert set(one["all"]["norm"]) == {"intra", "inter", "equi"} and one["all"]["norm"]["intra"] > 0
    assert two["all"]["norm"]["equi"] == pytest.approx(2 * one["all"]["norm"]["equi"], rel=1e-4)
    assert two["all"]["norm"]["intra"] == pytest.approx(one["all"]["norm"]["intra"], rel=1e-4)
    assert two["all"]["cos"] == pytest.approx(one["all"]["cos"], abs=1e-4)
    assert all(-1 <= c <= 1 for c in one["all"]["cos"].values()) and "backbone" in one
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())
