"""A small writer of Caffe's ``.caffemodel`` format (protobuf wire format, field numbers from caffe.proto),
for tests and the conversion benchmark: VGG-shaped nets in the old ``layers`` (V1) records the authors'
release uses, or the newer ``layer`` records. Written layer by layer to a file, so a full-size VGG-16 never
sits in memory twice."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

V1_TYPES = {"Convolution": 4, "Dropout": 6, "InnerProduct": 14, "Pooling": 17, "ReLU": 18, "Softmax": 20,
            "Data": 5, "LRN": 15, "Eltwise": 25}


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def field_varint(number: int, value: int) -> bytes:
    return key(number, 0) + varint(value)


def field_bytes(number: int, payload: bytes) -> bytes:
    return key(number, 2) + varint(len(payload)) + payload


def blob(values: np.ndarray, legacy: bool = True) -> bytes:
    """A BlobProto: legacy 4-D (num, channels, height, width) dims padded with leading ones, or a BlobShape."""
    shape = list(values.shape)
    if legacy:
        dims = [1] * (4 - len(shape)) + shape
        head = b"".join(field_varint(n, d) for n, d in zip((1, 2, 3, 4), dims))
    else:
        head = field_bytes(7, field_bytes(1, b"".join(varint(d) for d in shape)))
    return head + field_bytes(5, np.ascontiguousarray(values, dtype="<f4").tobytes())


def layer(name: str, kind: str, blobs: Iterable[np.ndarray] = (), params: bytes | None = None,
          v1: bool = True, tops: tuple[str, ...] = (), bottoms: tuple[str, ...] = ()) -> bytes:
    """A V1LayerParameter (enum type) or a LayerParameter (string type), with its blobs and its
    convolution_param / pooling_param / inner_product_param (``params``, already encoded)."""
    if v1:
        body = field_bytes(4, name.encode()) + field_varint(5, V1_TYPES[kind])
        numbers = {"Convolution": 10, "Pooling": 19, "InnerProduct": 17}
        blob_field, bottom_field, top_field = 6, 2, 3
    else:
        body = field_bytes(1, name.encode()) + field_bytes(2, kind.encode())
        numbers = {"Convolution": 106, "Pooling": 121, "InnerProduct": 117}
        blob_field, bottom_field, top_field = 7, 3, 4
    body += b"".join(field_bytes(bottom_field, b.encode()) for b in bottoms)
    body += b"".join(field_bytes(top_field, t.encode()) for t in tops)
    if params is not None:
        body += field_bytes(numbers[kind], params)
    for values in blobs:
        body += field_bytes(blob_field, blob(values, legacy=v1))
    return body


def conv_params(num_output: int, kernel: int = 3, pad: int = 1, stride: int = 1) -> bytes:
    return field_varint(1, num_output) + field_varint(3, pad) + field_varint(4, kernel) + field_varint(6, stride)


def pool_params(kernel: int = 2, stride: int = 2, pool: int = 0) -> bytes:
    return field_varint(1, pool) + field_varint(2, kernel) + field_varint(3, stride)


def ip_params(num_output: int) -> bytes:
    return field_varint(1, num_output)


def write_net(out: BinaryIO, layers: Iterable[bytes], v1: bool = True, name: str = "VGG_ILSVRC_16_layers") -> int:
    """A NetParameter: its name, then each layer as a ``layers`` (2) or ``layer`` (100) record. Returns bytes."""
    written = out.write(field_bytes(1, name.encode()))
    for body in layers:
        written += out.write(key(2 if v1 else 100, 2) + varint(len(body)))
        written += out.write(body)
    return written


CONFIG_D = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]


def vgg_layers(weights: dict[str, np.ndarray], blocks=CONFIG_D, v1: bool = True) -> Iterable[bytes]:
    """The authors' layer sequence for a VGG with the given per-block (channels, convs), taking
    ``convB_K.weight`` / ``.bias`` and ``fc6``..``fc8`` from ``weights`` (one layer built at a time)."""
    yield layer("data", "Data", v1=v1, tops=("data",))
    for b, (_, n) in enumerate(blocks, 1):
        for k in range(1, n + 1):
            name = f"conv{b}_{k}"
            w = weights[f"{name}.weight"]
            yield layer(name, "Convolution", (w, weights[f"{name}.bias"]), conv_params(w.shape[0]), v1=v1)
            yield layer(f"relu{b}_{k}", "ReLU", v1=v1)
        yield layer(f"pool{b}", "Pooling", (), pool_params(), v1=v1)
    for fc in ("fc6", "fc7", "fc8"):
        w = weights[f"{fc}.weight"]
        # the release stores inner products with 4-D legacy dims (1, 1, out, in)
        yield layer(fc, "InnerProduct", (w, weights[f"{fc}.bias"]), ip_params(w.shape[0]), v1=v1)
        if fc != "fc8":
            yield layer(f"relu{fc[2:]}", "ReLU", v1=v1)
            yield layer(f"drop{fc[2:]}", "Dropout", v1=v1)
    yield layer("prob", "Softmax", v1=v1)


def random_vgg(seed: int, blocks=CONFIG_D, in_chans: int = 3, fc_dim: int = 4096, classes: int = 1000,
               kernel: int = 7) -> dict[str, np.ndarray]:
    """He-scaled random weights and non-zero biases in the release's names and shapes."""
    rng = np.random.default_rng(seed)
    out, c = {}, in_chans
    for b, (width, n) in enumerate(blocks, 1):
        for k in range(1, n + 1):
            out[f"conv{b}_{k}.weight"] = (rng.standard_normal((width, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype("f4")
            out[f"conv{b}_{k}.bias"] = (rng.standard_normal(width) * 0.05).astype("f4")
            c = width
    for fc, (o, i) in {"fc6": (fc_dim, c * kernel * kernel), "fc7": (fc_dim, fc_dim), "fc8": (classes, fc_dim)}.items():
        out[f"{fc}.weight"] = (rng.standard_normal((o, i)) * np.sqrt(2 / i)).astype("f4")
        out[f"{fc}.bias"] = (rng.standard_normal(o) * 0.05).astype("f4")
    return out


def write_vgg(path: Path, weights: dict[str, np.ndarray], blocks=CONFIG_D, v1: bool = True) -> int:
    with open(path, "wb") as out:
        return write_net(out, vgg_layers(weights, blocks, v1), v1)


