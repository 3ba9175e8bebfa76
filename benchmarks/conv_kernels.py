"""The fused Triton conv + bias + ReLU against cuDNN (eager conv2d, then ReLU) and against
torch.compile (max-autotune) on the 13 conv layers of VGG-D, forward and forward+backward, in one
run on one GPU; then a whole VGG-D training step (images/s) with each conv backend.

    python benchmarks/conv_kernels.py                    # batch 64, bf16, channels_last
    python benchmarks/conv_kernels.py --layers 1-7       # a subset (max-autotune compiles are slow)
    python benchmarks/conv_kernels.py --train-step-only  # images/s of a VGG-D step per backend
    python benchmarks/conv_kernels.py --check            # correctness: every VGG-D shape (and
                                                         # config C's 1x1s) at batch 1, 32, 64

Needs a CUDA GPU; the kernels' CPU tests are ``pytest tests/test_kernels.py`` (Triton interpreter).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# Worst relative error (max |err| / max |reference|) allowed whatever ATen's own error is.
CHECK_FLOOR = {"bf16": 2e-2, "fp16": 4e-3, "fp32": 4e-3}  # fp32: TF32, as cuDNN's default


def vgg_conv_shapes(config: str = "D", size: int = 224) -> list[tuple[int, int, int, int]]:
    """(kernel, Cin, Cout, H=W) of each conv of a VGG config, first to last."""
    from vgg_toolkit.plugins.vgg.net import CONFIGS

    shapes, cin = [], 3
    for item in CONFIGS[config]:
        if item == "M":
            size //= 2
            continue
        k, cout = item
        shapes.append((k, cin, cout, size))
        cin = cout
    return shapes


def _layer_set(spec: str, count: int) -> list[int]:
    """'all', '3', '1-7' or '1,2,13' -> 0-based layer indices."""
    if spec == "all":
        return list(range(count))
    chosen: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        chosen += range(int(lo), int(hi or lo) + 1)
    bad = [i for i in chosen if not 1 <= i <= count]
    if bad:
        raise argparse.ArgumentTypeError(f"layers {bad} do not exist (1..{count})")
    return [i - 1 for i in chosen]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="check correctness instead of timing")
    p.add_argument("--batch", type=int, default=64, help="batch size for timings (default 64)")
    p.add_argument("--check-batches", default="1,32,64", help="batch sizes for --check (default 1,32,64)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="timing dtype (default bf16)")
    p.add_argument("--size", type=int, default=224, help="input image size (default 224)")
    p.add_argument("--layers", default="all", help="VGG-D conv layers to time: all, 3, 1-7 or 1,2,13")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--no-train-step", action="store_true", help="skip the whole-network training step")
    p.add_argument("--train-step-only", action="store_true", help="time only the whole-network training step")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per backend (default 20)")
    args = p.parse_args(argv)
    try:
        args.layer_indices = _layer_set(args.layers, len(vgg_conv_shapes("D", args.size)))
        args.check_batch_list = [int(b) for b in args.check_batches.split(",")]
    except (ValueError, argparse.ArgumentTypeError) as exc:
        p.error(str(exc))
    return args


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit("conv_kernels.py needs a CUDA GPU and none is visible (torch.cuda.is_available() is False). "
                 "On CPU, test the kernels with `pytest tests/test_kernels.py` (Triton interpreter).")
    if os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes"):
        sys.exit("conv_kernels.py: unset TRITON_INTERPRET: the interpreter would run (and time) the kernels on CPU.")


def _bench(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _layer_tensors(torch, k, cin, cout, hw, batch, dtype, grad):
    x = torch.randn(batch, cin, hw, hw, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, k, k, device="cuda", dtype=dtype) * math.sqrt(2.0 / (cin * k * k))
    b = torch.randn(cout, device="cuda", dtype=dtype) * 0.1
    # The first layer's input is the image: no gradient, as in training.
    x.requires_grad_(grad and cin != 3)
    w.requires_grad_(grad)
    b.requires_grad_(grad)
    return x, w, b


def _runner(torch, impl, x, w, b, backward: bool):
    inputs = [t for t in (x, w, b) if t.requires_grad]
    grad_y = torch.randn(x.shape[0], w.shape[0], *x.shape[2:], device="cuda", dtype=x.dtype)

    def run():
        if backward:
            torch.autograd.grad(impl(x, w, b), inputs, grad_y)
        else:
            with torch.no_grad():
                impl(x, w, b)
    return run


def _geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def time_layers(args) -> None:
    import torch

    from vgg_toolkit.kernels.conv3x3 import conv_relu_reference
    from vgg_toolkit.kernels.fused_conv import conv_bias_relu_op

    dtype = getattr(torch, DTYPES[args.dtype])
    shapes = vgg_conv_shapes("D", args.size)
    compiled = None
    if not args.no_compile:
        # One compiled graph per shape and grad mode: keep dynamo from giving up after its default 8.
        for limit in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, 64)
        compiled = torch.compile(conv_relu_reference, mode="max-autotune", dynamic=False)
    impls = {"triton": conv_bias_relu_op, "cudnn": conv_relu_reference}
    if compiled is not None:
        impls["compile"] = compiled
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, batch {args.batch}, {args.dtype}, "
          f"channels_last, {args.size}x{args.size}; TFLOP/s (median of do_bench); ratio = triton / baseline")
    ratios: dict[str, list[float]] = {}
    for backward in (False, True):
        mode = "fwd+bwd" if backward else "fwd"
        print(f"\n{mode:8} {'layer':>5} {'Cin':>4} {'Cout':>4} {'HxW':>7} "
              + " ".join(f"{n:>8}" for n in impls) + " " + " ".join(f"{'/' + n:>9}" for n in impls if n != "triton"))
        for i in args.layer_indices:
            k, cin, cout, hw = shapes[i]
            x, w, b = _layer_tensors(torch, k, cin, cout, hw, args.batch, dtype, grad=backward)
            passes = 1 + int(backward) + int(backward and x.requires_grad)  # fwd, dW, dX
            flop = 2.0 * args.batch * hw * hw * cin * cout * k * k * passes
            tflops = {n: flop / (_bench(_runner(torch, f, x, w, b, backward)) * 1e-3) / 1e12 for n, f in impls.items()}
            row = [tflops["triton"] / tflops[n] for n in impls if n != "triton"]
            for n, r in zip([n for n in impls if n != "triton"], row):
                ratios.setdefault(f"{mode} /{n}", []).append(r)
            print(f"{'':8} {i + 1:>5} {cin:>4} {cout:>4} {f'{hw}x{hw}':>7} "
                  + " ".join(f"{tflops[n]:8.1f}" for n in impls) + " " + " ".join(f"{r:9.2f}" for r in row), flush=True)
            del x, w, b
    print("\ngeometric mean of triton / baseline:")
    for name, values in ratios.items():
        print(f"  {name:18} {_geomean(values):.3f}  over {len(values)} layers")


def train_step_rates(args) -> None:
    import torch

    from vgg_toolkit import create_model, model_info, prepare_model

    print(f"\nVGG-D training step, batch {args.batch}, {args.size}x{args.size}, bf16 autocast, channels_last, SGD")
    rates = {}
    for backend in ("torch", "triton", "auto"):
        torch.manual_seed(0)
        model = create_model("vgg-d", input_size=args.size).to(memory_format=torch.channels_last)
        model = prepare_model(model, "cuda", {"conv_backend": backend})
        opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4)
        images = torch.randn(args.batch, 3, args.size, args.size, device="cuda")
        images = images.contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 1000, (args.batch,), device="cuda")

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(3):  # autotuning, and auto's per-shape timing, happen here
            step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        rates[backend] = args.steps * args.batch / (time.perf_counter() - start)
        fused = len(model_info(model).runtime.get("fused_convs", []))
        print(f"  {backend:7} {rates[backend]:8.1f} images/s  ({fused} fused convs)"
              + (f"  ratio to torch {rates[backend] / rates['torch']:.3f}" if backend != "torch" else ""), flush=True)
        del model, opt


def check(args) -> bool:
    """Every VGG-D conv shape and config C's 1x1 shapes, each dtype, at each batch: output and all
    three gradients of the fused kernels against an fp64 reference, beside ATen's own error."""
    import torch

    from vgg_toolkit.kernels.conv3x3 import conv_relu_reference
    from vgg_toolkit.kernels.fused_conv import conv_bias_relu_op

    shapes = vgg_conv_shapes("D", args.size) + [s for s in vgg_conv_shapes("C", args.size) if s[0] == 1]
    print(f"# {torch.cuda.get_device_name()}: relative error max|out - fp64| / max|fp64| "
          "(triton | aten); pass: triton <= max(2 x aten, floor)")
    failures = 0
    for batch in args.check_batch_list:
        for k, cin, cout, hw in shapes:
            for name in ("bf16", "fp16", "fp32"):
                dtype = getattr(torch, DTYPES[name])
                x, w, b = _layer_tensors(torch, k, cin, cout, hw, batch, dtype, grad=True)
                x.requires_grad_(True)
                inputs = (x, w, b)
                grad_y = torch.randn(batch, cout, hw, hw, device="cuda", dtype=dtype)
                ref_in = [t.detach().double().requires_grad_() for t in inputs]
                ref_y = conv_relu_reference(*ref_in)
                ref = [ref_y, *torch.autograd.grad(ref_y, ref_in, grad_y.double())]
                results = {}
                for impl_name, impl in (("triton", conv_bias_relu_op), ("aten", conv_relu_reference)):
                    y = impl(*inputs)
                    outs = [y, *torch.autograd.grad(y, inputs, grad_y)]
                    results[impl_name] = [((o.double() - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()
                                          for o, r in zip(outs, ref)]
                ok = all(t <= max(2 * a, CHECK_FLOOR[name]) for t, a in zip(results["triton"], results["aten"]))
                failures += not ok
                cells = "  ".join(f"{label} {t:.1e}|{a:.1e}" for label, t, a in
                                  zip(("y", "dx", "dw", "db"), results["triton"], results["aten"]))
                print(f"batch {batch:>3} {k}x{k} {cin:>3}->{cout:<3} {hw:>3}x{hw:<3} {name:5} {cells}  "
                      f"{'ok' if ok else 'FAIL'}", flush=True)
                del x, w, b, inputs, ref_in, ref_y, ref
            torch.cuda.empty_cache()
    print(f"\n{'all passed' if not failures else f'{failures} FAILED'}")
    return failures == 0


def main(argv=None) -> int:
    args = parse_args(argv)
    require_cuda()
    if args.check:
        return 0 if check(args) else 1
    if not args.train_step_only:
        time_layers(args)
    if not args.no_train_step:
        train_step_rates(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
