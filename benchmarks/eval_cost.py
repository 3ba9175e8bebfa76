"""Cost of the paper's two test protocols per image: dense (fully-convolutional net on the whole image
and its flip) against multi-crop (5x5 crops x 2 flips per scale, 150 crops over 3 scales), timed in the
same run on the same images, and printed as a ratio (the paper's Sec. 3.2 argument for dense
evaluation: it avoids recomputing overlapping crops).

    python benchmarks/eval_cost.py                         # VGG-D at width 0.25, Q = 256,384,512
    python benchmarks/eval_cost.py --width 1 --device cuda # the paper's net on a GPU
    python benchmarks/eval_cost.py --arch vgg-a --scales 256 --images 4

The net is randomly initialised: cost does not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _photo(height: int, width: int):
    """A real photograph (scikit-image's coffee) at height x width, mean subtracted; noise if unavailable."""
    import torch
    import torch.nn.functional as F

    try:
        from skimage import data

        rgb = torch.from_numpy(data.coffee()).permute(2, 0, 1).float()[None]
        rgb = F.interpolate(rgb, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        return rgb - rgb.mean(dim=(2, 3), keepdim=True), "skimage coffee"
    except ImportError:
        return torch.randn(1, 3, height, width) * 60, "random noise"


def _timed(fn, repeats: int, device) -> list[float]:
    import torch

    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vgg-d")
    parser.add_argument("--width", type=float, default=0.25, help="channel multiplier (1 = the paper's net)")
    parser.add_argument("--fc-dim", type=int, default=4096)
    parser.add_argument("--crop", type=int, default=224, help="training crop (the net's input_size)")
    parser.add_argument("--scales", default="256,384,512", help="test scales Q")
    parser.add_argument("--image", default="384x512", help="HxW of the raw images (rescaled to each Q)")
    parser.add_argument("--images", type=int, default=1, help="images per evaluator call (one same-size batch)")
    parser.add_argument("--batch-size", type=int, default=50, help="rows per forward pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    import torch

    from vgg_toolkit import create_model, parse_test_scales
    from vgg_toolkit.plugins.evaluators.protocols import Dense, MultiCrop

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    height, width = (int(v) for v in args.image.lower().split("x"))
    scales = parse_test_scales(args.scales)

    torch.manual_seed(0)
    model = create_model(args.arch, num_classes=1000, width=args.width, fc_dim=args.fc_dim,
                         input_size=args.crop).eval().to(device)
    image, source = _photo(height, width)
    images = image.expand(args.images, -1, -1, -1).contiguous().to(device)
    dense = Dense(scales=scales, batch_size=args.batch_size)
    multicrop = MultiCrop(scales=scales, batch_size=args.batch_size)

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} threads ({os.cpu_count()} cores visible)"
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.arch} width {args.width:g} fc {args.fc_dim} ({params / 1e6:.1f} M parameters), crop {args.crop}, "
          f"fp32 on {name}")
    print(f"{args.images} image(s) of {height}x{width} ({source}), test scales Q = {','.join(map(str, scales))}; "
          f"median of {args.repeats} after one warm-up")

    # warm-up at the smallest scale only: first-call allocations and kernel selection, not the timing
    Dense(scales=scales[:1], batch_size=args.batch_size)(model, images[:1])
    MultiCrop(scales=scales[:1], batch_size=args.batch_size, grid=1)(model, images[:1])

    # dense and multi-crop alternate, so load from other users of a shared machine hits both alike
    times: dict[str, list[float]] = {"dense": [], "multi-crop": []}
    evaluators = {"dense": dense, "multi-crop": multicrop}
    for _ in range(args.repeats):
        for label, evaluator in evaluators.items():
            times[label] += _timed(lambda: evaluator(model, images), 1, device)
    per_image = {label: statistics.median(t) / args.images for label, t in times.items()}
    ratios = [m / d for d, m in zip(times["dense"], times["multi-crop"])]
    print(f"{'protocol':<10}  {'net inputs/image':>16}  {'s/image':>9}  {'min s/image':>11}")
    for label, evaluator in evaluators.items():
        kind = "whole images" if label == "dense" else "crops"
        views = f"{evaluator.views_per_image(model)} {kind}"
        print(f"{label:<10}  {views:>16}  {per_image[label]:9.3f}  {min(times[label]) / args.images:11.3f}")
    print(f"multi-crop / dense time per image: {statistics.median(ratios):.2f}x "
          f"(median of {len(ratios)} paired runs, range {min(ratios):.2f}-{max(ratios):.2f}; baseline: dense)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
