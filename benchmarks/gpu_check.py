"""The prepared GPU check: one command that settles, in minutes of a lent GPU, what a CPU cannot, and
keeps whatever it learned when a later part fails.

Each phase runs in its own process under its own time budget, writes its rows to ``OUT/<phase>.jsonl``
as they come and prints its table when it ends; a failing check is a failed row naming kernel, config,
layer and dtype, and a phase that crashes or runs out of time is recorded as such while the next ones
run. The header names the GPU, driver, torch, triton, cuDNN, the code's hash (the installed package
must be the tree's) and the exact command; the summary gathers every phase's table at the end.

1. ``correctness``: each Triton kernel (forward, input gradient, weight gradient) forced to each config
   its pruner keeps, on VGG-D's 13 conv shapes at batch 1 and 64, fp32 (TF32) and bf16, against cuDNN:
   both against an fp64 reference; the kernel must stay within max(2 x cuDNN's error, a floor).
2. ``speed``: fused conv + bias + ReLU against cuDNN (``cudnn.benchmark`` on, channels_last weights and
   gradients, as a user runs it) per layer, forward and forward + backward, batch 64 bf16; medians.
3. ``train``: a VGG-D training step (bf16 autocast, SGD) with the conv backends torch, triton and auto.
4. ``cli``: the command line on the bundled data on CUDA: ``vggtk train`` with ``--conv-backend torch``
   then ``triton`` (images/s, loss curves compared), ``--decode device`` on the bundled photos,
   ``vggtk eval`` dense and multi-crop, ``predict``.
5. ``decode``: JPEG decoding on the device against the workers' decode (``gpu_decode_check.py``).

    python benchmarks/gpu_check.py                   # on the GPU (benchmarks/gpu_check.sh sets it up)
    TRITON_INTERPRET=1 python benchmarks/gpu_check.py --tiny   # CI: the same code, tiny shapes, on CPU

``--tiny`` keeps the layer structure of VGG-D with a few channels and pixels, batches 1 and 2, forces
the same GPU configs in Triton's interpreter, and runs the command line on a tiny shard set; its
timings mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv_kernels import CHECK_FLOOR, _geomean, vgg_conv_shapes  # noqa: E402  (the benchmarks' shared parts)

REPO = Path(__file__).resolve().parents[1]
KERNELS = ("fwd", "dgrad", "wgrad")
DTYPES = ("fp32", "bf16")
# Seconds each phase may take on the GPU: under 9 minutes in all, the first phases first.
BUDGETS = {"correctness": 200, "speed": 80, "train": 50, "cli": 120, "decode": 70}
PHASES = tuple(BUDGETS)


TINY_LAYERS = (1, 2, 3, 13)  # the image layer (Cin = 3), a same-width layer, a widening one, the last


def layers(tiny: bool) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(layer number, (kernel, Cin, Cout, H=W)) of VGG-D's convs; tiny: four of them with the same
    structure, 1/32 of the channels (Cin 3 kept) and 1/28 of the side."""
    full = list(enumerate(vgg_conv_shapes("D", 224), 1))
    if not tiny:
        return full
    return [(n, (k, cin if cin == 3 else max(4, cin // 32), max(4, cout // 32), max(3, hw // 28)))
            for n, (k, cin, cout, hw) in full if n in TINY_LAYERS]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def _device(tiny: bool) -> str:
    import torch

    if torch.cuda.is_available() and not _interpreting():
        return "cuda"
    if tiny and _interpreting():
        return "cpu"
    sys.exit("gpu_check.py needs a CUDA GPU (or --tiny with TRITON_INTERPRET=1 for the CPU rehearsal)")


@contextlib.contextmanager
def forced(kernel, config):
    """Run ``kernel`` (an autotuned Triton kernel) with ``config`` only: with one config the autotuner
    neither prunes nor times."""
    saved_configs, saved_cache = kernel.configs, dict(kernel.cache)
    kernel.configs, kernel.cache = [config], {}
    try:
        yield
    finally:
        kernel.configs, kernel.cache = saved_configs, saved_cache


def _kernel_and_configs(which: str):
    from vgg_toolkit.kernels import conv3x3, conv3x3_backward

    if which == "wgrad":
        return conv3x3_backward.conv_wgrad_kernel, conv3x3_backward.WGRAD_CONFIGS
    return conv3x3.conv_bias_relu_kernel, conv3x3.FORWARD_CONFIGS


def _kept(which: str, config, k: int, cin: int, cout: int, x, limit: int, tiny: bool) -> bool:
    """Whether the pruner would let ``config`` run this shape (what can run in production). The tiny
    shapes are narrower than every tile, so there every config runs: what is checked then is that each
    tile shape masks its borders right."""
    from vgg_toolkit.kernels import conv3x3, conv3x3_backward

    if tiny:
        return True

    if which == "wgrad":
        args = {"KS": k, "CIN": cin, "COUT": cout, "x_ptr": x}
        return config in conv3x3_backward.keep_wgrad(list(conv3x3_backward.WGRAD_CONFIGS), args, limit)
    gated = which == "dgrad"
    cin_, cout_ = (cout, cin) if gated else (cin, cout)  # the input gradient convolves Cout -> Cin channels
    args = {"KS": k, "CIN": cin_, "COUT": cout_, "FLAT_K": cin_ < conv3x3.FLAT_K_BELOW, "RELU": not gated, "x_ptr": x}
    return config in conv3x3.keep_forward(list(conv3x3.FORWARD_CONFIGS), args, limit)


def _limit(device: str) -> int:
    from vgg_toolkit.kernels.conv3x3 import _shared_memory_limit

    return _shared_memory_limit(0) if device == "cuda" else 232_448  # the interpreter: as on an H100


def _relative_error(out, ref) -> float:
    return ((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def check_config(job: tuple) -> list[dict]:
    """Every (dtype, batch, layer) of one (kernel, config index): rows of errors, triton against cuDNN."""
    which, index, tiny, batches = job
    import torch

    device = _device(tiny)
    kernel, configs = _kernel_and_configs(which)
    config = configs[index]
    limit = _limit(device)
    rows = []
    for name in DTYPES:
        dtype = torch.float32 if name == "fp32" else torch.bfloat16
        for batch in batches:
            for layer, (k, cin, cout, hw) in layers(tiny):
                gen = torch.Generator(device=device).manual_seed(layer)
                x = torch.randn(batch, cin, hw, hw, device=device, generator=gen).to(dtype)
                x = x.contiguous(memory_format=torch.channels_last)
                w = (torch.randn(cout, cin, k, k, device=device, generator=gen) * math.sqrt(2 / (cin * k * k))).to(dtype)
                b = (0.1 * torch.randn(cout, device=device, generator=gen)).to(dtype)
                if not _kept(which, config, k, cin, cout, x, limit, tiny):
                    continue
                if which == "dgrad" and cin == 3:
                    continue  # the first layer's input (the image) needs no gradient
                try:
                    rows.append(_one_check(which, kernel, config, name, batch, layer, k, x, w, b, gen, device))
                except Exception as exc:  # a crash in one check is that check's failed row, never the end
                    rows.append(_failed_row(which, index, name, batch, layer,
                                            f"{type(exc).__name__}: {exc}".splitlines()[0]))
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def _one_check(which, kernel, config, name, batch, layer, k, x, w, b, gen, device) -> dict:
    import torch

    from vgg_toolkit.kernels.conv3x3 import conv_bias_relu, conv_relu_reference
    from vgg_toolkit.kernels.conv3x3_backward import conv_input_grad, conv_relu_backward_reference, conv_weight_grad

    dtype = x.dtype
    y = conv_relu_reference(x, w, b)
    g = torch.randn(y.shape, device=device, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    x64, w64, b64, g64 = (t.double() for t in (x, w, b, g))
    y64 = conv_relu_reference(x64, w64, b64)
    with forced(kernel, config):
        if which == "fwd":
            outs, refs, aten = [conv_bias_relu(x, w, b)], [y64], [y]
        elif which == "dgrad":
            outs = [conv_input_grad(g, y, w)]
            refs = [conv_relu_backward_reference(x64, w64, y64, g64)[0]]
            aten = [conv_relu_backward_reference(x, w, y, g)[0]]
        else:
            outs = list(conv_weight_grad(x, g, y, k, True))
            refs = list(conv_relu_backward_reference(x64, w64, y64, g64)[1:])
            aten = list(conv_relu_backward_reference(x, w, y, g)[1:])
    errors = [(_relative_error(o, r), _relative_error(a, r)) for o, r, a in zip(outs, refs, aten)]
    ok = all(t <= max(2 * a, CHECK_FLOOR[name]) for t, a in errors)
    return dict(kernel=which, config=_config_name(config), dtype=name, batch=batch, layer=layer,
                triton=max(t for t, _ in errors), aten=max(a for _, a in errors), ok=ok)


def _config_name(config) -> str:
    kw = config.kwargs
    return f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']} w{config.num_warps} s{config.num_stages}"



def _rows_file(out: Path, phase: str) -> Path:
    return out / f"{phase}.jsonl"


class Rows:
    """A phase's rows, each appended to its JSON Lines file the moment it exists: a phase killed by its
    budget or a crash leaves every row it finished."""

    def __init__(self, out: Path, phase: str):
        self.path = _rows_file(out, phase)
        self.path.write_text("")
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def read_rows(out: Path, phase: str) -> list[dict]:
    path = _rows_file(out, phase)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def phase_correctness(args, device: str, rows: Rows) -> None:
    jobs = [(which, i, args.tiny, args.batches) for which in KERNELS
            for i in range(len(_kernel_and_configs(which)[1]))]
    if args.workers <= 1:
        for job in jobs:
            for row in _checked(job):
                rows.add(row)
        return
    # Fresh processes (spawn): each compiles its configs; Triton's disk cache then serves the speed phase.
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_checked, job): job for job in jobs}
        for future in as_completed(futures):
            try:
                found = future.result()
            except Exception as exc:  # a worker that died takes its job with it: a failed row says which
                which, index, _, _ = futures[future]
                found = [_failed_row(which, index, None, None, None, f"worker died: {exc!r}")]
            for row in found:
                rows.add(row)


def _checked(job: tuple) -> list[dict]:
    """``check_config``, with an exception as a failed row naming the kernel and config, never the end."""
    try:
        return check_config(job)
    except Exception as exc:
        return [_failed_row(job[0], job[1], None, None, None, f"{type(exc).__name__}: {exc}".splitlines()[0])]


def _failed_row(which, index, dtype, batch, layer, error: str) -> dict:
    config = _config_name(_kernel_and_configs(which)[1][index])
    return dict(kernel=which, config=config, dtype=dtype, batch=batch, layer=layer, triton=None, aten=None,
                ok=False, error=error)


def table_correctness(rows: list[dict]) -> list[str]:
    failures = [r for r in rows if not r["ok"]]
    lines = [f"Correctness: {len(rows)} checks (kernel x config x dtype x batch x layer, configs its pruner keeps), "
             f"{len(failures)} failed.", "",
             "| kernel | config | fp32 (TF32) triton | fp32 cuDNN | bf16 triton | bf16 cuDNN | all ok |",
             "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["kernel"], r["config"]) for r in rows})
    for key in keys:
        mine = [r for r in rows if (r["kernel"], r["config"]) == key]
        cells = []
        for dtype in DTYPES:
            measured = [r for r in mine if r["dtype"] == dtype and r["triton"] is not None]
            worst = max(measured, key=lambda r: r["triton"], default=None)
            cells += [f"{worst['triton']:.2e}", f"{worst['aten']:.2e}"] if worst else ["-", "-"]
        lines.append(f"| {key[0]} | {key[1]} | {' | '.join(cells)} | {'yes' if all(r['ok'] for r in mine) else 'NO'} |")
    for r in failures[:20]:
        where = ", ".join(f"{k} {r[k]}" for k in ("kernel", "config", "layer", "dtype", "batch") if r.get(k) is not None)
        lines.append(f"FAILED: {where}" + (f": {r['error']}" if r.get("error") else
                                           f": triton {r['triton']:.2e} against cuDNN {r['aten']:.2e}"))
    return lines


def _timer(device: str, tiny: bool):
    if device == "cuda":
        import triton.testing

        # 25 warm-up and 200 ms of timed repeats: hundreds of steps for a layer, a stable median
        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")

    def once(fn):  # the CPU rehearsal: one run, so the code path is exercised; the figure means nothing
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    return once


def phase_speed(args, device: str, rows: Rows) -> None:
    import torch

    from vgg_toolkit.kernels.conv3x3 import conv_relu_reference
    from vgg_toolkit.kernels.fused_conv import conv_bias_relu_op

    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # as a user's training runs: cuDNN picks its fastest algorithm
    timer, batch = _timer(device, args.tiny), args.batches[-1]
    dtype = torch.bfloat16
    for layer, (k, cin, cout, hw) in layers(args.tiny):
        x = torch.randn(batch, cin, hw, hw, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = (torch.randn(cout, cin, k, k, device=device) * math.sqrt(2 / (cin * k * k))).to(dtype)
        w = w.contiguous(memory_format=torch.channels_last).requires_grad_()  # as the fused path keeps them
        b = torch.zeros(cout, device=device, dtype=dtype, requires_grad=True)
        x.requires_grad_(cin != 3)
        inputs = [t for t in (x, w, b) if t.requires_grad]
        g = torch.randn(batch, cout, hw, hw, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        row = dict(layer=layer, cin=cin, cout=cout, hw=hw, cudnn_benchmark=bool(torch.backends.cudnn.benchmark))
        for impl_name, impl in (("triton", conv_bias_relu_op), ("cudnn", conv_relu_reference)):
            def forward():
                with torch.no_grad():
                    impl(x, w, b)

            def step():
                torch.autograd.grad(impl(x, w, b), inputs, g)

            row[f"{impl_name}_fwd_ms"], row[f"{impl_name}_step_ms"] = timer(forward), timer(step)
        rows.add(row)


def table_speed(rows: list[dict]) -> list[str]:
    bench = rows[0]["cudnn_benchmark"] if rows else None
    lines = [f"Speed, bf16, channels_last activations, weights and gradients, cudnn.benchmark {bench}: ms "
             "(median), ratio = cuDNN / triton (above 1: the fused kernel is faster)", "",
             "| layer | Cin | Cout | HxW | triton fwd | cuDNN fwd | ratio | triton fwd+bwd | cuDNN fwd+bwd | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fwd_ratios, step_ratios = [], []
    for r in rows:
        fr, sr = r["cudnn_fwd_ms"] / r["triton_fwd_ms"], r["cudnn_step_ms"] / r["triton_step_ms"]
        fwd_ratios.append(fr)
        step_ratios.append(sr)
        lines.append(f"| {r['layer']} | {r['cin']} | {r['cout']} | {r['hw']}x{r['hw']} | {r['triton_fwd_ms']:.3f} | "
                     f"{r['cudnn_fwd_ms']:.3f} | {fr:.2f} | {r['triton_step_ms']:.3f} | {r['cudnn_step_ms']:.3f} | {sr:.2f} |")
    if rows:
        lines.append(f"| geometric mean | | | | | | {_geomean(fwd_ratios):.2f} | | | {_geomean(step_ratios):.2f} |")
    return lines


def phase_train(args, device: str, rows: Rows) -> None:
    import torch

    from vgg_toolkit import create_model, model_info, prepare_model

    size, batch, steps = (32, 2, 1) if args.tiny else (224, 64, args.steps)
    options = {"width": 1 / 16, "fc_dim": 64} if args.tiny else {}
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    for backend in ("torch", "triton", "auto"):
        torch.manual_seed(0)
        model = create_model("vgg-d", input_size=size, **options).to(memory_format=torch.channels_last)
        model = prepare_model(model, device, {"conv_backend": backend})
        fused = len(model_info(model).runtime.get("fused_convs", []))
        opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4)
        images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 1000, (batch,), device=device)

        def step():
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        for _ in range(1 if args.tiny else 3):  # autotuning, and auto's timing per shape, happen here
            if not torch.isfinite(step()):
                raise RuntimeError(f"{backend}: non-finite loss")
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        rows.add(dict(backend=backend, images_per_s=steps * batch / (time.perf_counter() - start), fused=fused))


def table_train(rows: list[dict]) -> list[str]:
    base = next((r["images_per_s"] for r in rows if r["backend"] == "torch"), None)
    lines = ["VGG-D training step (bf16 autocast, SGD with momentum), images/s:", "",
             "| conv backend | images/s | fused convs | ratio to torch |", "|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['images_per_s'] / base:.3f}" if base else "-"
        lines.append(f"| {r['backend']} | {r['images_per_s']:.1f} | {r['fused']} | {ratio} |")
    return lines


def _vggtk(args, *command: str, timeout: float = 600) -> tuple[int, float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vgg_toolkit", *command], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "COLUMNS": "200"})
    return done.returncode, time.perf_counter() - start, (done.stdout + done.stderr)


def _steps(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in (json.loads(line) for line in path.read_text().splitlines()) if r.get("event") == "step"]


def phase_cli(args, device: str, rows: Rows) -> None:
    """Every CUDA path a user takes, once: training with each conv backend, the device's JPEG decode,
    evaluation, prediction, perceptual distance. A command that fails is a failed row with its last lines."""
    work = Path(tempfile.mkdtemp(prefix="vggtk-gpu-cli-"))
    data, photos, size = "shards/fashion-mnist", "shards/localisation", []
    if args.tiny:  # a tiny set, so the rehearsal stays short
        code, _, said = _vggtk(args, "shards", "create", "fashion-mnist", str(work / "tiny"), "--source-option",
                               "train=40", "--source-option", "val=20", "--source-option", "test=20")
        if code:
            raise RuntimeError(f"could not make the tiny set: {said[-500:]}")
        data = str(work / "tiny")
        size = ["--width", "0.125", "--fc-dim", "32"]
    batch, every = ("20", "1") if args.tiny else ("64", "5")
    losses = {}
    for backend in ("torch", "triton"):
        run = work / f"fm-{backend}"
        code, seconds, said = _vggtk(args, "train", "--data", data, "--run-dir", str(run), "--epochs", "1",
                                     "--batch-size", batch, "--lr", "0.02", "--log-every", every, "--conv-backend",
                                     backend, "--device", device, *size)
        steps = _steps(run)
        losses[backend] = [s["loss"] for s in steps]
        rate = steps[-1]["img_per_s"] if steps else None
        rows.add(dict(command=f"train --conv-backend {backend}", ok=code == 0, seconds=seconds, images_per_s=rate,
                      steps=steps[-1]["step"] if steps else 0, tail="" if code == 0 else said[-400:]))
    if losses.get("torch") and losses.get("triton"):
        pairs = list(zip(losses["torch"], losses["triton"]))
        worst = max(abs(a - b) / max(abs(a), 1e-6) for a, b in pairs)
        rows.add(dict(command="loss curves, triton against torch", ok=worst < 0.05, seconds=0.0,
                      images_per_s=None, steps=len(pairs), tail=f"largest relative difference {worst:.4f} "
                      "(bf16 autocast: within 5%)"))
    run = work / "photos"
    code, seconds, said = _vggtk(args, "train", "--data", photos, "--run-dir", str(run), "--epochs", "1",
                                 "--batch-size", "16", "--width", "0.125", "--fc-dim", "32", "--decode", "device",
                                 "--device", device, "--log-every", "2")
    steps = _steps(run)
    notice = next((line for line in said.splitlines() if "--decode device:" in line), "decoded on the device")
    rows.add(dict(command="train --decode device (bundled photos)", ok=code == 0, seconds=seconds,
                  images_per_s=steps[-1]["img_per_s"] if steps else None, steps=steps[-1]["step"] if steps else 0,
                  tail=notice if code == 0 else said[-400:]))
    best = work / "fm-torch" / "best"
    for method in ("dense", "multicrop"):
        code, seconds, said = _vggtk(args, "eval", str(best), "--data", data, "--methods", method, "--device", device,
                                     "--out", str(work / f"{method}.json"))
        rows.add(dict(command=f"eval --methods {method}", ok=code == 0, seconds=seconds, images_per_s=None, steps=0,
                      tail=said.strip().splitlines()[-1][:200] if said.strip() else ""))
    pictures = work / "pictures"
    pictures.mkdir()
    from PIL import Image

    import vgg_toolkit as vt
    for batch_ in vt.read_split(photos, "test", batch_size=1, limit=4):
        Image.fromarray(batch_.images[0].permute(1, 2, 0).numpy()).save(pictures / f"{batch_.keys[0]}.png")
    code, seconds, said = _vggtk(args, "predict", str(run / "best"), str(pictures), "--device", device,
                                 "--out", str(work / "predictions.json"))
    rows.add(dict(command="predict (4 bundled photos)", ok=code == 0, seconds=seconds, images_per_s=None, steps=0,
                  tail="" if code == 0 else said[-400:]))
    # The perceptual distance through each conv backend: the same photos, JPEG-compressed, at one tap.
    compressed = work / "compressed"
    compressed.mkdir()
    for picture in pictures.iterdir():
        Image.open(picture).save(compressed / f"{picture.stem}.jpg", quality=30)
    distances = {}
    for backend in ("torch", "triton"):
        code, seconds, said = _vggtk(args, "distance", str(pictures), str(compressed), "--weights", str(run / "best"),
                                     "--metric", "features:relu3_2", "--size", "32", "--json", "--device", device,
                                     "--conv-backend", backend)
        if code == 0:
            report = json.JSONDecoder().raw_decode(said)[0]  # stdout's JSON comes first, stderr's notices after
            distances[backend] = [p["distance"] for p in report["pairs"]]
        rows.add(dict(command=f"distance --conv-backend {backend}", ok=code == 0, seconds=seconds, images_per_s=None,
                      steps=0, tail="" if code == 0 else said[-400:]))
    if len(distances) == 2:
        worst = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(distances["torch"], distances["triton"]))
        rows.add(dict(command="distances, triton against torch", ok=worst < 1e-3, seconds=0.0, images_per_s=None,
                      steps=len(distances["torch"]), tail=f"largest relative difference {worst:.2e} (fp32)"))


def table_cli(rows: list[dict]) -> list[str]:
    lines = ["The command line on the bundled data:", "",
             "| command | ok | seconds | images/s | steps | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        rate = f"{r['images_per_s']:.0f}" if r.get("images_per_s") else "-"
        note = " ".join(str(r.get("tail", "")).split())[:160]
        lines.append(f"| {r['command']} | {'yes' if r['ok'] else 'NO'} | {r['seconds']:.1f} | {rate} | {r['steps']} | "
                     f"{note} |")
    return lines


def phase_decode(args, device: str, rows: Rows) -> None:
    from gpu_decode_check import decode_rows

    for row in decode_rows(rehearse=args.tiny, images=64 if args.tiny else 512):
        rows.add(row)


def table_decode(rows: list[dict]) -> list[str]:
    lines = ["JPEG decoding on the device (`--decode device`) against the workers' decode:", ""]
    for r in rows:
        lines.append(f"- {r['what']}: {r['value']}")
    return lines


RUNNERS = {"correctness": phase_correctness, "speed": phase_speed, "train": phase_train, "cli": phase_cli,
           "decode": phase_decode}
TABLES = {"correctness": table_correctness, "speed": table_speed, "train": table_train, "cli": table_cli,
          "decode": table_decode}


def run_phase(args) -> int:
    """The child process of one phase: its rows as they come, its table when it ends."""
    device = _device(args.tiny)
    rows = Rows(args.out, args.phase)
    if args.fail_phase == args.phase:
        rows.add(_forced_failure_row(args.phase))
        raise RuntimeError(f"--fail-phase {args.phase}: the forced failure of the rehearsal")
    RUNNERS[args.phase](args, device, rows)
    print("\n".join(TABLES[args.phase](rows.rows)), flush=True)
    return 0 if _phase_ok(args.phase, rows.rows) else 1


def _forced_failure_row(phase: str) -> dict:
    return {"forced": phase}


def _phase_ok(phase: str, rows: list[dict]) -> bool:
    if phase in ("correctness", "cli"):
        return bool(rows) and all(r["ok"] for r in rows)
    if phase == "decode":
        return bool(rows) and all(r.get("ok", True) for r in rows)
    return bool(rows)


# --- the driver ------------------------------------------------------------------------------------------

def tree_hash(repo: Path = REPO) -> str:
    """sha256 of the source a wheel is built from: vgg_toolkit/, plugins/ and kernels/ as the package
    installs them (``vgg_toolkit/plugins/...``, ``vgg_toolkit/kernels/...``)."""
    roots = {"vgg_toolkit": repo / "vgg_toolkit", "vgg_toolkit/plugins": repo / "plugins",
             "vgg_toolkit/kernels": repo / "kernels"}
    return _hash_files({f"{prefix}/{p.relative_to(root)}": p for prefix, root in roots.items()
                        for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".json", ".tsv")})


def installed_hash() -> str:
    """The same hash over the package Python imports (an installed wheel, or this tree when editable)."""
    import vgg_toolkit
    import vgg_toolkit.kernels
    import vgg_toolkit.plugins

    files = {}
    for prefix, module in (("vgg_toolkit", vgg_toolkit), ("vgg_toolkit/plugins", vgg_toolkit.plugins),
                           ("vgg_toolkit/kernels", vgg_toolkit.kernels)):
        root = Path(module.__path__[0])
        for p in root.rglob("*"):
            rel = p.relative_to(root)
            if prefix == "vgg_toolkit" and rel.parts[0] in ("plugins", "kernels"):
                continue  # an installed wheel nests them here: counted under their own prefix
            if p.is_file() and p.suffix in (".py", ".json", ".tsv") and "__pycache__" not in rel.parts:
                files[f"{prefix}/{rel}"] = p
    return _hash_files(files)


def _hash_files(files: dict[str, Path]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def header(args, device: str) -> list[str]:
    import torch
    import triton

    if device == "cuda":
        name = torch.cuda.get_device_name()
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30).stdout.strip() or "?"
        except (OSError, subprocess.TimeoutExpired):
            driver = "? (no nvidia-smi)"
    else:
        name, driver = "CPU, Triton interpreter (figures mean nothing)", "-"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    budget = sum(BUDGETS[p] for p in args.phases)
    return [f"## GPU check on {name}", "",
            f"{datetime.date.today().isoformat()}; driver {driver}, torch {torch.__version__}, triton "
            f"{triton.__version__}, cuDNN {cudnn}; code {installed_hash()}; "
            f"`python benchmarks/gpu_check.py {shlex.join(sys.argv[1:])}`",
            "", f"Estimate: at most {budget} s ({', '.join(f'{p} {BUDGETS[p]} s' for p in args.phases)}), "
            f"{args.workers} worker processes for the correctness phase; rows in {args.out}/.", ""]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.phase:
        return run_phase(args)
    device = _device(args.tiny)
    if installed_hash() != tree_hash():
        print(f"the installed vgg_toolkit (code {installed_hash()}) is not this tree's ({tree_hash()}): rebuild the "
              "wheels (make gpu-wheels) or install from the tree", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    print("\n".join(header(args, device)), flush=True)
    results = {}
    for phase in args.phases:
        started = time.perf_counter()
        command = [sys.executable, __file__, "--phase", phase, *_passed_on(args)]
        budget = BUDGETS[phase] * (1 if device == "cuda" else args.cpu_budget_factor)
        try:
            done = subprocess.run(command, timeout=budget, capture_output=True, text=True)
            status = "ok" if done.returncode == 0 else "failed"
            tail = "" if done.returncode == 0 else "\n".join(done.stderr.strip().splitlines()[-6:])
            if done.stdout.strip():
                print(done.stdout.strip(), flush=True)
        except subprocess.TimeoutExpired:
            status, tail = "timed out", f"stopped after its budget of {budget:.0f} s"
        seconds = time.perf_counter() - started
        rows = read_rows(args.out, phase)
        results[phase] = dict(phase=phase, status=status, seconds=round(seconds, 1), rows=len(rows), tail=tail)
        (args.out / f"{phase}.json").write_text(json.dumps(results[phase], indent=1) + "\n")
        print(f"# {phase}: {status}, {len(rows)} rows, {seconds:.0f} s" + (f"\n{tail}" if tail else ""), flush=True)
    print("\n".join(summary(args, results)), flush=True)
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


def summary(args, results: dict) -> list[str]:
    lines = ["", "### Summary: every phase, with whatever rows it finished", "",
             "| phase | status | rows | seconds |", "|---|---|---|---|"]
    lines += [f"| {r['phase']} | {r['status']} | {r['rows']} | {r['seconds']} |" for r in results.values()]
    for phase in results:
        rows = [r for r in read_rows(args.out, phase) if "forced" not in r]
        if rows:
            try:
                lines += ["", *TABLES[phase](rows)]
            except (KeyError, TypeError, ZeroDivisionError) as exc:  # a partial row: say so, keep the rest
                lines += ["", f"{phase}: rows not tabulated ({exc!r}); see {args.out}/{phase}.jsonl"]
    return lines


def _passed_on(args) -> list[str]:
    out = ["--out", str(args.out), "--workers", str(args.workers), "--steps", str(args.steps)]
    out += ["--tiny"] if args.tiny else []
    out += ["--fail-phase", args.fail_phase] if args.fail_phase else []
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU rehearsal under TRITON_INTERPRET=1)")
    p.add_argument("--workers", type=int, default=4, help="processes compiling and checking configs "
                   "(default 4; 1 with --tiny)")
    p.add_argument("--steps", type=int, default=10, help="timed VGG-D training steps per backend (default 10)")
    p.add_argument("--phases", default=",".join(PHASES), help=f"phases to run, in order (default: {','.join(PHASES)})")
    p.add_argument("--out", type=Path, default=None, help="where the rows go (default: $OUT/gpu_check, else "
                   "runs/gpu_check)")
    p.add_argument("--fail-phase", default="", help="make this phase fail (the rehearsal of a failure)")
    p.add_argument("--cpu-budget-factor", type=float, default=10.0, help="the budgets' multiple off a GPU")
    p.add_argument("--phase", default="", help=argparse.SUPPRESS)  # the child process of one phase
    args = p.parse_args(argv)
    args.batches = (1, 2) if args.tiny else (1, 64)
    if args.tiny and "--workers" not in (argv if argv is not None else sys.argv[1:]):
        args.workers = 1
    args.phases = [x for x in args.phases.split(",") if x]
    unknown = [x for x in args.phases if x not in PHASES]
    if unknown:
        p.error(f"unknown phase(s) {', '.join(unknown)}; known: {', '.join(PHASES)}")
    if args.out is None:
        args.out = Path(os.environ["OUT"]) / "gpu_check" if os.environ.get("OUT") else REPO / "runs" / "gpu_check"
    return args


if __name__ == "__main__":
    sys.exit(main())
