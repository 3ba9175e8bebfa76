"""JPEG decoding on the GPU (``--decode device``) against the workers' decode, on JPEGs made from real
photos, with the paper's training augmentation (S ~ U[256, 512], 224 crop, flip, colour shift):

1. the pixels: each batch through ``ShardSource.finish`` both ways, the difference in levels;
2. the speed of ``DeviceDecoder.assemble`` (decode, reduce, crop, resample) on the device, against the
   same images decoded one core's way (the workers' code, in this process), measured in the same run.

    python benchmarks/gpu_decode_check.py             # on a CUDA machine with torchvision
    python benchmarks/gpu_decode_check.py --rehearse  # anywhere: PIL stands in for nvJPEG; speeds mean nothing

``benchmarks/gpu_check.py`` runs it as its last phase (``decode_rows``).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_throughput import make_jpegs  # noqa: E402  (JPEGs from the real photos at hand)

from vgg_toolkit import TrainScale  # noqa: E402
from vgg_toolkit.data.device_decode import DeviceDecoder, jpeg_decoder, pillow_decoder  # noqa: E402
from vgg_toolkit.data.pipeline import train_pipeline  # noqa: E402
from vgg_toolkit.data.shards.create import create_shards  # noqa: E402
from vgg_toolkit.data.sources import image_folder  # noqa: E402
from vgg_toolkit.runtime.distributed import DistEnv  # noqa: E402
from vgg_toolkit.train.batches import ShardSource  # noqa: E402

BATCH = 64


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_rows(rehearse: bool, images: int) -> list[dict]:
    """The check as rows ``{"what", "value", "ok"}``: the device's refusals are figures, not assertions."""
    device = torch.device("cpu" if rehearse else "cuda")
    decoder, why = (pillow_decoder(), "") if rehearse else jpeg_decoder(device)
    if decoder is None:
        return [{"what": "GPU JPEG decoder", "value": f"none: {why}", "ok": False}]
    with tempfile.TemporaryDirectory() as tmp:
        folder, shards = Path(tmp) / "folder", Path(tmp) / "shards"
        make_jpegs(folder, images)
        manifest = create_shards(image_folder(folder), shards, samples_per_shard=256, splits={"train": 1.0},
                                 compress=False)
        pipeline = train_pipeline(manifest, crop=224, scale=TrainScale(256, 512))
        on_gpu = ShardSource(manifest, pipeline, seed=0, workers=0, on_error="fail", decoder=decoder)
        in_workers = ShardSource(manifest, pipeline, seed=0, workers=0, on_error="fail")
        env, diffs, batches = DistEnv(), [], []
        for a, b in zip(on_gpu.train_batches(0, 0, env, BATCH, BATCH), in_workers.train_batches(0, 0, env, BATCH, BATCH)):
            batches.append((a.images, a.pending, len(a)))
            x = on_gpu.finish(a, device, 0)
            y = in_workers.finish(b, device, 0)
            diffs.append(((x - y).abs() * 255).flatten().cpu())
        diff = torch.cat(diffs)
        workers_code = DeviceDecoder(decoder.decode, "off")
        workers_code.active = False  # every image the workers' way, in this process
        failed_in_timing = []

        def timed(dec: DeviceDecoder, dev: torch.device) -> float:
            _sync(dev)
            start = time.perf_counter()
            for images_, pending, size in batches:
                _, failed = dec.assemble(images_, pending, size, dev)
                failed_in_timing.extend(failed)
            _sync(dev)
            return sum(len(pending) for _, pending, _ in batches) / (time.perf_counter() - start)

        torch.set_num_threads(1)  # the workers' way, one core
        timed(decoder, device)  # warm: nvJPEG's handles, the allocator
        rates = {"device": [], "one core": []}
        for _ in range(3):
            rates["device"].append(timed(decoder, device))
            rates["one core"].append(timed(workers_code, torch.device("cpu")))
    dev_rate, cpu_rate = sorted(rates["device"])[1], sorted(rates["one core"])[1]
    mean = float(diff.mean())
    return [
        {"what": "images", "value": f"{images} JPEGs of 500x375 / 375x500 from real photos, S ~ U[256, 512], 224 "
                                    f"crop, batch {BATCH}", "ok": True},
        {"what": "refused by the device decoder (decoded by the workers' code instead)",
         "value": f"{decoder.refused} of {images}" + (f" ({decoder.why})" if decoder.refused else ""),
         "ok": decoder.refused < images},
        {"what": "failed to decode either way while timed", "value": str(len(failed_in_timing)),
         "ok": not failed_in_timing},
        {"what": "pixels against the workers' decode",
         "value": f"{mean:.2f} levels on average, {(diff > 12).float().mean() * 100:.3f}% over 12, at most "
                  f"{diff.max():.0f}", "ok": mean < 2.0},
        {"what": "one CPU core, the workers' code", "value": f"{cpu_rate:.0f} images/s (median of 3)", "ok": True},
        {"what": "the device, `DeviceDecoder.assemble`",
         "value": f"{dev_rate:.0f} images/s (median of 3), {dev_rate / cpu_rate:.2f}x one core", "ok": True},
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rehearse", action="store_true", help="no GPU: PIL stands in for nvJPEG on the CPU")
    args = parser.parse_args(argv)
    rows = decode_rows(args.rehearse, args.images)
    name = ("CPU, PIL standing in for nvJPEG (speeds mean nothing)" if args.rehearse else
            torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
    print("\n".join([f"## GPU check: JPEG decoding on the device, {name}", "",
                     f"{datetime.date.today().isoformat()}, torch {torch.__version__}; "
                     f"`python benchmarks/gpu_decode_check.py{' --rehearse' if args.rehearse else ''}`", "",
                     *[f"- {r['what']}: {r['value']}" for r in rows]]), flush=True)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
