"""Converting the authors' Caffe release: a full-size VGG-16 ``.caffemodel`` (the release's layers and V1
records, seeded random weights, 553 MB), written here layer by layer, then ``vggtk convert`` to safetensors
in a fresh process, beside the baseline of loading the same weights from that safetensors file into a
ready net (``vggtk.load_trained``), also in a fresh process. Prints wall time and peak resident memory of
each, and peak memory as a multiple of the weights' size.

    python benchmarks/caffe_convert.py                 # in a temporary folder, removed afterwards
    python benchmarks/caffe_convert.py --keep DIR      # keep the files in DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from caffe_writer import CONFIG_D, write_vgg  # noqa: E402

# Peak memory from /proc's VmHWM, this process image's own high-water mark: ru_maxrss keeps the parent's
# across fork and exec, and the parent has just written the 553 MB file.
CHILD = """
import json, re, sys, time
start = time.perf_counter()
{body}
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())
print(json.dumps({{"seconds": time.perf_counter() - start, "peak_mb": int(hwm.group(1)) / 1024}}))
"""
CONVERT = """
from vgg_toolkit.cli import main
try:
    main(["convert", sys.argv[1], sys.argv[2]])
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
"""
# What both pay whatever the weights: the imports, the plugins, a VGG-16 built on the meta device.
FIXED = """
import torch
import vgg_toolkit as vt
with torch.device("meta"):
    vt.create_model("vgg-d")
"""
LOAD = """
import vgg_toolkit as vt
model = vt.load_trained(sys.argv[1], say=None)
assert vt.model_info(model).arch == "vgg-d"
"""


class LazyWeights(Mapping):
    """VGG-16's weights in the release's names, each made (seeded) only when the writer asks for it, so the
    553 MB file is written without holding it."""

    def __init__(self, seed: int = 0):
        self.shapes, c = {}, 3
        for b, (width, n) in enumerate(CONFIG_D, 1):
            for k in range(1, n + 1):
                self.shapes[f"conv{b}_{k}.weight"], self.shapes[f"conv{b}_{k}.bias"] = (width, c, 3, 3), (width,)
                c = width
        for fc, (o, i) in {"fc6": (4096, c * 49), "fc7": (4096, 4096), "fc8": (1000, 4096)}.items():
            self.shapes[f"{fc}.weight"], self.shapes[f"{fc}.bias"] = (o, i), (o,)
        self.seed = seed

    def __getitem__(self, name):
        rng = np.random.default_rng([self.seed, list(self.shapes).index(name)])
        shape = self.shapes[name]
        return (rng.standard_normal(shape, dtype=np.float32) * np.sqrt(2 / max(1, np.prod(shape[1:])))).astype("<f4")

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self):
        return len(self.shapes)


def child(body: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD.format(body=body), *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="write the files here and keep them")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="vggtk-caffe-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    source, target = folder / "VGG_ILSVRC_16_layers.caffemodel", folder / "vgg16-caffe.safetensors"
    try:
        size = write_vgg(source, LazyWeights())
        weights_mb = sum(int(np.prod(s)) for s in LazyWeights().shapes.values()) * 4 / 2 ** 20
        target.unlink(missing_ok=True)
        idle = child(FIXED)
        convert = child(CONVERT, str(source), str(target))
        load = child(LOAD, str(target))
        print(f"VGG-16 .caffemodel: {size:,} bytes; its weights {weights_mb:.0f} MiB; a process that imports vggtk, "
              f"loads its plugins and builds VGG-16 on the meta device peaks at {idle['peak_mb']:.0f} MiB (fixed)")
        print(f"{'':40} {'seconds':>8} {'peak MiB':>9} {'(peak - fixed) / weights':>25}")
        for name, row in (("vggtk convert X.caffemodel Y.safetensors", convert),
                          ("baseline: load_trained(Y.safetensors)", load)):
            extra = (row["peak_mb"] - idle["peak_mb"]) / weights_mb
            print(f"{name:40} {row['seconds']:8.2f} {row['peak_mb']:9.0f} {extra:25.2f}")
        print(f"convert / load: {convert['seconds'] / load['seconds']:.2f}x the time, "
              f"{convert['peak_mb'] / load['peak_mb']:.2f}x the peak memory")
    finally:
        if args.keep is None:
            for path in (source, target):
                path.unlink(missing_ok=True)
            folder.rmdir()


if __name__ == "__main__":
    main()
