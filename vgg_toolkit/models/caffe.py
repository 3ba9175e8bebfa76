"""Reading Caffe's ``.caffemodel`` (a protobuf ``NetParameter``): the authors' VGG release and nets like it.

Both record forms are read: the old ``layers`` (V1LayerParameter, which the 2014 VGG files use, with an
enum type and 4-D legacy blob dims) and the newer ``layer`` (LayerParameter, string type, BlobShape).
The walk over the file is a small protobuf wire reader over a memory map: each layer is taken in turn
and each blob's floats are copied straight from the map into one tensor, so converting the 553 MB
VGG-16 file holds about the weights once, never a parsed copy of the whole message beside them. The
layer parameter messages (convolution, pooling, inner product), small and many-fielded, are parsed with
the ``protobuf`` package from a schema built here in code (field numbers from Caffe's caffe.proto), so
no protoc runs and no generated module ships.

What comes out is a state_dict in the "caffe" layout: ``<layer name>.weight`` and ``.bias`` per layer
with weights, conv weights (out, in, kh, kw) and inner-product weights (out, in). A file that is cut
short, claims a field longer than what is left, holds blobs whose sizes disagree with their shapes or
layers vggtk cannot run as Caffe ran them is a WeightsError naming the file and the layer.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import WeightsError

# NetParameter fields
_NET_LAYERS_V1, _NET_LAYER = 2, 100
# V1LayerParameter / LayerParameter fields: (name, type, blobs, convolution, pooling, inner product)
_V1 = {"name": 4, "type": 5, "blobs": 6, "convolution_param": 10, "pooling_param": 19, "inner_product_param": 17}
_V2 = {"name": 1, "type": 2, "blobs": 7, "convolution_param": 106, "pooling_param": 121, "inner_product_param": 117}
# V1LayerParameter's LayerType enum, as the names the newer records use
_V1_TYPES = {0: "None", 1: "Accuracy", 2: "BNLL", 3: "Concat", 4: "Convolution", 5: "Data", 6: "Dropout",
             7: "EuclideanLoss", 8: "Flatten", 9: "HDF5Data", 10: "HDF5Output", 11: "Im2col", 12: "ImageData",
             13: "InfogainLoss", 14: "InnerProduct", 15: "LRN", 16: "MultinomialLogisticLoss", 17: "Pooling",
             18: "ReLU", 19: "Sigmoid", 20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split", 23: "TanH",
             24: "WindowData", 25: "Eltwise", 26: "Power", 27: "SigmoidCrossEntropyLoss", 28: "HingeLoss",
             29: "MemoryData", 30: "ArgMax", 31: "Threshold", 32: "DummyData", 33: "Slice", 34: "MVN",
             35: "AbsVal", 36: "Silence", 37: "ContrastiveLoss", 38: "Exp", 39: "Deconvolution"}
# What vggtk's conversion runs as Caffe ran it; layers without weights of these kinds are passed over.
_WITH_WEIGHTS = {"Convolution", "InnerProduct"}
_PASSED_OVER = {"ReLU", "Pooling", "Dropout", "Softmax", "SoftmaxWithLoss", "Accuracy", "Data", "ImageData",
                "WindowData", "MemoryData", "DummyData", "Input", "Split", "Silence", "Flatten"}
# BlobProto fields
_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH = 1, 2, 3, 4
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE_DATA = 5, 7, 8

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


@dataclass
class CaffeLayer:
    name: str
    type: str
    blobs: list[torch.Tensor] = field(default_factory=list)
    params: dict = field(default_factory=dict)  # the parsed convolution / pooling / inner-product message


class _Reader:
    """Protobuf wire format over a byte buffer (a memory map), every length checked against what is left.
    Bulk values are read from ``file`` into their destination instead (``read_into``): pages of the map
    that were never touched do not count as the process's memory."""

    def __init__(self, buf, path: Path, file=None):
        self.buf, self.path, self.file = buf, path, file

    def read_into(self, start: int, out: np.ndarray) -> None:
        view = memoryview(out).cast("B")
        self.file.seek(start)
        if self.file.readinto(view) != len(view):
            raise self.fail("cut short while reading values")

    def fail(self, what: str) -> WeightsError:
        return WeightsError(f"{self.path}: not a readable Caffe model ({what})")

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            if pos >= end:
                raise self.fail("cut short inside a number")
            byte = self.buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, pos
            shift += 7
            if shift > 63:
                raise self.fail("a number longer than 64 bits")

    def fields(self, start: int, end: int):
        """(field number, wire type, value or (start, end) of a length-delimited field) over [start, end)."""
        pos = start
        while pos < end:
            key, pos = self.varint(pos, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise self.fail("a field numbered 0")
            if wire == _VARINT:
                value, pos = self.varint(pos, end)
                yield number, wire, value
            elif wire == _BYTES:
                length, pos = self.varint(pos, end)
                if length > end - pos:
                    raise self.fail(f"a field claims {length:,} bytes where {end - pos:,} are left: truncated "
                                    "or damaged")
                yield number, wire, (pos, pos + length)
                pos += length
            elif wire in (_FIXED32, _FIXED64):
                size = 4 if wire == _FIXED32 else 8
                if size > end - pos:
                    raise self.fail("cut short inside a number")
                yield number, wire, (pos, pos + size)
                pos += size
            else:
                raise self.fail(f"wire type {wire} (groups or garbage)")

    def text(self, span: tuple[int, int]) -> str:
        try:
            return bytes(self.buf[span[0]:span[1]]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("a name that is not UTF-8 text") from None


def _packed_varints(reader: _Reader, span: tuple[int, int]) -> list[int]:
    out, pos = [], span[0]
    while pos < span[1]:
        value, pos = reader.varint(pos, span[1])
        out.append(value)
    return out


def _blob_parts(reader: _Reader, span: tuple[int, int], where: str):
    """A BlobProto's shape (the 4-D legacy dims with leading ones dropped, or its BlobShape) and where its
    values lie: packed float32 spans, loose float32 values, packed float64 spans."""
    legacy: dict[int, int] = {}
    dims: list[int] | None = None
    floats: list[tuple[int, int]] = []
    singles: list[float] = []
    doubles: list[tuple[int, int]] = []
    for number, wire, value in reader.fields(*span):
        if number in (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH) and wire == _VARINT:
            legacy[number] = value
        elif number == _BLOB_SHAPE and wire == _BYTES:
            dims = []
            for n, w, v in reader.fields(*value):
                if n == 1:
                    dims += _packed_varints(reader, v) if w == _BYTES else [v]
        elif number == _BLOB_DATA and wire == _BYTES:
            floats.append(value)
        elif number == _BLOB_DATA and wire == _FIXED32:
            singles.append(struct.unpack("<f", reader.buf[value[0]:value[1]])[0])
        elif number == _BLOB_DOUBLE_DATA and wire == _BYTES:
            doubles.append(value)
    if dims is None:
        dims = [legacy.get(k, 1) for k in (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH)]
        while len(dims) > 1 and dims[0] == 1:
            dims.pop(0)
    if any(d < 0 or d > (1 << 40) for d in dims) or int(np.prod(dims, dtype=np.float64)) > (1 << 40):
        raise reader.fail(f"layer {where}: a blob of shape {dims}")
    if any((e - s) % 4 for s, e in floats) or any((e - s) % 8 for s, e in doubles):
        raise reader.fail(f"layer {where}: a blob's packed values do not fill whole numbers")
    found = sum((e - s) // 4 for s, e in floats) + len(singles) + sum((e - s) // 8 for s, e in doubles)
    count = int(np.prod(dims, dtype=np.int64))
    if found != count:
        raise WeightsError(f"{reader.path}: layer {where}: a blob of shape {tuple(dims)} holds {found:,} values, "
                           f"not {count:,}: damaged or crafted")
    return tuple(dims), floats, singles, doubles


def _blob(reader: _Reader, span: tuple[int, int], where: str, data: bool) -> torch.Tensor:
    """One blob as a float32 tensor of its shape; with ``data=False`` an empty one on meta (shape only)."""
    dims, floats, singles, doubles = _blob_parts(reader, span, where)
    if not data:
        return torch.empty(dims, device="meta")
    out = torch.empty(int(np.prod(dims, dtype=np.int64)), dtype=torch.float32)
    values = out.numpy()  # the tensor's own memory, filled straight from the map: no intermediate copy
    at = 0
    for s, e in floats:  # little-endian float32 on the file
        n = (e - s) // 4
        reader.read_into(s, values[at:at + n])
        if sys.byteorder == "big":
            values[at:at + n].byteswap(inplace=True)
        at += n
    values[at:at + len(singles)] = singles
    at += len(singles)
    for s, e in doubles:
        n = (e - s) // 8
        values[at:at + n] = np.frombuffer(reader.buf, dtype="<f8", count=n, offset=s)
        at += n
    return out.view(dims)


@lru_cache(maxsize=1)
def _param_classes() -> dict:
    """ConvolutionParameter, PoolingParameter and InnerProductParameter as protobuf message classes, from
    a schema written here (the fields vggtk reads, with caffe.proto's numbers; others are kept unknown)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    schema = {
        "ConvolutionParameter": [("num_output", 1, F.TYPE_UINT32, False), ("bias_term", 2, F.TYPE_BOOL, False),
                                 ("pad", 3, F.TYPE_UINT32, True), ("kernel_size", 4, F.TYPE_UINT32, True),
                                 ("group", 5, F.TYPE_UINT32, False), ("stride", 6, F.TYPE_UINT32, True),
                                 ("pad_h", 9, F.TYPE_UINT32, False), ("pad_w", 10, F.TYPE_UINT32, False),
                                 ("kernel_h", 11, F.TYPE_UINT32, False), ("kernel_w", 12, F.TYPE_UINT32, False),
                                 ("stride_h", 13, F.TYPE_UINT32, False), ("stride_w", 14, F.TYPE_UINT32, False),
                                 ("dilation", 18, F.TYPE_UINT32, True)],
        "PoolingParameter": [("pool", 1, F.TYPE_UINT32, False), ("kernel_size", 2, F.TYPE_UINT32, False),
                             ("stride", 3, F.TYPE_UINT32, False), ("pad", 4, F.TYPE_UINT32, False),
                             ("kernel_h", 5, F.TYPE_UINT32, False), ("kernel_w", 6, F.TYPE_UINT32, False),
                             ("stride_h", 7, F.TYPE_UINT32, False), ("stride_w", 8, F.TYPE_UINT32, False),
                             ("global_pooling", 12, F.TYPE_BOOL, False), ("round_mode", 13, F.TYPE_UINT32, False)],
        "InnerProductParameter": [("num_output", 1, F.TYPE_UINT32, False), ("bias_term", 2, F.TYPE_BOOL, False),
                                  ("axis", 5, F.TYPE_INT32, False), ("transpose", 6, F.TYPE_BOOL, False)],
    }
    file = descriptor_pb2.FileDescriptorProto(name="vggtk_caffe_params.proto", package="vggtk_caffe",
                                              syntax="proto2")
    for message, fields in schema.items():
        proto = file.message_type.add(name=message)
        for name, number, kind, repeated in fields:
            proto.field.add(name=name, number=number, type=kind,
                            label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {m: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"vggtk_caffe.{m}")) for m in schema}


def _repeated(f) -> bool:
    """Whether a field is repeated, in protobuf's newer API (``is_repeated``) or its older (``label``)."""
    flag = getattr(f, "is_repeated", None)
    return bool(flag) if flag is not None else f.label == f.LABEL_REPEATED


def _params(reader: _Reader, kind: str, span: tuple[int, int], where: str) -> dict:
    from google.protobuf.message import DecodeError

    message = _param_classes()[kind]()
    try:
        message.ParseFromString(bytes(reader.buf[span[0]:span[1]]))
    except DecodeError as exc:
        raise reader.fail(f"{where}: its {kind} does not parse ({exc})") from None
    out = {f.name: (list(v) if _repeated(f) else v) for f, v in message.ListFields()}
    for f in message.DESCRIPTOR.fields:  # defaults of what the file leaves out, as caffe.proto sets them
        if f.name not in out and not _repeated(f):
            out[f.name] = {"bias_term": True, "group": 1, "stride": 1, "pool": 0, "round_mode": 0,
                           "axis": 1}.get(f.name, f.default_value)
    return out


_OWN_PARAMS = {"Convolution": ("convolution_param", "ConvolutionParameter"),
               "Pooling": ("pooling_param", "PoolingParameter"),
               "InnerProduct": ("inner_product_param", "InnerProductParameter")}


def _layer(reader: _Reader, span: tuple[int, int], v1: bool, index: int, data: bool) -> CaffeLayer:
    numbers = _V1 if v1 else _V2
    name, kind, blobs, params = f"#{index}", None, [], {}
    for number, wire, value in reader.fields(*span):
        if number == numbers["name"] and wire == _BYTES:
            name = reader.text(value)
        elif number == numbers["type"]:
            kind = _V1_TYPES.get(value, f"type {value}") if v1 and wire == _VARINT else (
                reader.text(value) if wire == _BYTES else None)
        elif number == numbers["blobs"] and wire == _BYTES:
            blobs.append(value)
        else:
            for key in ("convolution_param", "pooling_param", "inner_product_param"):
                if number == numbers[key] and wire == _BYTES:
                    params[key] = value
    kind = kind or "None"
    layer = CaffeLayer(name, kind)
    own = _OWN_PARAMS.get(kind)  # a layer's parameters are those of its type; others are ignored, as Caffe does
    if own is not None and own[0] in params:
        layer.params = _params(reader, own[1], params[own[0]], name)
    layer.blobs = [_blob(reader, b, name, data) for b in blobs]
    return layer


def _check(layer: CaffeLayer, path: Path) -> None:
    """What vggtk can run as Caffe ran it: plain convolutions (stride 1, padding that keeps the size, one
    group, no dilation), inner products, ReLUs, 2x2 stride-2 max-pools that round up, dropout."""
    p = layer.params

    def refuse(why: str):
        return WeightsError(f"{path}: layer {layer.name!r} ({layer.type}): {why}; vggtk converts VGG-style nets")

    if layer.type not in _WITH_WEIGHTS | _PASSED_OVER:
        raise refuse("a layer type vggtk does not convert")
    if layer.type not in _WITH_WEIGHTS and layer.blobs:
        raise refuse("holds weights where none belong")
    if layer.type in _OWN_PARAMS and not p:
        raise refuse(f"no {_OWN_PARAMS[layer.type][0]}")
    if layer.type in _WITH_WEIGHTS and not p.get("num_output"):
        raise refuse("no num_output")
    if layer.type == "Convolution":
        kernel = (p.get("kernel_size") or [p.get("kernel_h")])[0]
        if layer.blobs and tuple(layer.blobs[0].shape[-2:]) != (kernel, kernel):
            raise refuse(f"declares {kernel}x{kernel} kernels but holds weights of shape {tuple(layer.blobs[0].shape)}")
        pad = (p.get("pad") or [p.get("pad_h") or 0])[0]
        stride = (p.get("stride") or [p.get("stride_h") or 1])[0]
        if pad != kernel // 2 or stride != 1 or p.get("group", 1) != 1 or any(d != 1 for d in p.get("dilation", [])):
            raise refuse(f"a convolution of kernel {kernel}, pad {pad}, stride {stride}, group {p.get('group')}")
    if layer.type == "Pooling":
        kernel, stride = p.get("kernel_size") or p.get("kernel_h"), p.get("stride") or p.get("stride_h")
        if p.get("pool", 0) != 0 or kernel != 2 or stride != 2 or p.get("pad", 0) or p.get("round_mode", 0) != 0 \
                or p.get("global_pooling"):
            raise refuse(f"pooling {p}; vggtk's nets pool 2x2 max, stride 2, rounding up")
    if layer.type == "InnerProduct" and (p.get("transpose") or p.get("axis", 1) != 1):
        raise refuse("a transposed inner product")
    if layer.type in _WITH_WEIGHTS and len(layer.blobs) not in (1, 2):
        raise refuse(f"{len(layer.blobs)} blobs, not a weight and a bias")


def read_caffemodel(path: str | os.PathLike, data: bool = True) -> dict[str, torch.Tensor]:
    """The weights of a ``.caffemodel`` as a "caffe"-layout state_dict (``conv1_1.weight``...). With
    ``data=False`` the tensors are empty placeholders of the right shapes (``torch.empty`` on meta), for
    telling which net a file holds without reading its values."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read ({exc.strerror})") from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise WeightsError(f"{path}: an empty file, not a Caffe model")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _state_dict(_Reader(buf, path, handle), size, data)


def _state_dict(reader: _Reader, size: int, data: bool) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    index = 0
    for number, wire, value in reader.fields(0, size):
        if wire != _BYTES or number not in (_NET_LAYERS_V1, _NET_LAYER):
            continue
        index += 1
        layer = _layer(reader, value, number == _NET_LAYERS_V1, index, data)
        _check(layer, reader.path)
        if layer.type not in _WITH_WEIGHTS:
            continue
        weight, *bias = layer.blobs
        out = int(layer.params.get("num_output", weight.shape[0]))
        if (layer.type == "InnerProduct" and weight.numel() % max(out, 1)) or (
                layer.type == "Convolution" and (weight.dim() != 4 or weight.shape[0] != out)) or (
                bias and bias[0].numel() != out):
            raise WeightsError(f"{reader.path}: layer {layer.name!r}: blobs of shapes "
                               f"{', '.join(str(tuple(b.shape)) for b in layer.blobs)} for {out} outputs")
        if layer.type == "InnerProduct":
            weight = weight.reshape(out, -1)
        if layer.name + ".weight" in tensors:
            raise WeightsError(f"{reader.path}: two layers are named {layer.name!r}")
        tensors[layer.name + ".weight"] = weight
        if bias:
            tensors[layer.name + ".bias"] = bias[0].reshape(out)
    if not tensors:
        raise WeightsError(f"{reader.path}: no layer with weights: not a trained Caffe model")
    return tensors
