"""Backward of ReLU(conv(x, W) + b) in Triton, beside its pure-PyTorch reference.

With ``g = grad_y where y > 0 or y is NaN, else 0`` (the masked output gradient, as torch.relu masks it):
- input gradient: the convolution of ``g`` with the flipped, transposed weights, run by the
  forward kernel of ``conv3x3.py`` on ``g`` formed first. Applying the mask inside that kernel
  instead (loading ``grad_y`` and ``y`` tile by tile) needed more registers and shared memory for
  every config, and spilled for three of them, in the compiled code for sm_90a and sm_80; one pass
  forming ``g`` costs a read of two tensors and a write of one;
- weight gradient: a GEMM [KS*KS*Cin, N*H*W] x [N*H*W, Cout] whose rows gather the shifted input,
  split along N*H*W so that the early layers (few rows, millions of pixels) fill the GPU; each
  split writes its own partial sum, and the few partials are added by ``torch.sum`` (deterministic,
  no atomics);
- bias gradient: the column sums of ``g``, taken in the same kernel from the tiles it loads.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from einops import rearrange

from .conv3x3 import (INTERPRET, KERNEL_SIZES, STATIC_SHARED, _config, device_shared_memory, dot_settings,
                      implicit_gemm_conv, interpreter_pick, keep_configs, mma, pixel_bucket)


def conv_relu_backward_reference(x, weight, y, grad_y, need_bias: bool = True):
    """(dx, dweight, dbias) written the way the kernels compute them, with ATen ops."""
    ks = weight.shape[-1]
    pad = KERNEL_SIZES[ks]
    g = masked_grad(grad_y, y)
    # Flipping the taps and swapping Cin/Cout turns the forward conv into its adjoint.
    dx = torch.nn.functional.conv2d(g, weight.flip(2, 3).transpose(0, 1), padding=ks - 1 - pad)
    dw = torch.nn.grad.conv2d_weight(x, weight.shape, g, padding=pad)
    db = g.sum((0, 2, 3)) if need_bias else None
    return dx, dw, db


# Rows x Cout x pixels; in the interpreter the pixel reduction is the long loop of a whole tiny network.
# None spills on the VGG-D shapes for sm_90a or sm_80 (benchmarks/kernel_compile.py): 8 warps for the
# larger tiles, and no 128x128x64 (it spilled on sm_80 at any stage count).
WGRAD_CONFIGS = (
    _config(128, 128, 32, 8, 4),
    _config(128, 64, 64, 8, 4),
    _config(64, 128, 64, 8, 4),
    _config(64, 64, 64, 8, 4),
    _config(32, 64, 32, 4, 4),
)
WGRAD_INTERPRETER_CONFIGS = (_config(32, 16, 16, 4, 1), _config(32, 32, 128, 4, 1))


def _wgrad_configs():
    return list(WGRAD_INTERPRETER_CONFIGS if INTERPRET else WGRAD_CONFIGS)


def keep_wgrad(configs, args: dict, limit: int) -> list:
    """The weight-gradient configs worth trying for the call ``args`` on a device with ``limit``
    bytes of shared memory per block."""
    caps = {"BLOCK_M": max(16, triton.next_power_of_2(args["KS"] ** 2 * args["CIN"])),
            "BLOCK_N": max(16, triton.next_power_of_2(args["COUT"]))}
    # The input tile per stage; the output gradient and ReLU output tiles, masked in registers, one
    # buffer fewer each (and one more tile for the masked operand of the MMA).
    return keep_configs(configs, args["x_ptr"].element_size(), limit - STATIC_SHARED, caps,
                        lambda c: (c.num_stages * c.kwargs["BLOCK_M"] + (2 * c.num_stages - 1) * c.kwargs["BLOCK_N"])
                        * c.kwargs["BLOCK_K"])


def _prune_wgrad(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}  # the autotuner passes keyword arguments apart
    if INTERPRET:
        return interpreter_pick(configs, args["NB"] * args["H"] * args["W"])
    return keep_wgrad(configs, args, device_shared_memory(args["x_ptr"]))


# The partial sums are written, not accumulated, so the autotuner may rerun the kernel freely.
# Keyed like the forward: by channels, kernel size and a bucket of the pixels each split reduces over.
@triton.autotune(
    configs=_wgrad_configs(),
    key=["PIX_BUCKET", "CIN", "COUT", "KS"],
    prune_configs_by={"early_config_prune": _prune_wgrad},
    cache_results=True,
)
@triton.jit
def conv_wgrad_kernel(
    x_ptr, gy_ptr, y_ptr, dw_ptr, db_ptr,
    NB, H, W, CIN, COUT, P_SPLIT, PIX_BUCKET,
    sxn, sxh, sxw, sxc,
    sgn, sgh, sgw, sgc,
    syn, syh, syw, syc,
    KS: tl.constexpr, HAS_BIAS: tl.constexpr, WIDEN: tl.constexpr, ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    num_n = tl.cdiv(COUT, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    PAD: tl.constexpr = KS // 2
    rows = KS * KS * CIN

    # Rows are (tap, input channel); their shifts are fixed for the whole loop.
    offs_r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    r_ok = offs_r < rows
    tap = offs_r // CIN
    ch = offs_r % CIN
    dh = tap // KS - PAD
    dw = tap % KS - PAD
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < COUT

    hw = H * W
    p_begin = split * P_SPLIT
    p_end = tl.minimum(p_begin + P_SPLIT, NB * hw)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    bias_acc = tl.zeros((BLOCK_N,), dtype=ACC)
    for p0 in range(p_begin, p_end, BLOCK_K):
        offs_p = p0 + tl.arange(0, BLOCK_K)
        p_ok = offs_p < p_end
        img = (offs_p // hw).to(tl.int64)
        oh = (offs_p % hw) // W
        ow = offs_p % W
        # Masked output-gradient tile [pixels, Cout].
        gk = p_ok[:, None] & n_ok[None, :]
        gy = tl.load(gy_ptr + (img * sgn + oh * sgh + ow * sgw)[:, None] + offs_n[None, :] * sgc, mask=gk, other=0.0)
        yv = tl.load(y_ptr + (img * syn + oh * syh + ow * syw)[:, None] + offs_n[None, :] * syc, mask=gk, other=0.0)
        g = tl.where(yv <= 0, tl.zeros_like(gy), gy)  # NaN passes, as in torch.relu's backward
        # Shifted-input tile [(tap, channel), pixels].
        ih = oh[None, :] + dh[:, None]
        iw = ow[None, :] + dw[:, None]
        ok = r_ok[:, None] & p_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(x_ptr + img[None, :] * sxn + ih * sxh + iw * sxw + ch[:, None] * sxc, mask=ok, other=0.0)
        acc = mma(acc, a, g, WIDEN, PRECISION)
        if HAS_BIAS:
            if pid_m == 0:
                bias_acc += tl.sum(g.to(ACC), axis=0)

    out = dw_ptr + split.to(tl.int64) * rows * COUT
    tl.store(out + offs_r[:, None] * COUT + offs_n[None, :], acc, mask=r_ok[:, None] & n_ok[None, :])
    if HAS_BIAS:
        if pid_m == 0:
            tl.store(db_ptr + split * COUT + offs_n, bias_acc, mask=n_ok)


# Splits start on multiples of the largest BLOCK_K of the GPU configs above, so on tile borders
# (the interpreter keeps the unit tests' small shapes splittable).
PIXEL_STEP = 16 if INTERPRET else 64


def default_split(rows: int, cout: int, pixels: int, device: torch.device) -> int:
    """How many pieces to cut the pixel reduction into: enough 128x128 tiles for two waves of the
    GPU's multiprocessors, never a piece under 4096 pixels."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    tiles = triton.cdiv(rows, 128) * triton.cdiv(cout, 128)
    return max(1, min(triton.cdiv(2 * sms, tiles), pixels // 4096))


def conv_weight_grad(x, grad_y, y, ks: int, need_bias: bool, split: int | None = None):
    """(dweight [Cout, Cin, KS, KS], dbias [Cout] or None), in the dtype of ``x``."""
    nb, cin, h, w = x.shape
    cout = y.shape[1]
    rows, pixels = ks * ks * cin, nb * h * w
    if split is None:
        split = default_split(rows, cout, pixels, x.device)
    # Every split but the last covers the same whole number of pixel steps, so each starts on a
    # tile boundary.
    p_split = triton.cdiv(triton.cdiv(pixels, split), PIXEL_STEP) * PIXEL_STEP
    split = triton.cdiv(pixels, p_split)
    settings = dot_settings(x.dtype)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    dw = torch.empty((split, rows, cout), device=x.device, dtype=acc_dtype)
    db = torch.empty((split, cout), device=x.device, dtype=acc_dtype) if need_bias else dw
    grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]) * triton.cdiv(cout, meta["BLOCK_N"]), split)
    conv_wgrad_kernel[grid](
        x, grad_y, y, dw, db,
        nb, h, w, cin, cout, p_split, pixel_bucket(p_split),
        x.stride(0), x.stride(2), x.stride(3), x.stride(1),
        grad_y.stride(0), grad_y.stride(2), grad_y.stride(3), grad_y.stride(1),
        y.stride(0), y.stride(2), y.stride(3), y.stride(1),
        KS=ks, HAS_BIAS=need_bias, **settings,
    )
    dweight = dw.sum(0) if split > 1 else dw[0]
    dweight = rearrange(dweight, "(kh kw ci) co -> co ci kh kw", kh=ks, kw=ks).to(x.dtype).contiguous()
    dbias = (db.sum(0) if split > 1 else db[0]).to(x.dtype) if need_bias else None
    return dweight, dbias


def pack_weight_transposed(weight: torch.Tensor) -> torch.Tensor:
    """The flipped, transposed weight packed as the forward kernel wants it: [KS*KS*Cout, Cin]
    with row (tap, cout) holding W[cout, :, KS-1-kh, KS-1-kw]."""
    return rearrange(weight.flip(2, 3), "co ci kh kw -> (kh kw co) ci").contiguous()


def masked_grad(grad_y: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``grad_y`` where the ReLU passed it: zero where ``y <= 0``; a NaN output passes, as in torch.relu."""
    return torch.where(y <= 0, torch.zeros((), dtype=grad_y.dtype, device=grad_y.device), grad_y)


def conv_input_grad(grad_y, y, weight):
    """dx [N, Cin, H, W] (channels_last), the 3x3 (or 1x1) conv of the masked ``grad_y``."""
    g = masked_grad(grad_y, y).contiguous(memory_format=torch.channels_last)
    return implicit_gemm_conv(g, pack_weight_transposed(weight), weight.shape[-1], None, relu=False)
