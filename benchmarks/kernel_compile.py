"""Compile check of the Triton conv kernels for real GPUs, run on any machine (no GPU needed).

For the 13 conv layers of VGG-D at batch 64 it compiles, ahead of time, every config the kernels'
pruners keep: the forward (``conv_bias_relu_kernel``), the input gradient (the same kernel on the
masked output gradient, as ``conv_input_grad`` calls it) and the weight gradient (``conv_wgrad_kernel``, with
the split ``default_split`` picks on the target GPU), in bf16 and fp32 (TF32), for sm_90a (H100 /
H200) and sm_80 (A100). Each distinct compiled kernel is one row: registers, spills, shared memory,
blocks per SM, the MMA instruction and whether the main loop's loads are asynchronous.

    python benchmarks/kernel_compile.py                  # the whole matrix; exit 1 on any failure
    python benchmarks/kernel_compile.py --quick          # every config once: sm_90a, bf16
    python benchmarks/kernel_compile.py --targets sm_80 --dtypes fp32 --kernels wgrad --layers 1-3
    python benchmarks/kernel_compile.py --json rows.json --dump ir/   # rows as JSON; PTX/SASS files
    python benchmarks/kernel_compile.py --fwd-configs 128x64x64:4:3,64x64x32:4:4   # other candidates
    python benchmarks/kernel_compile.py --pruner-limit 999999999  # also what the pruners drop

A row fails on: a compile error, any register spill (cuobjdump's STACK or LOCAL), shared memory
over the device's per-block limit (Triton's ``metadata.shared`` plus the cubin's static shared
memory, 1 KB on sm_90a), no tensor-core MMA, or synchronous loads in the main loop. A kernel that
serves layer 1 alone may load synchronously: in bf16 its rows of 3 channels are 6 bytes, too
narrow for cp.async, so the forward's FLAT_K gather (and the gradients' Cin = 3 / Cout = 3 tiles)
go through registers.

The launches are faithful to a real run: the real wrappers (``conv_bias_relu``, ``conv_input_grad``,
``conv_weight_grad``) are called on meta tensors of the real shapes, strides and dtypes while the
autotuned kernels are replaced by a recorder, and each recorded launch is bound by the JIT
function's own binder, so pointers and integers get the divisibility and constant specialisations
that ``JITFunction.run`` gives them. Compiles go through Triton's cache (``--cache-dir`` to move it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path
from unittest import mock

BATCH = 64
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}  # fp32: TF32, where PyTorch lets cuDNN use it (the default)
KERNEL_KINDS = ("fwd", "dgrad", "wgrad")
# The driver keeps 1 KB of shared memory per block for itself on sm_80 and later.
RESERVED_SMEM_PER_BLOCK = 1024
# Registers are allocated per warp in units of 256 (8 per thread).
REG_ALLOC_UNIT = 256


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    capability: int
    gpu: str
    sms: int  # what default_split would read from the GPU
    smem_per_block: int  # the opt-in maximum of one block: Triton's max_shared_mem
    smem_per_sm: int
    regs_per_sm: int = 65536
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    tensor_core_mma: tuple = ("wgmma", "mma.sync")


TARGETS = {
    "sm_90a": Target("sm_90a", 90, "H100/H200", 132, 232_448, 228 * 1024),
    "sm_80": Target("sm_80", 80, "A100", 108, 166_912, 164 * 1024, tensor_core_mma=("mma.sync",)),
}


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    module: str
    kernel: str  # the autotuned kernel, a module global the wrapper looks up at call time
    configs: str
    pruner: str


_CONV = "vgg_toolkit.kernels.conv3x3"
_BACKWARD = "vgg_toolkit.kernels.conv3x3_backward"
KERNELS = {
    "fwd": KernelSpec(_CONV, "conv_bias_relu_kernel", "FORWARD_CONFIGS", "keep_forward"),
    "dgrad": KernelSpec(_CONV, "conv_bias_relu_kernel", "FORWARD_CONFIGS", "keep_forward"),
    "wgrad": KernelSpec(_BACKWARD, "conv_wgrad_kernel", "WGRAD_CONFIGS", "keep_wgrad"),
}


class ToolMissing(RuntimeError):
    pass


def find_tools() -> dict[str, str]:
    """Paths of ptxas and cuobjdump: Triton's own (shipped in its wheel) unless
    TRITON_PTXAS_PATH / TRITON_CUOBJDUMP_PATH name others."""
    import triton

    tools = {}
    for name in ("ptxas", "cuobjdump"):
        try:
            tools[name] = getattr(triton.knobs.nvidia, name).path
        except RuntimeError as exc:  # the knob's way of saying the binary is absent or does not run
            raise ToolMissing(f"{name} not found: {exc}") from None
    return tools


# ---------------------------------------------------------------------------------------------
# Reading the compiled code. Pure functions of text, so the tests can feed them fabricated input.

_USAGE_RE = re.compile(r"Function\s+(\S+):\s*\n\s*(REG:.*)")


def parse_resource_usage(text: str) -> dict[str, dict[str, int]]:
    """``cuobjdump --dump-resource-usage`` output -> {function: {"REG": .., "STACK": .., ...}}."""
    usage = {}
    for name, fields in _USAGE_RE.findall(text):
        usage[name] = {key: int(value) for key, value in re.findall(r"([A-Z_]+)(?:\[\d+\])?:(\d+)", fields)}
    return usage


_PTX_MMA = (("wgmma", re.compile(r"\bwgmma\.mma_async\S*")), ("mma.sync", re.compile(r"\bmma\.sync\S*")))


def mma_kind(ptx: str) -> tuple[str, str]:
    """(kind, first instruction) of the kernel's tensor-core MMA: kind is "wgmma", "mma.sync" or
    "none" (the dot became FMAs)."""
    for kind, pattern in _PTX_MMA:
        found = pattern.search(ptx)
        if found:
            return kind, found.group(0)
    return "none", ""


def _innermost_loop(lines: list[str], branch_target, is_mma) -> list[str] | None:
    """The lines of the shortest loop (a backward branch to an earlier line) that holds an MMA;
    ``branch_target(line)`` is the index of the line a branch jumps to, or None."""
    loops = []
    for end, line in enumerate(lines):
        start = branch_target(line)
        if start is not None and start <= end:
            loops.append(lines[start:end + 1])
    with_mma = [body for body in loops if any(is_mma(line) for line in body)]
    return min(with_mma, key=len) if with_mma else None


def _loads(sync: int, async_: int, tma: int) -> dict:
    verdict = "sync" if sync else "tma" if tma else "async" if async_ else "no loads"
    return {"verdict": verdict, "sync": sync, "async": async_, "tma": tma}


NO_LOOP = {"verdict": "no loop", "sync": 0, "async": 0, "tma": 0}


def main_loop_loads(ptx: str) -> dict:
    """Global loads in the main loop (the innermost PTX loop that holds an MMA): ``sync``
    (ld.global, through registers), ``async`` (cp.async) and ``tma`` (cp.async.bulk) counts, and
    a verdict: "async", "tma", "sync" (some operand is loaded synchronously), "no loop"."""
    lines = ptx.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"(\$L__\w+):", line))}

    def target(line):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", line)
        return labels.get(m.group(1)) if m else None

    body = _innermost_loop(lines, target, lambda line: mma_kind(line)[0] != "none")
    if body is None:
        return dict(NO_LOOP)
    text = "\n".join(body)
    return _loads(len(re.findall(r"\bld\.global\b", text)),
                  len(re.findall(r"\bcp\.async\.c[ag]\.shared\.global\b", text)),
                  len(re.findall(r"\bcp\.async\.bulk\b", text)))


_SASS_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+([^;]*);")


def sass_main_loop_loads(sass: str) -> dict:
    """The same reading of the SASS from ``cuobjdump -sass`` (LDG, LDGSTS and UTMALDG in the
    innermost loop with an HGMMA or HMMA): what ptxas made of the PTX."""
    code = [(int(m.group(1), 16), m.group(2).strip()) for m in map(_SASS_LINE.match, sass.splitlines()) if m]
    index = {address: i for i, (address, _) in enumerate(code)}
    texts = [text for _, text in code]

    def target(text):
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)$", text)
        return index.get(int(m.group(1), 16)) if m else None

    body = _innermost_loop(texts, target, lambda text: re.search(r"\b(HGMMA|HMMA)\.", text) is not None)
    if body is None:
        return dict(NO_LOOP)
    ops = [text.split()[1 if text.startswith("@") else 0] for text in body]
    return _loads(sum(op.startswith("LDG.") for op in ops), sum(op.startswith("LDGSTS") for op in ops),
                  sum(op.startswith("UTMALDG") for op in ops))


def sass_mma(sass: str) -> str:
    """The tensor-core instruction in the SASS: "HGMMA" (wgmma), "HMMA" (mma.sync) or "none"."""
    for op in ("HGMMA", "HMMA"):
        if re.search(rf"\b{op}\.", sass):
            return op
    return "none"


def blocks_per_sm(regs: int, warps: int, shared: int, target: Target) -> dict[str, int]:
    """Resident blocks per SM as limited by registers and by shared memory (both capped by the
    SM's warp and block limits), and the smaller of the two."""
    cap = min(target.max_warps_per_sm // warps, target.max_blocks_per_sm)
    regs_per_warp = -(-regs * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by_regs = min(cap, target.regs_per_sm // (max(regs_per_warp, REG_ALLOC_UNIT) * warps))
    by_smem = min(cap, target.smem_per_sm // (shared + RESERVED_SMEM_PER_BLOCK))
    return {"by_regs": by_regs, "by_smem": by_smem, "blocks": min(by_regs, by_smem)}


SASS_MMA = {"wgmma": "HGMMA", "mma.sync": "HMMA", "none": "none"}


def judge(row: dict, target: Target) -> tuple[list[str], list[str]]:
    """(failures, notes) of one analysed row."""
    if row.get("error"):
        return [f"compile error: {row['error']}"], []
    failures, notes = [], []
    if row["spill"]:
        failures.append(f"spills {row['spill']} B/thread (stack {row['stack']}, local {row['local']})")
    if row["smem_total"] > target.smem_per_block:
        failures.append(f"shared memory {row['smem_total']} B > {target.smem_per_block} B per block")
    if row["blocks_per_sm"] == 0:
        failures.append("not one block fits on an SM")
    if row["mma"] not in target.tensor_core_mma:
        failures.append(f"no tensor-core MMA ({row['mma']})")
    elif target.tensor_core_mma.index(row["mma"]):
        notes.append(f"{row['mma']} on {target.name}, not {target.tensor_core_mma[0]}")
    if SASS_MMA[row["mma"]] != row["sass_mma"]:
        failures.append(f"the SASS has {row['sass_mma']} where the PTX has {row['mma']}")
    loads = row["loads"]
    if loads["verdict"] not in ("async", "tma"):
        what = (f"{loads['verdict']} main-loop loads ({loads['sync']} ld.global, {loads['async']} cp.async, "
                f"{loads['tma']} TMA)")
        if row["layers"] == [1]:
            notes.append(f"{what}: allowed for layer 1 (Cin = 3)")
        else:
            failures.append(what)
    if row["sass_loads"]["verdict"] != loads["verdict"]:
        failures.append(f"the SASS main loop reads {row['sass_loads']['verdict']} "
                        f"where the PTX reads {loads['verdict']}")
    return failures, notes


# ---------------------------------------------------------------------------------------------
# Recording the real launches.

class _Recorder:
    """Stands in for an autotuned kernel: ``kernel[grid](*args, **kwargs)`` records the call."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


@contextlib.contextmanager
def _recording(module, name):
    recorder = _Recorder()
    with mock.patch.object(module, name, recorder):
        yield recorder


def _only_call(recorder, before: int, what: str):
    calls = recorder.calls[before:]
    if len(calls) != 1:
        raise RuntimeError(f"{what} launched its kernel {len(calls)} times, expected once")
    return calls[0]


def target_split(rows: int, cout: int, pixels: int, sms: int) -> int:
    """``default_split`` as it answers on a GPU with ``sms`` multiprocessors (it asks CUDA for the
    count, which this machine lacks, so it is handed a fake answer)."""
    import torch

    backward = importlib.import_module(_BACKWARD)
    props = types.SimpleNamespace(multi_processor_count=sms)
    with mock.patch.object(torch.cuda, "get_device_properties", lambda device=None: props):
        return backward.default_split(rows, cout, pixels, torch.device("cuda", 0))


@dataclasses.dataclass
class Launch:
    kind: str
    layer: int  # 1-based
    args: tuple
    kwargs: dict


def record_layer(layer: int, shape: tuple, dtype, target: Target, kinds) -> list[Launch]:
    """The kernel launches of one conv layer's forward, input gradient and weight gradient, as the
    fused conv's autograd makes them (channels_last activations, a bias, a channels_last output
    gradient, the weight gradient with its bias gradient)."""
    import torch

    conv = importlib.import_module(_CONV)
    backward = importlib.import_module(_BACKWARD)
    ks, cin, cout, hw = shape
    meta = dict(device="meta", dtype=dtype)
    x = torch.empty(BATCH, cin, hw, hw, memory_format=torch.channels_last, **meta)
    weight = torch.empty(cout, cin, ks, ks, **meta)
    bias = torch.empty(cout, **meta)
    grad_y = torch.empty(BATCH, cout, hw, hw, memory_format=torch.channels_last, **meta)
    launches = []
    with _recording(conv, KERNELS["fwd"].kernel) as recorder:
        y = conv.conv_bias_relu(x, weight, bias)
        launches.append(Launch("fwd", layer, *_only_call(recorder, 0, "conv_bias_relu")))
        backward.conv_input_grad(grad_y, y, weight)
        launches.append(Launch("dgrad", layer, *_only_call(recorder, 1, "conv_input_grad")))
    split = target_split(ks * ks * cin, cout, BATCH * hw * hw, target.sms)
    with _recording(backward, KERNELS["wgrad"].kernel) as recorder:
        backward.conv_weight_grad(x, grad_y, y, ks, True, split)
        launches.append(Launch("wgrad", layer, *_only_call(recorder, 0, "conv_weight_grad")))
    return [launch for launch in launches if launch.kind in kinds]


def prune(spec: KernelSpec, configs, args: dict, limit: int):
    """(the configs the kernel's pruner keeps for ``args`` under ``limit`` bytes of shared memory,
    {config: the pruner's shared-memory estimate in bytes}). The estimate is read by watching the
    pruner's call to ``keep_configs``; it is left out if that call changes shape."""
    import inspect

    module = importlib.import_module(spec.module)
    keep_configs = module.keep_configs
    estimates = {}

    def watched(*a, **kw):
        bound = inspect.signature(keep_configs).bind(*a, **kw).arguments
        if {"element_size", "buffer_elements"} <= bound.keys():
            for c in bound["configs"]:
                estimates[c] = bound["buffer_elements"](c) * bound["element_size"]
        return keep_configs(*a, **kw)

    with mock.patch.object(module, "keep_configs", watched):
        kept = getattr(module, spec.pruner)(list(configs), args, limit)
    return kept, estimates


# ---------------------------------------------------------------------------------------------
# Specialising and compiling.

def gpu_target(target: Target):
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", target.capability, 32)


def jit_function(kernel):
    """The JITFunction under an autotuned (or otherwise wrapped) kernel."""
    from triton.runtime.jit import JITFunction

    while not isinstance(kernel, JITFunction):
        kernel = kernel.fn
    return kernel


class Specialiser:
    """Binds a launch's arguments the way ``JITFunction.run`` does, for a target without its GPU."""

    def __init__(self, fn, target: Target):
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature

        self.fn = fn
        self.backend = make_backend(gpu_target(target))
        self.binder = create_function_from_signature(fn.signature, fn.params, self.backend)

    def __call__(self, args, kwargs, config):
        """(options, signature, constexprs, attrs) for the launch with ``config``."""
        from triton import knobs

        kwargs = {**kwargs, **config.all_kwargs()}  # as the autotuner passes a config on
        kwargs["debug"] = kwargs.get("debug", self.fn.debug) or knobs.runtime.debug
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
        bound, specialization, options = self.binder(*args, **kwargs)
        return self.fn._pack_args(self.backend, kwargs, bound, specialization, options)


def config_name(config) -> str:
    k = config.kwargs
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']}:{config.num_warps}:{config.num_stages}"


def parse_configs(text: str):
    """'128x64x64:4:3,64x64x32:4:4' (BLOCK_M x BLOCK_N x BLOCK_K : warps : stages) -> Configs."""
    import triton

    configs = []
    for item in filter(None, text.split(",")):
        match = re.fullmatch(r"(\d+)x(\d+)x(\d+):(\d+):(\d+)", item.strip())
        if not match:
            raise argparse.ArgumentTypeError(f"bad config {item!r}: want BMxBNxBK:warps:stages, e.g. 128x64x64:4:3")
        bm, bn, bk, warps, stages = map(int, match.groups())
        configs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages))
    return configs


@dataclasses.dataclass
class Job:
    """One distinct compile, and the layers whose launches it serves."""
    kind: str
    target: Target
    dtype: str
    config: object
    source: tuple  # (fn, signature, constexprs, attrs)
    options: object
    variant: tuple  # the constexprs other than the tile sizes: which code path
    layers: list
    estimate: int | None


def _conv_kernels():
    """benchmarks/conv_kernels.py, for its VGG-D shapes and its --layers syntax."""
    if "conv_kernels" not in sys.modules:
        spec = importlib.util.spec_from_file_location("conv_kernels", Path(__file__).with_name("conv_kernels.py"))
        sys.modules["conv_kernels"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["conv_kernels"]


def plan(targets, dtypes, kinds, layers, candidates, pruner_limit=None) -> list[Job]:
    """Every distinct compile of the matrix, in the order first met (target, dtype, layer, kind),
    each with the layers it serves. The pruners see each target's shared-memory limit, or
    ``pruner_limit`` where given."""
    import torch

    shapes = _conv_kernels().vgg_conv_shapes("D", 224)
    jobs: dict[tuple, Job] = {}
    for target in targets:
        specialisers = {}
        for dtype in dtypes:
            for layer in layers:
                for launch in record_layer(layer, shapes[layer - 1], getattr(torch, DTYPES[dtype]), target, kinds):
                    spec = KERNELS[launch.kind]
                    module = importlib.import_module(spec.module)
                    fn = jit_function(getattr(module, spec.kernel))
                    specialise = specialisers.setdefault(fn, Specialiser(fn, target))
                    named = {**dict(zip(fn.arg_names, launch.args)), **launch.kwargs}
                    kept, estimates = prune(spec, candidates[launch.kind], named, pruner_limit or target.smem_per_block)
                    for config in kept:
                        options, signature, constexprs, attrs = specialise(launch.args, launch.kwargs, config)
                        names = [fn.arg_names[path[0]] for path in constexprs]
                        variant = tuple((n, repr(v)) for n, v in zip(names, constexprs.values())
                                        if n not in config.kwargs)
                        key = (launch.kind, target.name, fn.fn.__qualname__, tuple(signature.items()),
                               tuple((p, repr(v)) for p, v in constexprs.items()),
                               tuple((p, repr(v)) for p, v in attrs.items()), repr(options))
                        if key in jobs:
                            jobs[key].layers.append(launch.layer)
                        else:
                            jobs[key] = Job(launch.kind, target, dtype, config, (fn, signature, constexprs, attrs),
                                            options, variant, [launch.layer], estimates.get(config))
    return list(jobs.values())


def quick_subset(jobs: list[Job]) -> list[Job]:
    """One job per (target, dtype, kind, config, code path): the one that serves the most layers
    (register use differs between specialisations, and the deep layers' is the common case)."""
    chosen = {}
    for job in jobs:
        key = (job.target.name, job.dtype, job.kind, config_name(job.config), job.variant)
        if key not in chosen or len(job.layers) > len(chosen[key].layers):
            chosen[key] = job
    keep = {id(job) for job in chosen.values()}
    return [job for job in jobs if id(job) in keep]


def _tool(tools, name, *args) -> str:
    return subprocess.run([tools[name], *args], check=True, capture_output=True, text=True).stdout


def compile_and_analyse(job: Job, tools: dict, scratch: Path, dump: Path | None) -> dict:
    import triton
    from triton.compiler import ASTSource

    fn, signature, constexprs, attrs = job.source
    k = job.config.kwargs
    row = {"kernel": job.kind, "layers": job.layers, "dtype": job.dtype, "target": job.target.name,
           "block_m": k["BLOCK_M"], "block_n": k["BLOCK_N"], "block_k": k["BLOCK_K"],
           "warps": job.config.num_warps, "stages": job.config.num_stages, "pruner_estimate": job.estimate,
           "error": None}
    names = fn.arg_names
    row["specialised"] = {
        "divisible_by_16": [names[p[0]] for p, a in attrs.items() if ["tt.divisibility", 16] in a],
        # integer arguments equal to 1, which the binder turns into constants
        "constants": {names[p[0]]: v for p, v in constexprs.items() if not fn.params[p[0]].is_constexpr}}
    start = time.perf_counter()
    try:
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=gpu_target(job.target), options=job.options.__dict__)
    except Exception as exc:  # a failed compile is a finding, not the end of the run
        # Triton's CompilationError starts with the source position and ends with the cause.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
        row["error"] = f"{type(exc).__name__}: " + " ".join(dict.fromkeys([lines[0], lines[-1]]))
        row["error_detail"] = str(exc)
        row["compile_s"] = round(time.perf_counter() - start, 2)
        return row
    row["compile_s"] = round(time.perf_counter() - start, 2)
    ptx = compiled.asm["ptx"]
    cubin = scratch / f"{compiled.metadata.hash}.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    sass = _tool(tools, "cuobjdump", "--dump-resource-usage", "-sass", str(cubin))  # both in one run
    use = parse_resource_usage(sass)[compiled.metadata.name]
    mma, mma_instr = mma_kind(ptx)
    row.update(regs=use["REG"], stack=use["STACK"], local=use["LOCAL"], spill=use["STACK"] + use["LOCAL"],
               shared=compiled.metadata.shared, static_shared=use.get("SHARED", 0),
               mma=mma, mma_instr=mma_instr, sass_mma=sass_mma(sass),
               loads=main_loop_loads(ptx), sass_loads=sass_main_loop_loads(sass))
    row["smem_total"] = row["shared"] + row["static_shared"]
    occupancy = blocks_per_sm(row["regs"], row["warps"], row["smem_total"], job.target)
    row.update(blocks_per_sm=occupancy["blocks"], blocks_by_regs=occupancy["by_regs"],
               blocks_by_smem=occupancy["by_smem"])
    if dump is not None:
        stem = f"{job.target.name}_{job.dtype}_{job.kind}_L{_layer_text(job.layers).replace(',', '_')}_" \
               f"{config_name(job.config).replace(':', '_')}"
        for ext in ("ttgir", "ptx"):
            (dump / f"{stem}.{ext}").write_text(compiled.asm[ext])
        (dump / f"{stem}.sass").write_text(sass)
    return row


# ---------------------------------------------------------------------------------------------
# Output.

def _layer_text(layers) -> str:
    """[2, 3, 4, 7] -> '2-4,7'."""
    parts, run = [], []
    for layer in sorted(set(layers)):
        if run and layer != run[-1] + 1:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}")
            run = []
        run.append(layer)
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}")
    return ",".join(parts)


COLUMNS = ("kernel", "layers", "dtype", "target", "BMxBNxBK", "warps", "stages", "regs", "spill B",
           "smem B (+static)", "pruner est B", "blocks/SM (regs,smem)", "MMA", "loads", "result")


def table_cells(row: dict) -> list[str]:
    head = [row["kernel"], _layer_text(row["layers"]), row["dtype"], row["target"],
            f"{row['block_m']}x{row['block_n']}x{row['block_k']}", str(row["warps"]), str(row["stages"])]
    if row.get("error"):
        return head + ["-"] * 7 + ["FAIL: " + "; ".join(row["failures"])]
    loads = row["loads"]
    load_text = loads["verdict"] + (f" ({loads['sync']} ld.global)" if loads["sync"] else "")
    result = "FAIL: " + "; ".join(row["failures"]) if row["failures"] else "ok"
    if row["notes"]:
        result += " (" + "; ".join(row["notes"]) + ")"
    estimate = "?" if row["pruner_estimate"] is None else str(row["pruner_estimate"])
    smem = f"{row['shared']}" + (f"+{row['static_shared']}" if row["static_shared"] else "")
    return head + [str(row["regs"]), str(row["spill"]), smem, estimate,
                   f"{row['blocks_per_sm']} ({row['blocks_by_regs']},{row['blocks_by_smem']})",
                   row["mma"], load_text, result]


def format_table(rows: list[dict]) -> str:
    lines = [list(COLUMNS)] + [table_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1]
                     for line in lines)


def _pick(text: str, known, what: str) -> list:
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    bad = [item for item in chosen if item not in known]
    if bad or not chosen:
        raise argparse.ArgumentTypeError(f"unknown {what} {bad or text!r}; known: {', '.join(known)}")
    return chosen


def parse_args(argv=None) -> argparse.Namespace:
    intro, details = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(description=intro, epilog=details,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", help=f"comma-separated, of {', '.join(TARGETS)} (default: all; --quick: sm_90a)")
    p.add_argument("--dtypes", help=f"comma-separated, of {', '.join(DTYPES)} (default: all; --quick: bf16)")
    p.add_argument("--kernels", default=",".join(KERNEL_KINDS), help="comma-separated, of fwd, dgrad, wgrad")
    p.add_argument("--layers", default="all", help="VGG-D conv layers: all, 3, 1-7 or 1,2,13")
    p.add_argument("--quick", action="store_true",
                   help="compile each (kernel, config, code path) once per target and dtype, "
                        "for sm_90a and bf16 unless --targets / --dtypes say otherwise")
    p.add_argument("--fwd-configs",
                   help="candidates for fwd and dgrad instead of FORWARD_CONFIGS: BMxBNxBK:warps:stages,...")
    p.add_argument("--dgrad-configs", help="candidates for dgrad alone (default: those of fwd)")
    p.add_argument("--wgrad-configs", help="candidates for wgrad instead of WGRAD_CONFIGS")
    p.add_argument("--pruner-limit", type=int, metavar="BYTES",
                   help="the shared-memory limit the pruners see (default: the target's); a large one "
                        "compiles every config within the pruners' tile caps, to measure what they drop")
    p.add_argument("--json", type=Path, help="write every row (and the failures) to this JSON file")
    p.add_argument("--dump", type=Path, help="write each kernel's TTGIR, PTX and SASS into this folder")
    p.add_argument("--cache-dir", type=Path, help="Triton's compile cache (default: Triton's, ~/.triton/cache)")
    args = p.parse_args(argv)
    try:
        args.target_list = _pick(args.targets or ("sm_90a" if args.quick else ",".join(TARGETS)), TARGETS, "target")
        args.dtype_list = _pick(args.dtypes or ("bf16" if args.quick else ",".join(DTYPES)), DTYPES, "dtype")
        args.kind_list = _pick(args.kernels, KERNEL_KINDS, "kernel")
        args.layer_list = [i + 1 for i in _conv_kernels()._layer_set(args.layers, 13)]
        args.fwd_config_list = parse_configs(args.fwd_configs) if args.fwd_configs else None
        args.dgrad_config_list = parse_configs(args.dgrad_configs) if args.dgrad_configs else None
        args.wgrad_config_list = parse_configs(args.wgrad_configs) if args.wgrad_configs else None
    except (ValueError, argparse.ArgumentTypeError) as exc:
        p.error(str(exc))
    return args


def run_check(args) -> dict:
    """Plan, compile and judge; returns {"rows": [...], "failures": [...], ...}."""
    os.environ.pop("TRITON_INTERPRET", None)
    # Triton 3.9 announces, once per process, that FP fusion stays on by default: as at run time.
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    conv = importlib.import_module(_CONV)
    if conv.INTERPRET:
        raise RuntimeError("the kernels were imported under TRITON_INTERPRET=1 and cannot be compiled: "
                           "run this check in a process without it")
    tools = find_tools()
    if args.cache_dir:
        import triton
        triton.knobs.cache.dir = str(args.cache_dir)
    given = {"fwd": args.fwd_config_list, "dgrad": args.dgrad_config_list or args.fwd_config_list,
             "wgrad": args.wgrad_config_list}
    candidates = {kind: given[kind] or list(getattr(importlib.import_module(spec.module), spec.configs))
                  for kind, spec in KERNELS.items()}
    started = time.perf_counter()
    jobs = plan([TARGETS[t] for t in args.target_list], args.dtype_list, args.kind_list, args.layer_list,
                candidates, args.pruner_limit)
    kept = {kind: sorted({config_name(job.config) for job in jobs if job.kind == kind}) for kind in args.kind_list}
    if args.quick:
        jobs = quick_subset(jobs)
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kernel_compile_") as scratch:
        for number, job in enumerate(jobs, 1):
            row = compile_and_analyse(job, tools, Path(scratch), args.dump)
            row["failures"], row["notes"] = judge(row, job.target)
            rows.append(row)
            print(f"[{number}/{len(jobs)}] {job.target.name} {job.dtype} {job.kind} layers {_layer_text(job.layers)} "
                  f"{config_name(job.config)}: {'FAIL' if row['failures'] else 'ok'} ({row['compile_s']} s)",
                  file=sys.stderr, flush=True)
    import triton
    return {"triton": triton.__version__, "seconds": round(time.perf_counter() - started, 1),
            "quick": args.quick, "kept": kept, "rows": rows,
            "failures": [f"{' '.join(table_cells(r)[:7])}: {'; '.join(r['failures'])}" for r in rows if r["failures"]]}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run_check(args)
    except ToolMissing as exc:
        print(f"kernel_compile.py: {exc}", file=sys.stderr)
        return 2
    for name in args.target_list:
        t = TARGETS[name]
        print(f"# {name}: {t.gpu}, {t.sms} SMs, {t.smem_per_block} B shared memory per block, "
              f"{t.smem_per_sm} per SM, {t.regs_per_sm} registers per SM")
    print(format_table(result["rows"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(f"\n{len(result['rows'])} kernels compiled in {result['seconds']} s, {len(result['failures'])} failing")
    for failure in result["failures"]:
        print(f"  FAIL {failure}")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
