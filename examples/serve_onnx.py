"""Serving a net exported by ``vggtk export --form dense --average --with-preprocessing``, with onnxruntime
alone: no vggtk, no torch. The file's metadata says what it expects; the image is rescaled so its shorter
side is the net's test scale Q (bilinear with antialiasing, as vggtk's dense protocol does) and handed
over as uint8 pixels: the graph applies the net's own preprocessing, runs it densely, averages the class
scores over the map and returns posteriors.

    python examples/serve_onnx.py net.onnx photo.jpg [--q 384] [--top 5]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("image")
    parser.add_argument("--q", type=int, help="test scale (default: the net's, from its training scale)")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    record = json.loads(meta["vggtk_record"])
    net = record["model"]
    if not record["with_preprocessing"] or record["output"] != "posteriors":
        raise SystemExit("export the net with --form dense --average --with-preprocessing for this example")
    scale = net["train_scale"] or [net["input_size"]]
    q = args.q or (scale[0] if len(scale) == 1 else (scale[0] + scale[-1]) // 2)  # the paper's single Q
    q = max(q, record["min_side"])

    channels = net["options"].get("in_chans", 3)
    image = Image.open(args.image).convert("L" if channels == 1 else "RGB")
    w, h = image.size
    size = (q, round(h * q / w)) if w <= h else (round(w * q / h), q)
    pixels = np.asarray(image.resize(size, Image.BILINEAR), dtype=np.uint8)
    pixels = pixels[None, None] if channels == 1 else pixels.transpose(2, 0, 1)[None]

    (posteriors,) = session.run(None, {session.get_inputs()[0].name: pixels})
    classes = net["classes"] or [str(i) for i in range(posteriors.shape[1])]
    for i in np.argsort(-posteriors[0])[: args.top]:
        print(f"{classes[i]}\t{posteriors[0, i]:.6f}")


if __name__ == "__main__":
    main()
