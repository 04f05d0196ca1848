"""iuq_lite.transforms: one parameter set acting consistently on images, masks and features."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from iuq_lite import transforms as T

SETTINGS = settings(derandomize=True, deadline=None, max_examples=25)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 1.0


def _disk(H: int, W: int, cy: float, cx: float, r: float) -> torch.Tensor:
    """[H,W] bool, pixel centres (i + 0.5) inside the disk."""
    y = torch.arange(H, dtype=torch.float64)[:, None] + 0.5
    x = torch.arange(W, dtype=torch.float64)[None, :] + 0.5
    return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


sizes = st.sampled_from([(32, 32), (32, 48), (48, 32), (64, 64)])


@SETTINGS
@given(size=sizes, seed=st.integers(0, 10_000))
def test_hflip_twice_is_identity(size, seed):
    g = T.sample("hflip", image_size=size, stride=4, generator=_gen(seed))
    x = torch.rand(2, 3, *size, generator=_gen(seed))
    m = torch.rand(3, *size, generator=_gen(seed + 1)) > 0.5
    f = torch.rand(2, 5, size[0] // 4, size[1] // 4, generator=_gen(seed + 2))
    assert torch.equal(g.image(g.image(x)), x)
    assert torch.equal(g.masks(g.masks(m)), m) and g.masks(m).dtype == torch.bool
    assert torch.equal(g.features(g.features(f)), f)
    assert torch.equal(g.image(x), x.flip(-1))
    assert g.valid(f.shape[-2:]).all()


@SETTINGS
@given(size=sizes, stride=st.sampled_from([2, 4, 8]), seed=st.integers(0, 10_000))
def test_crop_of_features_equals_features_of_crop(size, stride, seed):
    """avg_pool2d(., s) is border-free, so crop and pooling must commute exactly on the stride grid."""
    g = T.sample("crop", image_size=size, stride=stride, generator=_gen(seed))
    p = g.params
    assert all(p[k] % stride == 0 for k in ("top", "left", "height", "width"))
    lo = 0.6
    assert p["height"] >= min(size[0], max(stride, math.floor(lo * size[0] / stride) * stride))
    x = torch.rand(2, 3, *size, generator=_gen(seed))
    feats = F.avg_pool2d(x, stride)
    assert torch.equal(g.features(feats), F.avg_pool2d(g.image(x), stride))
    assert g.image(x).shape[-2:] == (p["height"], p["width"])
    assert g.valid(feats.shape[-2:]).shape == g.features(feats).shape[-2:]
    assert g.valid(feats.shape[-2:]).all()
    m = torch.rand(2, 4, *size, generator=_gen(seed + 1)) > 0.3
    assert torch.equal(g.masks(m), m[..., p["top"]:p["top"] + p["height"], p["left"]:p["left"] + p["width"]])


@SETTINGS
@given(kind=st.sampled_from(["rotate", "scale"]), size=st.sampled_from([(64, 64), (64, 96), (96, 64)]),
       seed=st.integers(0, 10_000))
def test_warped_image_and_mask_stay_aligned(kind, size, seed):
    """A disk rendered as an image channel and as a mask: transform both, threshold, compare; and compare
    with the analytically transformed disk (centre through g.points, radius times the scale)."""
    H, W = size
    gen = _gen(seed)
    g = T.sample(kind, image_size=size, stride=4, generator=gen)
    r = min(H, W) * (0.15 + 0.1 * float(torch.rand((), generator=gen)))
    cy = H / 2 + (float(torch.rand((), generator=gen)) - 0.5) * H * 0.3
    cx = W / 2 + (float(torch.rand((), generator=gen)) - 0.5) * W * 0.3
    disk = _disk(H, W, cy, cx, r)
    img = torch.zeros(1, 3, H, W)
    img[0, 1] = disk.float()
    m_g = g.masks(disk[None])[0]
    img_mask = g.image(img)[0, 1] > 0.5
    c_out = g.points(torch.tensor([[cy, cx]], dtype=torch.float64))[0]
    analytic = _disk(H, W, float(c_out[0]), float(c_out[1]), r * g.params.get("scale", 1.0))
    analytic &= g.valid((H, W))
    if analytic.sum() < 100:  # too few pixels for IoU to measure alignment rather than digitisation
        return
    assert _iou(img_mask, m_g) >= 0.9
    assert _iou(m_g, analytic) >= 0.9
    assert m_g.dtype == torch.bool and not (m_g & ~g.valid((H, W))).any()


@pytest.mark.parametrize("angle", [20.0, -45.0, 90.0])
def test_rotated_rectangle_matches_analytic_inverse(angle):
    """Independent pixel-space inverse map on a non-square canvas (rotation must be rigid in pixels)."""
    H, W = 48, 64
    g = T.GeoTransform("rotate", {"angle": angle}, (H, W), 4)
    rect = torch.zeros(H, W, dtype=torch.bool)
    rect[16:30, 20:44] = True
    y = torch.arange(H, dtype=torch.float64)[:, None] + 0.5 - H / 2
    x = torch.arange(W, dtype=torch.float64)[None, :] + 0.5 - W / 2
    a = math.radians(angle)
    xs = math.cos(a) * x - math.sin(a) * y + W / 2  # R(-a) applied to output pixel centres
    ys = math.sin(a) * x + math.cos(a) * y + H / 2
    analytic = (ys >= 16) & (ys < 30) & (xs >= 20) & (xs < 44)
    assert _iou(g.masks(rect), analytic) >= 0.9


def test_rotate_validity_corners_and_centre():
    g = T.GeoTransform("rotate", {"angle": 45.0}, (64, 64), 4)
    for shape in [(64, 64), (16, 16)]:
        v = g.valid(shape)
        h, w = shape
        assert v.shape == shape and v[h // 2, w // 2] and v[h // 2 - 1, w // 2 - 1]
        assert not v[0, 0] and not v[0, -1] and not v[-1, 0] and not v[-1, -1]
    # valid == the nearest-warp of an all-ones map
    ones = torch.ones(16, 16, dtype=torch.bool)
    assert torch.equal(g.masks(ones), g.valid((16, 16)))
    zoom_in = T.GeoTransform("scale", {"scale": 1.5}, (64, 64), 4)
    assert zoom_in.valid((16, 16)).all()
    zoom_out = T.GeoTransform("scale", {"scale": 0.5}, (64, 64), 4)
    v = zoom_out.valid((16, 16))
    assert v.sum() == 64 and v[4:12, 4:12].all()


def test_identity_rotation_is_exact():
    x = torch.rand(1, 3, 32, 48)
    for g in [T.GeoTransform("rotate", {"angle": 0.0}, (32, 48), 4),
              T.GeoTransform("scale", {"scale": 1.0}, (32, 48), 4)]:
        assert torch.allclose(g.image(x), x, atol=1e-5)
        assert g.valid((8, 12)).all()


@pytest.mark.parametrize("kind", T.KINDS)
def test_same_seed_same_params_and_gradient(kind):
    a = T.sample(kind, image_size=(64, 96), stride=4, generator=_gen(7))
    b = T.sample(kind, image_size=(64, 96), stride=4, generator=_gen(7))
    assert a == b
    f = torch.rand(2, 8, 16, 24, requires_grad=True)
    out = a.features(f)
    assert out.requires_grad
    out.sum().backward()
    assert f.grad is not None and f.grad.abs().sum() > 0


def test_ranges_and_distinct_draws():
    gen = _gen(0)
    angles = [T.sample("rotate", image_size=(32, 32), stride=4, generator=gen,
                       ranges={"rotate": (10, 20)}).params["angle"] for _ in range(30)]
    assert all(10 <= abs(a) <= 20 for a in angles) and min(angles) < 0 < max(angles)
    scales = [T.sample("scale", image_size=(32, 32), stride=4, generator=gen).params["scale"] for _ in range(30)]
    assert all(0.5 <= s <= 2.0 for s in scales) and min(scales) < 1 < max(scales)
    crops = [T.sample("crop", image_size=(64, 64), stride=4, generator=gen,
                      ranges={"crop": (0.5, 0.5)}).params for _ in range(10)]
    assert all(c["height"] == 32 and c["width"] == 32 for c in crops)
    assert len({(c["top"], c["left"]) for c in crops}) > 1


def test_bad_inputs_raise_clear_errors():
    gen = _gen(0)
    with pytest.raises(ValueError, match="unknown transform kind"):
        T.sample("shear", image_size=(32, 32), stride=4, generator=gen)
    with pytest.raises(ValueError, match="divisible by stride"):
        T.sample("crop", image_size=(30, 32), stride=4, generator=gen)
    g = T.GeoTransform("crop", {"top": 4, "left": 4, "height": 8, "width": 8}, (32, 32), 4)
    with pytest.raises(ValueError, match="not whole pixels"):
        g.features(torch.rand(1, 2, 4, 4))  # stride 8: box 4 px -> half a feature pixel
    with pytest.raises(ValueError, match="aspect"):
        g.features(torch.rand(1, 2, 8, 4))


def test_masks_ranks_and_empty():
    g = T.GeoTransform("rotate", {"angle": 30.0}, (32, 32), 4)
    assert g.masks(torch.zeros(0, 32, 32, dtype=torch.bool)).shape == (0, 32, 32)
    assert g.masks(torch.zeros(2, 3, 32, 32, dtype=torch.bool)).shape == (2, 3, 32, 32)
    out = g.masks_list([torch.ones(1, 32, 32, dtype=torch.bool), torch.zeros(0, 32, 32, dtype=torch.bool)])
    assert [o.shape[0] for o in out] == [1, 0] and out[0].dtype == torch.bool
