"""LPIPS (Zhang et al. 2018), the VGG variant at version 0.1, computed as the reference implementation
does: inputs in [-1, 1] shifted and scaled by its fixed layer, VGG16's relu1_2, relu2_2, relu3_3, relu4_3
and relu5_3, each position's channel vector made unit length, squared differences weighted by a learned
1 x 1 head per layer, averaged over positions, summed over layers. The heads come from a file the user
names (the ``lpips`` package ships them as ``weights/v0.1/vgg.pth``), read as tensors only; the trunk
from any VGG16 weights (the reference's are torchvision's IMAGENET1K_V1)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..contract.model import model_info
from ..errors import VggtkError
from .features import freeze, to_pixels
from .perceptual import unit_channels

TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
CHANNELS = (64, 128, 256, 512, 512)
# The reference's input layer: ImageNet's mean and std carried to [-1, 1] inputs, rounded as it rounds them.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
MAX_HEADS_BYTES = 1 << 20  # the released file is 7 KB: anything far larger is not a heads file


def read_heads(path: str | os.PathLike) -> list[torch.Tensor]:
    """The five 1 x C x 1 x 1 heads from a ``.pth`` (loaded with ``weights_only``: no code is unpickled)
    or ``.safetensors`` file, keys ``lin0`` .. ``lin4`` as the reference names them; shapes and values
    checked, each error one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise VggtkError(f"{path}: no such LPIPS heads file")
    if path.stat().st_size > MAX_HEADS_BYTES:
        raise VggtkError(f"{path}: {path.stat().st_size} bytes is far more than LPIPS's five 1x1 heads")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file: pickle, zip and safetensors each raise their own
        raise VggtkError(f"{path}: not a readable LPIPS heads file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    if not isinstance(tensors, Mapping):
        raise VggtkError(f"{path}: holds a {type(tensors).__name__}, not a dict of tensors")
    heads = []
    for i, channels in enumerate(CHANNELS):
        # With the reference's dropout the conv is the Sequential's second module, without it the first.
        found = [k for k in (f"lin{i}.model.1.weight", f"lin{i}.model.0.weight") if k in tensors]
        if not found:
            raise VggtkError(f"{path}: no lin{i}.model.1.weight (LPIPS's head for {TAPS[i]}); holds "
                             f"{', '.join(sorted(map(str, tensors))[:6]) or 'nothing'}")
        head = tensors[found[0]]
        if not isinstance(head, torch.Tensor) or not head.is_floating_point():
            raise VggtkError(f"{path}: {found[0]} is not a float tensor")
        if tuple(head.shape) != (1, channels, 1, 1):
            raise VggtkError(f"{path}: {found[0]} has shape {tuple(head.shape)}; LPIPS-VGG's head for {TAPS[i]} "
                             f"is (1, {channels}, 1, 1)")
        if not torch.isfinite(head).all():
            raise VggtkError(f"{path}: {found[0]} holds values that are not finite")
        heads.append(head.detach().to(torch.float32).clone())
    return heads


class LPIPS(nn.Module):
    """``lpips(a, b) -> N distances``: images N x 3 x H x W in [-1, 1] (``normalize=True``: in [0, 1]), as
    the reference's ``forward``; its N x 1 x 1 x 1 result is returned flat. ``per_layer=True`` also gives
    each layer's term. ``trunk`` is a VGG16 (config D, no BatchNorm); with a torchvision-family record (or
    none) it gets the reference's input layer, with another family (Caffe's BGR 0-255) its own record, since
    the reference's layer would feed it the wrong input."""

    def __init__(self, trunk: nn.Module, heads: str | os.PathLike | list[torch.Tensor]):
        super().__init__()
        info = model_info(trunk)
        if info.arch != "vgg-d" or info.options.get("batch_norm") or info.options.get("lrn"):
            raise VggtkError(f"LPIPS-VGG's trunk is VGG16 (vgg-d, no BatchNorm); got {info.arch}"
                             f"{' with BatchNorm' if info.options.get('batch_norm') else ''}")
        if (info.in_chans or 3) != 3:
            raise VggtkError(f"LPIPS-VGG's trunk takes RGB images; this VGG16 takes {info.in_chans} channel(s)")
        heads = read_heads(heads) if not isinstance(heads, list) else heads
        for i, (head, channels) in enumerate(zip(heads, CHANNELS)):
            if tuple(head.shape) != (1, channels, 1, 1):
                raise VggtkError(f"LPIPS head {i} has shape {tuple(head.shape)}, not (1, {channels}, 1, 1)")
        # None: the reference's scaling layer; else the trunk's own record, on [-1, 1] made 0-255 pixels.
        reference = info.preprocessing is None or info.preprocessing.family == "torchvision"
        self.preprocessing = None if reference else info.input_preprocessing()
        self.net = freeze(trunk)
        widths = [f.shape[1] for f in self._trunk_widths()]
        if widths != list(CHANNELS):
            raise VggtkError(f"the trunk's {', '.join(TAPS)} have {widths} channels, LPIPS-VGG's {list(CHANNELS)}")
        for i, head in enumerate(heads):
            self.register_buffer(f"head{i}", head.clone())
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def _trunk_widths(self) -> list[torch.Tensor]:
        device = next(self.net.parameters()).device
        with torch.no_grad():
            out = self.net.forward_features(torch.zeros(1, 3, 32, 32, device=device), TAPS)
        return [out[t] for t in TAPS]

    def train(self, mode: bool = True) -> "LPIPS":
        return self  # a metric: the reference runs in eval mode, its heads' dropout off

    def layers(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.preprocessing is None:
            return self.net.forward_features((images - self.shift) / self.scale, TAPS)
        return self.net.forward_features(self.preprocessing.apply(to_pixels(images, "-1-1"), dtype=images.dtype), TAPS)

    def forward(self, a: torch.Tensor, b: torch.Tensor, normalize: bool = False, per_layer: bool = False):
        if a.shape != b.shape:
            raise VggtkError(f"LPIPS compares images of one size: {tuple(a.shape)} and {tuple(b.shape)}")
        if normalize:
            a, b = 2 * a - 1, 2 * b - 1
        fa, fb = self.layers(a), self.layers(b)
        terms = []
        for i, tap in enumerate(TAPS):
            diff = (unit_channels(fa[tap]) - unit_channels(fb[tap])).pow(2)
            terms.append(nn.functional.conv2d(diff, getattr(self, f"head{i}")).mean((2, 3)).flatten())
        total = torch.stack(terms).sum(0)
        return (total, dict(zip(TAPS, terms))) if per_layer else total
