"""An exported net served by onnxruntime (CPU, its default threads) against eager PyTorch on the same
machine, in one run: VGG-D at width 0.25 (seeded random weights; speed does not depend on them), the
classifier form at 224 and the dense form at Q = 384 (a 384 x 512 image), images/s of each and the
ratio; the export's own time (tracing, writing, the check at several sizes) and the file's size.

    python benchmarks/export_runtime.py [--batch 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import vgg_toolkit as vt


def rate(fn, x, rounds: int) -> float:
    fn(x)  # warm-up: allocations, oneDNN's and onnxruntime's first-call work
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return len(x) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import onnxruntime as ort

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        net = vt.create_model("vgg-d", num_classes=1000, width=0.25, fc_dim=1024, init="kaiming")
        info = vt.model_info(net).trained_on(None, vt.TrainScale(256, 512), [124.0, 117.0, 104.0])
        vt.set_model_info(net, info)
        weights = vt.save_weights(net, Path(tmp) / "d.safetensors")
        model = vt.load_trained(weights, say=None)
        rows = []
        for form, shape in (("classifier", (224, 224)), ("dense", (384, 512))):
            out = Path(tmp) / f"{form}.onnx"
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "vgg_toolkit", "export", str(weights), str(out), "--form", form,
                                   "--check-sizes", "224" if form == "classifier" else "224,384x512"],
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stderr[-2000:])
            seconds = time.perf_counter() - start
            session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            x = vt.input_preprocessing(model).apply(torch.randint(0, 256, (args.batch, 3, *shape), dtype=torch.uint8))
            with vt.model_form(model, fully_conv=form == "dense"):
                def eager(batch):
                    with torch.no_grad():
                        return model(vt.dense_input(model, batch) if form == "dense" else batch)
                torch_rate = rate(eager, x, args.rounds)
            ort_rate = rate(lambda batch: session.run(None, {name: batch.numpy()}), x, args.rounds)
            rows.append((form, f"{shape[0]}x{shape[1]}", torch_rate, ort_rate, seconds, out.stat().st_size / 2 ** 20))
    print(f"VGG-D, width 0.25, FC 1024, batch {args.batch}, median of {args.rounds}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), onnxruntime {ort.__version__}")
    print("| form | input | eager PyTorch img/s | onnxruntime img/s | ratio | export (s, incl. check) | file MiB |")
    print("|---|---|---|---|---|---|---|")
    for form, size, t, o, s, mb in rows:
        print(f"| {form} | {size} | {t:.1f} | {o:.1f} | {o / t:.2f} | {s:.1f} | {mb:.1f} |")


if __name__ == "__main__":
    main()
