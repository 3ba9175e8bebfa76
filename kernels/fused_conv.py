"""The fused conv + bias + ReLU as PyTorch operators with autograd and an nn.Module, the ATen fallback for
what the kernels do not cover, the per-shape choice of ``auto``, and the swap of conv+ReLU pairs
in any module tree."""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from torch import nn

from .conv3x3 import INTERPRET, KERNEL_SIZES, MAX_IMAGE_NUMEL, conv_bias_relu, conv_relu_reference
from .conv3x3_backward import conv_input_grad, conv_relu_backward_reference, conv_weight_grad

BACKENDS = ("torch", "triton", "auto")
GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_WARNED: set[str] = set()
# auto: (device, dtype, weight shape, bias, with backward, pixel bucket) -> "triton" | "torch"
AUTO_CHOICES: dict[tuple, str] = {}


def _describe(x: torch.Tensor, weight: torch.Tensor) -> str:
    return f"input {tuple(x.shape)} {str(x.dtype).replace('torch.', '')}, weight {tuple(weight.shape)}"


def unsupported_reason(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str | None:
    """Why the Triton kernels cannot run this call, or None when they can."""
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[-1] not in KERNEL_SIZES \
            or weight.shape[-2] != weight.shape[-1] or x.shape[1] != weight.shape[1]:
        return "only 3x3 (padding 1) and 1x1 (padding 0) convolutions of a batched 4-d input are fused"
    if x.device.type != "cuda" and not INTERPRET:
        return f"Triton needs CUDA (or TRITON_INTERPRET=1), and the input is on {x.device}"
    dtypes = GPU_DTYPES + ((torch.float64,) if INTERPRET else ())
    if x.dtype not in dtypes:
        return f"dtype {x.dtype} is not supported (supported: {', '.join(str(d) for d in dtypes)})"
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        return "input, weight and bias dtypes differ"
    if x.numel() == 0:
        return "the input is empty"
    # Offsets within one image (for any strides of x) and pixel indices are 32-bit in the kernels.
    span = sum((size - 1) * stride for size, stride in zip(x.shape[1:], x.stride()[1:])) + 1
    n, _, h, w = x.shape
    if max(span, weight.shape[0] * h * w, n * h * w) > MAX_IMAGE_NUMEL:
        return "the tensors are too large for the kernels' 32-bit offsets"
    return None


def _warn_fallback(reason: str, x: torch.Tensor, weight: torch.Tensor, where: str) -> None:
    message = f"vggtk triton conv backend: {where} of {_describe(x, weight)} runs in ATen: {reason}"
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


# The kernels as PyTorch operators: torch.compile sees one op per call (and its backward ops), not
# the Python wrappers and the autotuner, and the fake implementations give it the output shapes.
@torch.library.custom_op("vggtk::conv_bias_relu", mutates_args=())
def conv_bias_relu_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      split: Optional[int] = None) -> torch.Tensor:
    """ReLU(conv(x, weight) + bias) in Triton; ``split`` cuts the weight gradient's pixel reduction
    (None: as many pieces as fill the GPU)."""
    return conv_bias_relu(x, weight, bias)


@conv_bias_relu_op.register_fake
def _(x, weight, bias, split=None):
    n, _, h, w = x.shape
    return torch.empty((n, weight.shape[0], h, w), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


@torch.library.custom_op("vggtk::conv_relu_input_grad", mutates_args=())
def conv_relu_input_grad_op(grad_y: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return conv_input_grad(grad_y, y, weight)


@conv_relu_input_grad_op.register_fake
def _(grad_y, y, weight):
    n, _, h, w = grad_y.shape
    return torch.empty((n, weight.shape[1], h, w), dtype=grad_y.dtype, device=grad_y.device,
                       memory_format=torch.channels_last)


@torch.library.custom_op("vggtk::conv_relu_weight_grad", mutates_args=())
def conv_relu_weight_grad_op(x: torch.Tensor, grad_y: torch.Tensor, y: torch.Tensor, kernel_size: int,
                             split: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(dweight, dbias): the bias gradient comes from tiles the kernel loads anyway."""
    return conv_weight_grad(x, grad_y, y, kernel_size, True, split)


@conv_relu_weight_grad_op.register_fake
def _(x, grad_y, y, kernel_size, split):
    cout, cin = y.shape[1], x.shape[1]
    return (x.new_empty((cout, cin, kernel_size, kernel_size)), x.new_empty((cout,)))


def _save_for_backward(ctx, inputs, output):
    x, weight, bias, split = inputs
    ctx.save_for_backward(x, weight, output)  # the ReLU output's sign is the mask; no pre-activation kept
    ctx.has_bias, ctx.split = bias is not None, split


def _conv_relu_backward(ctx, grad_y):
    x, weight, y = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    need_b = need_b and ctx.has_bias
    reason = unsupported_reason(grad_y, weight.transpose(0, 1), None)
    if reason is not None:
        _warn_fallback(reason, x, weight, "backward")
        dx, dw, db = conv_relu_backward_reference(x, weight, y, grad_y, need_bias=ctx.has_bias)
        return (dx if need_x else None), (dw if need_w else None), (db if need_b else None), None
    grad_y = grad_y.contiguous(memory_format=torch.channels_last)
    dx = conv_relu_input_grad_op(grad_y, y, weight) if need_x else None
    dw = db = None
    if need_w or need_b:
        dw, db = conv_relu_weight_grad_op(x, grad_y, y, weight.shape[-1], ctx.split)
    return dx, (dw if need_w else None), (db if need_b else None), None


conv_bias_relu_op.register_autograd(_conv_relu_backward, setup_context=_save_for_backward)


def _autocast(x, weight, bias):
    """Cast as autocast casts conv2d's arguments (conv2d is on its lower-precision list)."""
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device_type)
    return x.to(dtype), weight.to(dtype), (bias.to(dtype) if bias is not None else None)


def time_call(fn: Callable[[], object]) -> float:
    """Median milliseconds of ``fn`` on the GPU (CUDA-event timing, L2 flushed between runs)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


def choose(key: tuple, candidates: dict[str, Callable[[], object]], timer=time_call) -> str:
    """The faster candidate for ``key``, timed the first time the key is seen and then cached. A
    candidate that fails (say, a kernel that does not compile on this GPU) loses, with a warning."""
    if key not in AUTO_CHOICES:
        times, errors = {}, {}
        for name, fn in candidates.items():
            try:
                times[name] = timer(fn)
            except Exception as exc:
                errors[name] = exc
        if not times:
            raise next(iter(errors.values()))
        for name, exc in errors.items():
            warnings.warn(f"vggtk conv backend auto: {name} failed for {key} ({type(exc).__name__}: {exc}); "
                          "not using it there", RuntimeWarning, stacklevel=2)
        AUTO_CHOICES[key] = min(times, key=times.get)
    return AUTO_CHOICES[key]


def auto_backend(x, weight, bias, timer=time_call) -> str:
    """auto's choice for this call: Triton or ATen, whichever ran faster on the first call of this
    size (forward and backward when autograd is recording)."""
    training = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    # Shapes are bucketed by pixel count (next power of two): dense evaluation feeds every image at
    # its own size, and timing each of them would cost more than it could save.
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    key = (str(x.device), x.dtype, tuple(weight.shape), bias is not None, training, 1 << (pixels - 1).bit_length())
    if key in AUTO_CHOICES:
        return AUTO_CHOICES[key]
    xs = x.detach().requires_grad_(x.requires_grad)
    params = [weight.detach().requires_grad_(weight.requires_grad)]
    params.append(bias.detach().requires_grad_(bias.requires_grad) if bias is not None else None)
    inputs = [t for t in (xs, *params) if t is not None and t.requires_grad]
    # A generator of its own: timing must not advance the global one, or a resumed run would draw other
    # dropout masks than an uninterrupted one (auto times a shape on its first call, in any epoch).
    gen = torch.Generator(device=x.device).manual_seed(0)
    grad_y = torch.randn(x.shape[0], weight.shape[0], *x.shape[2:], device=x.device, dtype=x.dtype, generator=gen)

    def run(impl):
        def call():
            with torch.set_grad_enabled(training):
                y = impl(xs, *params)
                if training:
                    torch.autograd.grad(y, inputs, grad_y)
        return call

    return choose(key, {"triton": run(conv_bias_relu_op), "torch": run(conv_relu_reference)}, timer)


def fused_conv_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    backend: str = "triton", split: int | None = None) -> torch.Tensor:
    """ReLU(conv(x, weight) + bias) for a 3x3 (padding 1) or 1x1 (padding 0) weight: in Triton,
    or in ATen where ``backend`` is "torch", where "auto" found ATen faster for this shape, or where
    the kernels do not cover the call (said once per shape, with the reason)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown conv backend {backend!r}; known: {', '.join(BACKENDS)}")
    x, weight, bias = _autocast(x, weight, bias)
    if backend == "torch":
        return conv_relu_reference(x, weight, bias)
    reason = unsupported_reason(x, weight, bias)
    if reason is not None:
        if x.numel():  # an empty batch has nothing to fuse and nothing to warn about
            _warn_fallback(reason, x, weight, "forward")
        return conv_relu_reference(x, weight, bias)
    # The arguments are cast already; autocast must not touch the kernels' (or auto's timing) tensors.
    with torch.autocast(x.device.type, enabled=False):
        # Off CUDA (the interpreter) ATen is always the faster.
        if backend == "auto" and (x.device.type != "cuda" or auto_backend(x, weight, bias) == "torch"):
            return conv_relu_reference(x, weight, bias)
        return conv_bias_relu_op(x, weight, bias, split)


class FusedConv2dReLU(nn.Conv2d):
    """A Conv2d (3x3 padding 1 or 1x1 padding 0, stride 1) whose forward is ReLU(conv(x) + bias).

    It is still a Conv2d so that code reading ``kernel_size`` or re-initialising ``weight`` keeps
    working, but its output is after the ReLU. It holds the very Parameter objects of the conv it
    replaces, under the same names, so a state_dict (and an optimizer) sees no difference.
    """

    def __init__(self, conv: nn.Conv2d, backend: str = "triton"):
        if not fusable(conv):
            raise ValueError(f"cannot fuse {conv}: needs a 3x3 padding 1 or 1x1 padding 0 stride 1 conv")
        # Built on the meta device: its own fresh parameters are replaced at once by the conv's.
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding,
                         bias=conv.bias is not None, device="meta")
        self.weight = conv.weight
        self.bias = conv.bias
        self.backend = backend
        self.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_conv_relu(x, self.weight, self.bias, self.backend)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", relu=True, backend={self.backend}"


def fusable(conv: nn.Module) -> bool:
    """A plain Conv2d the kernels compute exactly (subclasses may change forward: left alone)."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size[0] == conv.kernel_size[1]
        and conv.kernel_size[0] in KERNEL_SIZES
        and conv.padding == (KERNEL_SIZES[conv.kernel_size[0]],) * 2
        and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not (conv._forward_hooks or conv._forward_pre_hooks or conv._backward_hooks)
    )


def fuse_conv_relu(model: nn.Module, backend: str = "triton") -> list[str]:
    """In every nn.Sequential of ``model``, replace a fusable Conv2d directly followed by an
    nn.ReLU with a :class:`FusedConv2dReLU` sharing its parameters, and the ReLU with nn.Identity.
    Returns the names of the fused convs; a second call finds nothing left to fuse."""
    if backend not in ("triton", "auto"):
        raise ValueError(f"fusing needs backend 'triton' or 'auto', not {backend!r}")
    fused: list[str] = []
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for name, after in zip(names, names[1:]):
            conv, relu = seq._modules[name], seq._modules[after]
            if fusable(conv) and isinstance(relu, nn.ReLU):
                seq._modules[name] = FusedConv2dReLU(conv, backend)
                seq._modules[after] = nn.Identity()
                fused.append(f"{prefix}.{name}" if prefix else name)
    return fused
