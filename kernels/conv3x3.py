"""Convolution (3x3 padding 1, or 1x1 padding 0; stride 1) + bias + ReLU as an implicit GEMM in
Triton, beside its pure-PyTorch reference.

GEMM view: rows are output pixels (n, h, w), columns are output channels, and the reduction runs
over (tap, input channel), tap = (kh, kw). Activations are read through their strides, so any
layout works, but NHWC (channels_last) is the one that gives contiguous channel loads; the output
is always written channels_last. The weight is packed per call into a [KS*KS*Cin, Cout] matrix (at
most a few MB, against activations of hundreds) so that its tiles are contiguous along Cout.

The same kernel computes the input gradient of the backward pass: a convolution of the masked
output gradient with the flipped, transposed weights.

Precision: fp32 inputs use TF32 tensor cores when PyTorch would let cuDNN's conv use them
(``torch.backends.cudnn.conv.fp32_precision``, on by default) and full fp32 otherwise; bf16 / fp16
accumulate in fp32; fp64 (used for gradcheck) accumulates in fp64 and runs only in Triton's
interpreter.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from einops import rearrange

# How the kernels below were built: Triton decides when a kernel is defined (at import) whether
# it is compiled or interpreted, so later changes to TRITON_INTERPRET do not apply to them.
INTERPRET = bool(triton.knobs.runtime.interpret)

# Offsets inside one image are 32-bit in the kernels (only the batch offset is 64-bit).
MAX_IMAGE_NUMEL = 2**31 - 1

KERNEL_SIZES = {3: 1, 1: 0}  # kernel size -> the padding that keeps H and W

# Below this many input channels a tap's channels fill too little of a K tile, so the reduction
# runs over the flattened (tap, channel) index instead (the first layer has Cin = 3: K = 27).
FLAT_K_BELOW = 16


def conv_relu_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """What the fused forward kernel computes."""
    return F.relu(F.conv2d(x, weight, bias, padding=KERNEL_SIZES[weight.shape[-1]]))


def _config(bm, bn, bk, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


# The interpreter runs every program in Python, at a cost per operation whatever the tile size,
# so it gets no tuning: small tiles for small problems (the unit tests' shapes then cross tile
# borders in M, N and K), large ones from INTERPRETER_BIG_M pixels on (whole tiny networks).
INTERPRETER_CONFIGS = (_config(32, 16, 16, 4, 1), _config(128, 32, 32, 4, 1))
INTERPRETER_BIG_M = 128


def interpreter_pick(configs, pixels):
    return [configs[pixels >= INTERPRETER_BIG_M]]


# The GPU's candidates; the pruners below keep those that fit a given call and device. Compiled ahead
# of time for sm_90a and sm_80 (benchmarks/kernel_compile.py), none spills registers on the VGG-D
# shapes: the 4-warp versions of the 128- and 256-row tiles did (ptxas capped them at 168 or 255
# registers), so those run 8 warps.
FORWARD_CONFIGS = (
    _config(128, 128, 64, 8, 3),
    _config(128, 64, 64, 8, 3),
    _config(64, 128, 64, 8, 3),
    _config(128, 256, 64, 8, 3),
    _config(256, 128, 64, 8, 3),
    _config(128, 128, 32, 8, 4),
    _config(256, 64, 32, 8, 4),
    _config(128, 64, 32, 8, 4),
    _config(64, 64, 32, 4, 4),
)
# SM90 kernels hold 1 KB of static shared memory besides their pipeline buffers; counted everywhere.
STATIC_SHARED = 1024


def _forward_configs():
    return list(INTERPRETER_CONFIGS if INTERPRET else FORWARD_CONFIGS)


@functools.lru_cache(maxsize=None)
def _shared_memory_limit(device_index: int) -> int:
    return triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"]


def device_shared_memory(tensor: torch.Tensor) -> int:
    index = tensor.device.index if tensor.device.index is not None else torch.cuda.current_device()
    return _shared_memory_limit(index)


def keep_configs(configs, element_size: int, limit: int, caps: dict, buffer_elements) -> list:
    """The configs whose tiles are no wider than ``caps`` (Cout = 64 never needs BLOCK_N = 256)
    and whose pipeline buffers, ``buffer_elements(config)`` elements of ``element_size`` bytes, fit in
    ``limit`` bytes of shared memory; never none. The buffer counts are those the compiled kernels
    show on sm_90a (exact there) and bound them on sm_80, which keeps one buffer fewer."""
    kept = [c for c in configs
            if all(c.kwargs[name] <= cap for name, cap in caps.items())
            and buffer_elements(c) * element_size <= limit]
    return kept or [min(configs, key=buffer_elements)]


def keep_forward(configs, args: dict, limit: int) -> list:
    """The forward (or input-gradient) configs worth trying for the call ``args`` (the kernel's
    arguments by name) on a device with ``limit`` bytes of shared memory per block."""
    k = args["KS"] ** 2 * args["CIN"] if args["FLAT_K"] else args["CIN"]
    caps = {"BLOCK_N": max(16, triton.next_power_of_2(args["COUT"])),
            "BLOCK_K": max(16, triton.next_power_of_2(k))}
    if args["FLAT_K"]:  # the gathered first layer: more than 16 elements per thread spill
        configs = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_K"] <= 512 * c.num_warps] or configs
    if not args["RELU"]:  # the input gradient: this tile compiled to 8 B of spills on sm_80 (bf16)
        configs = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"])
                   != (128, 64, 64)] or configs
    return keep_configs(configs, args["x_ptr"].element_size(), limit - STATIC_SHARED, caps,
                        lambda c: c.num_stages * (c.kwargs["BLOCK_M"] + c.kwargs["BLOCK_N"]) * c.kwargs["BLOCK_K"])


def _prune_forward(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}  # the autotuner passes keyword arguments apart
    if INTERPRET:
        return interpreter_pick(configs, args["NB"] * args["H"] * args["W"])
    return keep_forward(configs, args, device_shared_memory(args["x_ptr"]))


@triton.jit
def mma(acc, a, b, WIDEN: tl.constexpr, PRECISION: tl.constexpr):
    """acc += a @ b. WIDEN converts bf16 operands to fp32 first (exact): Triton's interpreter
    multiplies the raw bits of bf16 operands in tl.dot (triton-lang/triton#11584), so WIDEN is set
    only when interpreting; on the GPU the bf16 tensor-core dot runs."""
    if WIDEN:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


def pixel_bucket(pixels: int) -> int:
    """The autotuning key's measure of a call's size: its output pixels, to the next power of two.
    The best tiles depend on the channels and roughly on the pixel count, not on the exact image size,
    so dense evaluation (an image size after another) tunes once per bucket, not once per size."""
    return triton.next_power_of_2(max(1, pixels))


# Tuning results are kept on disk (Triton's cache), so a new process does not time the configs again.
@triton.autotune(
    configs=_forward_configs(),
    key=["PIX_BUCKET", "CIN", "COUT", "KS"],
    prune_configs_by={"early_config_prune": _prune_forward},
    cache_results=True,
)
@triton.jit
def conv_bias_relu_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    NB, H, W, CIN, COUT, PIX_BUCKET,
    sxn, sxh, sxw, sxc,
    syn, syh, syw, syc,
    KS: tl.constexpr, FLAT_K: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
    WIDEN: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Output-channel tiles vary fastest so programs that run together share the input tile.
    pid = tl.program_id(0)
    num_n = tl.cdiv(COUT, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    PAD: tl.constexpr = KS // 2

    hw = H * W
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < NB * hw
    n_ok = offs_n < COUT
    img = (offs_m // hw).to(tl.int64)
    oh = (offs_m % hw) // W
    ow = offs_m % W
    x_img = x_ptr + img * sxn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    if FLAT_K:
        k_total = KS * KS * CIN
        for k0 in range(0, k_total, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < k_total
            tap = offs_k // CIN
            ch = offs_k % CIN
            ih = oh[:, None] + (tap // KS - PAD)[None, :]
            iw = ow[:, None] + (tap % KS - PAD)[None, :]
            ok = m_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(x_img[:, None] + ih * sxh + iw * sxw + ch[None, :] * sxc, mask=ok, other=0.0)
            b = tl.load(w_ptr + offs_k[:, None] * COUT + offs_n[None, :],
                        mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc = mma(acc, a, b, WIDEN, PRECISION)
    else:
        # One flat loop over (tap, channel block) so the compiler pipelines across taps too.
        c_blocks = tl.cdiv(CIN, BLOCK_K)
        for it in range(0, KS * KS * c_blocks):
            tap = it // c_blocks
            c0 = (it % c_blocks) * BLOCK_K
            ih = oh + (tap // KS - PAD)
            iw = ow + (tap % KS - PAD)
            row_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            offs_c = c0 + tl.arange(0, BLOCK_K)
            c_ok = offs_c < CIN
            ok = row_ok[:, None] & c_ok[None, :]
            a = tl.load(x_img[:, None] + (ih * sxh + iw * sxw)[:, None] + offs_c[None, :] * sxc,
                        mask=ok, other=0.0)
            b = tl.load(w_ptr + (tap * CIN + offs_c)[:, None] * COUT + offs_n[None, :],
                        mask=c_ok[:, None] & n_ok[None, :], other=0.0)
            acc = mma(acc, a, b, WIDEN, PRECISION)

    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(ACC)[None, :]
    if RELU:
        # NaN stays NaN, as in torch.relu.
        acc = tl.maximum(acc, tl.zeros_like(acc), propagate_nan=tl.PropagateNan.ALL)
    y_row = img * syn + oh * syh + ow * syw
    tl.store(y_ptr + y_row[:, None] + offs_n[None, :] * syc, acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def conv_fp32_precision() -> str:
    """"tf32" or "ieee": what PyTorch lets cuDNN's conv do with fp32, read through the settings PyTorch
    2.9 introduced (a conv's own, else cuDNN's, else the global one). Reading the legacy
    ``cudnn.allow_tf32`` instead raises once a program has used the new settings."""
    backends = torch.backends
    conv = getattr(getattr(backends.cudnn, "conv", None), "fp32_precision", None)
    if conv is None:  # before PyTorch 2.9
        return "tf32" if backends.cudnn.allow_tf32 else "ieee"
    for value in (conv, backends.cudnn.fp32_precision, backends.fp32_precision):
        if value != "none":
            return "tf32" if value == "tf32" else "ieee"
    return "ieee"


def dot_settings(dtype: torch.dtype) -> dict:
    """The accumulator, dot precision and bf16 widening for operands of ``dtype``."""
    if dtype == torch.float64:
        return dict(ACC=tl.float64, PRECISION="ieee", WIDEN=False)
    precision = "tf32" if dtype == torch.float32 and conv_fp32_precision() == "tf32" else "ieee"
    return dict(ACC=tl.float32, PRECISION=precision, WIDEN=INTERPRET and dtype == torch.bfloat16)


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """[Cout, Cin, KS, KS] -> [KS*KS*Cin, Cout]: row (tap, cin), contiguous along Cout."""
    return rearrange(weight, "co ci kh kw -> (kh kw ci) co").contiguous()


def implicit_gemm_conv(x: torch.Tensor, packed: torch.Tensor, ks: int, bias: torch.Tensor | None,
                       relu: bool) -> torch.Tensor:
    """Run the kernel: ``x`` [N, Cin, H, W] (any strides), ``packed`` from :func:`pack_weight`
    (or its backward counterpart). Returns [N, Cout, H, W] in channels_last, dtype of ``x``."""
    nb, cin, h, w = x.shape
    cout = packed.shape[1]
    y = torch.empty((nb, cout, h, w), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    grid = lambda meta: (triton.cdiv(nb * h * w, meta["BLOCK_M"]) * triton.cdiv(cout, meta["BLOCK_N"]),)
    conv_bias_relu_kernel[grid](
        x, packed, bias if bias is not None else packed, y,
        nb, h, w, cin, cout, pixel_bucket(nb * h * w),
        x.stride(0), x.stride(2), x.stride(3), x.stride(1),
        y.stride(0), y.stride(2), y.stride(3), y.stride(1),
        KS=ks, FLAT_K=cin < FLAT_K_BELOW, HAS_BIAS=bias is not None, RELU=relu,
        **dot_settings(x.dtype),
    )
    return y


def conv_bias_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """ReLU(conv(x, weight) + bias) for a 3x3 (padding 1) or 1x1 (padding 0) weight; the caller
    has checked the shapes and dtypes (see ``fused_conv.unsupported_reason``)."""
    return implicit_gemm_conv(x, pack_weight(weight), weight.shape[-1], bias, relu=True)
