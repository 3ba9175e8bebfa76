"""LPIPS-VGG v0.1 written here from its published description (Zhang et al. 2018 and the reference
implementation's documented steps), and the seeded files the tests feed vggtk: VGG16 weights in
torchvision's layout and 1x1 heads in the reference's layout."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from pretrained_refs import torchvision_state

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
# The reference's five taps end its slices of torchvision's vgg16().features: [0:4], [4:9], [9:16], [16:23], [23:30].
CHANNELS = (64, 128, 256, 512, 512)
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def reference_taps(sd: dict, x: torch.Tensor) -> list[torch.Tensor]:
    """The trunk's outputs at the ends of the reference's five slices, for an input already normalised."""
    out, index = [], 0
    for v in VGG16:
        if v == "M":
            x, index = F.max_pool2d(x, 2, 2), index + 1
        else:
            x = F.relu(F.conv2d(x, sd[f"features.{index}.weight"], sd[f"features.{index}.bias"], padding=1))
            index += 2
            if index - 1 in (3, 8, 15, 22, 29):  # the ReLU (index - 1) that ends each slice
                out.append(x)
                if len(out) == 5:  # the reference's last slice ends at relu5_3: pool5 never runs
                    return out
    return out


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + 1e-10)


def reference_lpips(sd: dict, heads: list[torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1 as published: inputs in [-1, 1], (x - shift) / scale with its rounded constants, the
    trunk's features at the ends of its five slices, each divided by (the channel vector's length + 1e-10),
    squared difference, a 1x1 conv without bias, the spatial mean, summed over the five layers."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    total = 0
    for fa, fb, head in zip(reference_taps(sd, (a - shift) / scale), reference_taps(sd, (b - shift) / scale), heads):
        total = total + F.conv2d((unit(fa) - unit(fb)) ** 2, head).mean([2, 3], keepdim=True)
    return total.flatten()


def write_lpips_files(root: Path) -> tuple[dict, list[torch.Tensor]]:
    """Seeded random VGG16 weights in torchvision's layout (a small FC: LPIPS never runs it) as
    ``root/vgg16.pth`` and seeded non-negative heads in the reference's layout as ``root/vgg.pth``."""
    sd = torchvision_state(16, classes=10, fc=32, config=VGG16)
    assert [k for k in sd if k.startswith("features.")][-2:] == ["features.28.weight", "features.28.bias"]
    torch.save(sd, root / "vgg16.pth")
    g = torch.Generator().manual_seed(1)
    heads = [torch.rand(1, c, 1, 1, generator=g) * 0.1 for c in CHANNELS]
    torch.save({f"lin{i}.model.1.weight": h for i, h in enumerate(heads)}, root / "vgg.pth")
    return sd, heads
