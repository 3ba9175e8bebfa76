"""Writing an exported graph (ONNX through ``torch.onnx.export(dynamo=True)``, the torch.export-based
exporter; or a ``torch.export`` ExportedProgram, ``.pt2``), loading it back the way a server would
(onnxruntime; ``torch.export.load``) and comparing it with the eager net at several sizes before it is
kept. Both carry vggtk's record: ONNX in ``metadata_props``, the ExportedProgram as an extra file
(``vggtk.json``)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import warnings
from pathlib import Path

import torch
from torch.export import Dim

import vgg_toolkit as vt

FORMATS = ("onnx", "pt2")
ONNX_EXTRA = "onnx, onnxscript and onnxruntime (pip install 'vgg-toolkit[export]')"


def check_format_available(fmt: str) -> None:
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if fmt == "onnx" and missing:
        raise vt.VggtkError(f"--format onnx needs {ONNX_EXTRA}; missing: {', '.join(missing)}")


def dynamic_shapes(exported) -> dict:
    """Batch always dynamic; height and width too, except for the classifier form. ``Dim.DYNAMIC``, not a
    range: the exporters refuse ranges whose every value they cannot prove gives a valid map; the smallest
    side is in the file's record, and the written file is checked at several sizes before it is kept."""
    dims = {0: Dim.DYNAMIC}
    if exported.form != "classifier":
        dims.update({2: Dim.DYNAMIC, 3: Dim.DYNAMIC})
    return {"images": dims}


@contextlib.contextmanager
def _quiet():
    """The exporters print progress lines and warnings meant for their own developers."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._export", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _size_oblivious():
    """Trace so that a side of 1 (the score map of an image at the smallest size) is one more size, not a
    case the graph was specialised against because the sample's map was larger."""
    try:
        import torch.fx.experimental._config as fx_config

        return fx_config.patch(backed_size_oblivious=True)
    except (ImportError, AttributeError):  # an older torch: the check at the smallest size says so
        return contextlib.nullcontext()


def write(exported, sample: torch.Tensor, fmt: str, path: Path, record: dict) -> None:
    """Trace ``exported`` on ``sample`` and write it to ``path`` (a temporary name: the caller renames)."""
    shapes = dynamic_shapes(exported)
    meta = {**vt.mark(f"{fmt} export"), "vggtk_record": json.dumps(record)}
    with _quiet(), _size_oblivious(), torch.no_grad():
        if fmt == "onnx":
            program = torch.onnx.export(exported, (sample,), dynamo=True, dynamic_shapes=shapes,
                                        input_names=["images"], output_names=[exported.output_name()],
                                        verbose=False)
            program.model.metadata_props.update(meta)
            program.save(str(path))
        else:
            program = torch.export.export(exported, (sample,), dynamic_shapes=shapes)
            torch.export.save(program, str(path), extra_files={"vggtk.json": json.dumps(meta)})


def load_runner(fmt: str, path: Path):
    """A callable ``images -> output`` over the file as a server would load it."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    with _quiet():
        program = torch.export.load(str(path))
    module = program.module()
    return lambda x: module(x).detach()
