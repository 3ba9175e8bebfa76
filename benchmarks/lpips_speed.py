"""LPIPS-VGG forward and backward to the input: ``vt.LPIPS`` against the reference implementation's
structure written in plain PyTorch (its scaling layer, torchvision's VGG16 ``features`` cut into five
slices, unit-normalised channels, dropout + 1x1 heads, spatial mean), the same seeded weights in both, in
one run, alternating, median of the rounds. On CUDA it adds ``vt.LPIPS`` with the fused Triton conv+ReLU
kernels (``--conv-backend triton``) under the same timing.

    python benchmarks/lpips_speed.py [--size 256] [--batch 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import vgg_toolkit as vt

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
CUTS = (4, 9, 16, 23, 30)  # the ends of the reference's slices of torchvision's vgg16().features


class ReferenceStructure(nn.Module):
    """What the reference module runs, layer for layer, in plain PyTorch modules."""

    def __init__(self, convs: list[nn.Conv2d], heads: list[torch.Tensor]):
        super().__init__()
        layers, convs = [], iter(convs)
        for v in VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                source = next(convs)
                conv = nn.Conv2d(source.in_channels, v, 3, padding=1)
                conv.load_state_dict(source.state_dict())
                layers += [conv, nn.ReLU(inplace=True)]
        starts = (0, *CUTS[:-1])
        self.slices = nn.ModuleList(nn.Sequential(*layers[a:b]) for a, b in zip(starts, CUTS))
        self.lins = nn.ModuleList()
        for head in heads:
            conv = nn.Conv2d(head.shape[1], 1, 1, bias=False)
            conv.weight.data.copy_(head)
            self.lins.append(nn.Sequential(nn.Dropout(), conv))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def layers(self, x):
        out, x = [], (x - self.shift) / self.scale
        for s in self.slices:
            x = s(x)
            out.append(x)
        return out

    def forward(self, a, b):
        total = 0
        for fa, fb, lin in zip(self.layers(a), self.layers(b), self.lins):
            na = fa / (torch.sqrt(torch.sum(fa ** 2, dim=1, keepdim=True)) + 1e-10)
            nb = fb / (torch.sqrt(torch.sum(fb ** 2, dim=1, keepdim=True)) + 1e-10)
            total = total + lin((na - nb) ** 2).mean([2, 3], keepdim=True)
        return total


def step(metric, a, b) -> None:
    x = a.clone().requires_grad_(True)
    metric(x, b).sum().backward()
    if x.device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    trunk = vt.create_model("vgg-d", num_classes=10, fc_dim=64, init="kaiming")
    heads = [torch.rand(1, c, 1, 1) * 0.1 for c in (64, 128, 256, 512, 512)]
    convs = [m for m in trunk.features.modules() if isinstance(m, nn.Conv2d)]
    metrics = {"reference structure": ReferenceStructure(convs, heads).to(device),
               "vt.LPIPS": vt.LPIPS(vt.prepare_model(trunk, device, {"conv_backend": "torch"}, "distance"),
                                    [h.to(device) for h in heads])}
    if device.type == "cuda":
        fused = vt.create_model("vgg-d", num_classes=10, fc_dim=64)
        fused.load_state_dict(trunk.state_dict())
        metrics["vt.LPIPS, Triton kernels"] = vt.LPIPS(
            vt.prepare_model(fused, device, {"conv_backend": "triton"}, "distance"), [h.to(device) for h in heads])
    a = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
    b = (a + 0.1 * torch.randn_like(a)).clamp(-1, 1)
    with torch.no_grad():
        want = metrics["reference structure"](a, b).flatten()
        for name, metric in metrics.items():
            got = metric(a, b).flatten()
            print(f"{name}: largest relative difference from the reference "
                  f"{float((got - want).abs().max() / want.abs().max()):.2e}")
    times = {name: [] for name in metrics}
    for metric in metrics.values():
        step(metric, a, b)  # warm-up: allocations, oneDNN's first-call work, Triton's compile and tuning
    for _ in range(args.rounds):
        for name, metric in metrics.items():
            start = time.perf_counter()
            step(metric, a, b)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["reference structure"])
    print(f"{device.type}, torch {torch.__version__} ({torch.get_num_threads()} threads), batch {args.batch}, "
          f"{args.size}x{args.size}, forward + backward to the input, median of {args.rounds}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:28s} {median:8.3f} s  {args.batch / median:7.2f} img/s  "
              f"time / reference {median / base:.3f}  (rounds {', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
