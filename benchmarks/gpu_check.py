"""The prepared GPU check of the Triton conv kernels: one command that settles, in minutes of a lent
GPU, what a CPU cannot.

1. Correctness of every config: each kernel (forward, input gradient, weight gradient) forced to
   each GPU config its pruner keeps for the shape (the 8-warp ones included), on the 13 conv shapes
   of VGG-D at batch 1 and 64, in fp32 (TF32) and bf16, against cuDNN: both are measured against an
   fp64 reference and the kernel must stay within max(2 x cuDNN's error, a floor). The compiles, not
   the GPU, take the time, so the configs are shared out to worker processes.
2. Speed: fused conv + bias + ReLU against cuDNN conv then ReLU, per layer, forward and
   forward + backward, batch 64 bf16 channels_last; geometric means.
3. A VGG-D training step (bf16 autocast, SGD) with the conv backend torch, triton and auto.
4. A block ready for BENCHMARKS.md.

    python benchmarks/gpu_check.py                   # on the GPU (benchmarks/gpu_check.sh sets it up)
    TRITON_INTERPRET=1 python benchmarks/gpu_check.py --tiny   # CI: the same code, tiny shapes, on CPU

``--tiny`` keeps the layer structure of VGG-D with a few channels and pixels, batches 1 and 2, and
forces the same GPU configs in Triton's interpreter; its timings mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv_kernels import CHECK_FLOOR, _geomean, vgg_conv_shapes  # noqa: E402  (the benchmarks' shared parts)

KERNELS = ("fwd", "dgrad", "wgrad")
DTYPES = ("fp32", "bf16")


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

    from vgg_toolkit.kernels.conv3x3 import conv_bias_relu, conv_relu_reference
    from vgg_toolkit.kernels.conv3x3_backward import conv_input_grad, conv_relu_backward_reference, conv_weight_grad

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
                rows.append(dict(kernel=which, config=_config_name(config), dtype=name, batch=batch, layer=layer,
                                 triton=max(t for t, _ in errors), aten=max(a for _, a in errors), ok=ok))
                del x, w, b, y, g, x64, w64, b64, g64, y64, outs, refs, aten
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def _config_name(config) -> str:
    kw = config.kwargs
    return f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']} w{config.num_warps} s{config.num_stages}"


def phase_correctness(args) -> tuple[list[dict], float]:
    jobs = [(which, i, args.tiny, args.batches) for which in KERNELS
            for i in range(len(_kernel_and_configs(which)[1]))]
    start = time.perf_counter()
    rows: list[dict] = []
    if args.workers <= 1:
        for job in jobs:
            rows += check_config(job)
    else:
        # Fresh processes (spawn): each compiles its configs; Triton's disk cache then serves phase 2.
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            for part in pool.map(check_config, jobs):
                rows += part
    return rows, time.perf_counter() - start


def _timer(device: str):
    if device == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")

    def once(fn):  # the CPU rehearsal: one run, so the code path is exercised; the figure means nothing
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    return once


def phase_speed(args, device: str) -> list[dict]:
    import torch

    from vgg_toolkit.kernels.conv3x3 import conv_relu_reference
    from vgg_toolkit.kernels.fused_conv import conv_bias_relu_op

    timer, batch = _timer(device), args.batches[-1]
    dtype = torch.bfloat16
    rows = []
    for layer, (k, cin, cout, hw) in layers(args.tiny):
        x = torch.randn(batch, cin, hw, hw, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = (torch.randn(cout, cin, k, k, device=device) * math.sqrt(2 / (cin * k * k))).to(dtype).requires_grad_()
        b = torch.zeros(cout, device=device, dtype=dtype, requires_grad=True)
        x.requires_grad_(cin != 3)
        inputs = [t for t in (x, w, b) if t.requires_grad]
        g = torch.randn(batch, cout, hw, hw, device=device, dtype=dtype)
        row = dict(layer=layer, cin=cin, cout=cout, hw=hw)
        for impl_name, impl in (("triton", conv_bias_relu_op), ("cudnn", conv_relu_reference)):
            def forward():
                with torch.no_grad():
                    impl(x, w, b)

            def step():
                torch.autograd.grad(impl(x, w, b), inputs, g)

            row[f"{impl_name}_fwd_ms"], row[f"{impl_name}_step_ms"] = timer(forward), timer(step)
        rows.append(row)
    return rows


def phase_train_step(args, device: str) -> dict:
    import torch

    from vgg_toolkit import create_model, model_info, prepare_model

    size, batch, steps = (32, 2, 1) if args.tiny else (224, 64, args.steps)
    options = {"width": 1 / 16, "fc_dim": 64} if args.tiny else {}
    rates = {}
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
            assert torch.isfinite(step()), f"{backend}: non-finite loss"
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        rates[backend] = (steps * batch / (time.perf_counter() - start), fused)
        del model, opt
    return rates


def report(args, device: str, correctness, seconds, speed, train) -> bool:
    import torch
    import triton

    failures = [r for r in correctness if not r["ok"]]
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU, Triton interpreter (figures mean nothing)"
    lines = [f"## GPU check: the Triton conv kernels on {name}", "",
             f"{datetime.date.today().isoformat()}, torch {torch.__version__}, triton {triton.__version__}; "
             f"`python benchmarks/gpu_check.py{' --tiny' if args.tiny else ''}`", "",
             f"Correctness: {len(correctness)} checks (kernel x config x dtype x batch x layer, configs its pruner "
             f"keeps), {len(failures)} failed, in {seconds:.0f} s with {args.workers} worker processes.", ""]
    worst = {}
    for r in correctness:
        key = (r["kernel"], r["config"])
        worst[key] = max(worst.get(key, (0.0, 0.0, True)), (r["triton"], r["aten"], r["ok"]))
    lines += ["| kernel | config | worst error triton | cuDNN at that check | all ok |", "|---|---|---|---|---|"]
    for (kernel, config), (t, a, _) in sorted(worst.items()):
        ok = all(r["ok"] for r in correctness if (r["kernel"], r["config"]) == (kernel, config))
        lines.append(f"| {kernel} | {config} | {t:.2e} | {a:.2e} | {'yes' if ok else 'NO'} |")
    for r in failures[:20]:
        lines.append(f"FAILED: {r}")
    lines += ["", f"Speed, batch {args.batches[-1]}, bf16, channels_last: ms (median), ratio = cuDNN / triton "
                  "(above 1: the fused kernel is faster)", "",
              "| layer | Cin | Cout | HxW | triton fwd | cuDNN fwd | ratio | triton fwd+bwd | cuDNN fwd+bwd | ratio |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    fwd_ratios, step_ratios = [], []
    for r in speed:
        fr, sr = r["cudnn_fwd_ms"] / r["triton_fwd_ms"], r["cudnn_step_ms"] / r["triton_step_ms"]
        fwd_ratios.append(fr)
        step_ratios.append(sr)
        lines.append(f"| {r['layer']} | {r['cin']} | {r['cout']} | {r['hw']}x{r['hw']} | {r['triton_fwd_ms']:.3f} | "
                     f"{r['cudnn_fwd_ms']:.3f} | {fr:.2f} | {r['triton_step_ms']:.3f} | {r['cudnn_step_ms']:.3f} | {sr:.2f} |")
    lines += [f"| geometric mean | | | | | | {_geomean(fwd_ratios):.2f} | | | {_geomean(step_ratios):.2f} |", "",
              "VGG-D training step (bf16 autocast, SGD with momentum), images/s:", "",
              "| conv backend | images/s | fused convs | ratio to torch |", "|---|---|---|---|"]
    for backend, (rate, fused) in train.items():
        lines.append(f"| {backend} | {rate:.1f} | {fused} | {rate / train['torch'][0]:.3f} |")
    print("\n".join(lines), flush=True)
    return not failures


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU rehearsal under TRITON_INTERPRET=1)")
    p.add_argument("--workers", type=int, default=None, help="processes compiling and checking configs "
                   "(default: min(8, CPUs) on the GPU, 1 with --tiny)")
    p.add_argument("--steps", type=int, default=10, help="timed VGG-D training steps per backend (default 10)")
    p.add_argument("--skip", default="", help="phases to skip: correctness,speed,train")
    args = p.parse_args(argv)
    args.batches = (1, 2) if args.tiny else (1, 64)
    if args.workers is None:
        args.workers = 1 if args.tiny else min(8, os.cpu_count() or 1)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = _device(args.tiny)
    skip = set(filter(None, args.skip.split(",")))
    started = time.perf_counter()
    correctness, seconds = phase_correctness(args) if "correctness" not in skip else ([], 0.0)
    print(f"# correctness: {len(correctness)} checks in {seconds:.0f} s", flush=True)
    speed = phase_speed(args, device) if "speed" not in skip else []
    print(f"# speed: {len(speed)} layers, {time.perf_counter() - started:.0f} s so far", flush=True)
    train = phase_train_step(args, device) if "train" not in skip else {"torch": (1.0, 0)}
    print(f"# training step done, {time.perf_counter() - started:.0f} s in all\n", flush=True)
    return 0 if report(args, device, correctness, seconds, speed, train) else 1


if __name__ == "__main__":
    sys.exit(main())
