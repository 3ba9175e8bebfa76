"""The Triton conv backend: on CUDA, swaps each conv3x3+ReLU (and conv1x1+ReLU) pair of a model
for one fused Triton module that shares the conv's parameters, so state_dicts do not change.

The ``conv_backend`` option it declares (``--conv-backend`` on train, eval, extract-features and distance) picks it: "torch" leaves the model alone; "triton" fuses
every pair (and on a machine without CUDA is an error, except under TRITON_INTERPRET=1, which is
how CI tests the swap); "auto" fuses on CUDA and lets each fused module time Triton against ATen
once per input shape, keeping the faster.

Triton and the kernels are imported only when a swap happens, so loading this plugin stays cheap
and TRITON_INTERPRET is read by Triton when, not before, it is needed.
"""

from __future__ import annotations

import os
import warnings

from vgg_toolkit import OptionSpec, VggtkError, find_model_info, hookimpl

CHOICES = ("torch", "triton", "auto")


def _interpreting() -> bool:
    # The values Triton itself accepts as true for TRITON_INTERPRET.
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


@hookimpl
def vggtk_register_options(register):
    register(OptionSpec("conv_backend", str, "auto", "torch | triton | auto (triton on CUDA where faster).",
                        choices=CHOICES))


@hookimpl
def vggtk_prepare_model(model, device, options):
    backend = options.get("conv_backend", "torch")  # a command that does not offer the option: the torch path
    if backend == "torch":
        return
    device_type = getattr(device, "type", str(device).split(":")[0])
    if device_type != "cuda":
        if backend == "auto":
            return
        if not _interpreting():
            raise VggtkError(
                f"conv backend 'triton' needs a CUDA GPU but the model is on {device}; "
                "use --conv-backend torch or auto (or set TRITON_INTERPRET=1 to run Triton's slow interpreter)"
            )
    try:
        from vgg_toolkit.kernels.fused_conv import fuse_conv_relu
    except ImportError as exc:
        if backend == "auto":
            warnings.warn(f"vggtk: Triton cannot be loaded ({exc}); convolutions run in ATen", RuntimeWarning)
            return
        raise VggtkError(f"conv backend 'triton' cannot load Triton ({exc}); use --conv-backend torch") from exc
    fused = fuse_conv_relu(model, backend)
    info = find_model_info(model)
    if info is not None:  # the names of the fused convs, for commands that report what they did
        info.runtime["fused_convs"] = [*info.runtime.get("fused_convs", []), *fused]
