"""Backbones (multi-scale features at strides 4, 8, 16, 32) and the FPN-style pixel decoder.

    backbone = build_backbone(cfg.model)          # .channels = (c4, c8, c16, c32), .strides = (4, 8, 16, 32)
    feats = backbone(x)                           # list of 4 tensors [B, c_s, H/s, W/s], finest first
    decoder = PixelDecoder(backbone.channels, conv_dim=cfg.model.pixel_channels, mask_dim=cfg.model.mask_dim)
    mask_features, levels = decoder(feats)        # [B, mask_dim, H/4, W/4]; [B, conv_dim, H/s, W/s] for s=32,16,8

Mask2Former's pixel decoder runs multi-scale deformable attention (a compiled CUDA op); ours is a plain FPN
(lateral 1x1 + top-down sum + 3x3 output convs, GroupNorm), so expect a few AP less at equal schedule
(METHOD §7). Everything here is plain PyTorch: no compiled custom ops, nothing downloads unless asked.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig

STRIDES = (4, 8, 16, 32)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with <= 32 groups of >= 4 channels: batch-size independent, so DDP matches one process."""
    return nn.GroupNorm(math.gcd(max(1, min(32, channels // 4)), channels), channels)


class ConvGN(nn.Sequential):
    """Conv(k x k, no bias) -> GroupNorm -> ReLU (optional)."""

    def __init__(self, cin: int, cout: int, *, k: int = 3, stride: int = 1, relu: bool = True):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), group_norm(cout)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SepConvGN(nn.Sequential):
    """Depthwise 3x3 -> pointwise 1x1 -> GroupNorm -> ReLU: a 3x3 output conv at a quarter of the cost."""

    def __init__(self, channels: int):
        super().__init__(nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False),
                         nn.Conv2d(channels, channels, 1, bias=False), group_norm(channels), nn.ReLU(inplace=True))


class _Stage(nn.Module):
    """Strided ConvGN, then one residual ConvGN: relu(x + GN(conv(x))). The residual keeps gradients flowing
    to the stem in a from-scratch net without the cost of full two-conv residual blocks."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.down = ConvGN(cin, cout, stride=stride)
        self.res = ConvGN(cout, cout, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return F.relu(x + self.res(x))


class TinyBackbone(nn.Module):
    """A ~1.2M-parameter CNN for 64-128 px images: stem to stride 4, then one stage per stride 8, 16, 32.

    Channels (w, 2w, 4w, 8w) with w = 32 by default; GroupNorm + ReLU throughout.
    """

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.channels = (w, 2 * w, 4 * w, 8 * w)
        self.strides = STRIDES
        # Two stride-2 convs reach stride 4 cheaply; the stride-4 map carries the mask detail.
        self.stem = nn.Sequential(ConvGN(3, w // 2, stride=2), ConvGN(w // 2, w, stride=2))
        self.stages = nn.ModuleList([_Stage(w, w, 1), _Stage(w, 2 * w, 2), _Stage(2 * w, 4 * w, 2),
                                     _Stage(4 * w, 8 * w, 2)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [B,3,H,W] (normalised) -> 4 maps [B, channels[i], H/strides[i], W/strides[i]], finest first."""
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class ResNetBackbone(nn.Module):
    """torchvision ResNet-18/50 trunk; returns layer1..layer4 (strides 4, 8, 16, 32).

    From scratch it uses GroupNorm (BatchNorm statistics would differ per DDP rank, DESIGN §7); with a
    pretrained checkpoint it uses FrozenBatchNorm2d holding the checkpoint's statistics, as Mask2Former does.
    """

    def __init__(self, name: str, pretrained: str | None = None):
        super().__init__()
        import torchvision
        from torchvision.ops import FrozenBatchNorm2d

        if name not in ("resnet18", "resnet34", "resnet50", "resnet101"):
            raise ValueError(f"unknown backbone {name!r}; choose tiny | resnet18 | resnet50")
        norm = FrozenBatchNorm2d if pretrained else group_norm
        net = getattr(torchvision.models, name)(weights=None, norm_layer=norm)
        if pretrained:
            missing, _ = net.load_state_dict(_resnet_state_dict(name, pretrained), strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing:
                raise RuntimeError(f"pretrained checkpoint {pretrained!r} lacks {len(missing)} backbone "
                                   f"weights, e.g. {missing[:3]}; expected a torchvision {name} state_dict")
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        wide = 4 if name in ("resnet50", "resnet101") else 1   # Bottleneck blocks expand x4
        self.channels = tuple(c * wide for c in (64, 128, 256, 512))
        self.strides = STRIDES

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [B,3,H,W] (normalised) -> 4 maps [B, channels[i], H/strides[i], W/strides[i]], finest first."""
        x = self.stem(x)
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


def _resnet_state_dict(name: str, pretrained: str) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state_dict from a local file, or from torchvision's ImageNet weights (online)."""
    if pretrained != "imagenet":
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.pretrained={pretrained!r} is not a file (expected a state_dict)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state.get("model", state) if isinstance(state, dict) else state
    import torchvision

    enum = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights",
            "resnet101": "ResNet101_Weights"}[name]
    weights = getattr(torchvision.models, enum).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except Exception as err:  # offline machines fail with URLError, socket errors, ...
        raise RuntimeError(
            f"could not download the ImageNet weights for {name} ({type(err).__name__}: {err}). On a machine "
            f"with network run:\n  python -c \"import torch, torchvision; torch.save(torchvision.models."
            f"{name}(weights='IMAGENET1K_V1').state_dict(), '{name}.pth')\"\nthen copy the file here and set "
            f"model.pretrained=/path/to/{name}.pth") from err


def build_backbone(model_cfg: ModelConfig) -> nn.Module:
    """The backbone named by model_cfg.backbone (tiny | resnet18 | resnet50), weights per model_cfg.pretrained.

    Returns a module with `.channels` (4 ints) and `.strides` == (4, 8, 16, 32) whose forward maps
    [B,3,H,W] -> list of 4 feature maps, finest first.
    """
    if model_cfg.backbone == "tiny":
        net = TinyBackbone()
        if model_cfg.pretrained:
            if model_cfg.pretrained == "imagenet":
                raise ValueError("the tiny backbone has no ImageNet weights; use a state_dict path or None")
            net.load_state_dict(torch.load(model_cfg.pretrained, map_location="cpu", weights_only=True))
        return net
    return ResNetBackbone(model_cfg.backbone, model_cfg.pretrained)


class PixelDecoder(nn.Module):
    """FPN: lateral 1x1 convs, top-down nearest-upsample-and-add, a 3x3 ConvGN output conv per level.

    forward(feats) -> (mask_features [B, mask_dim, H/4, W/4], [p32, p16, p8, p4] each [B, conv_dim, H/s, W/s]).
    Three of them (ModelConfig.decoder_strides) feed the query decoder's masked cross-attention (coarsest first);
    mask_features is a 1x1 projection of the stride-4 output (Mask2Former's `mask_features` conv).
    """

    def __init__(self, in_channels: tuple[int, ...], *, conv_dim: int, mask_dim: int):
        super().__init__()
        self.lateral = nn.ModuleList([ConvGN(c, conv_dim, k=1, relu=False) for c in in_channels])
        # The stride-4 map has 16x the pixels of stride 16: a dense 3x3 conv there was ~20 % of a CPU training
        # step (shapes preset: 53 ms fwd+bwd vs 14 ms separable, 1 thread), so that level uses a separable one.
        self.output = nn.ModuleList([SepConvGN(conv_dim) if i == 0 else ConvGN(conv_dim, conv_dim)
                                     for i in range(len(in_channels))])
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        self.conv_dim = conv_dim

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        outs: list[torch.Tensor] = []
        y = None
        for i in reversed(range(len(feats))):          # coarsest (stride 32) first
            lat = self.lateral[i](feats[i])
            if y is not None:
                lat = lat + F.interpolate(y, size=lat.shape[-2:], mode="nearest")
            y = self.output[i](lat)
            outs.append(y)
        # outs = [p32, p16, p8, p4]
        return self.mask_features(outs[-1]), outs
