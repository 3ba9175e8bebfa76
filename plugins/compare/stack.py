"""The paper's argument for stacks of 3x3 convolutions (Sec. 2.3), as arithmetic for C channels."""

from __future__ import annotations


def receptive_field(layers: int, kernel: int = 3) -> int:
    """Receptive field of ``layers`` stride-1 convolutions of ``kernel`` x ``kernel``."""
    return 1 + layers * (kernel - 1)


def stack_lines(channels: int) -> list[str]:
    """Two and three 3x3 layers against the one large layer of the same receptive field, C in and out
    (biases left out, as in the paper)."""
    c2 = channels * channels
    lines = [f"Stacks of 3x3 convolutions against one large convolution, C = {channels} channels in and out:"]
    for layers in (2, 3):
        rf = receptive_field(layers)
        stack, single = layers * 9 * c2, rf * rf * c2
        lines.append(
            f"  {layers} x 3x3: receptive field 1 + {layers} x 2 = {rf}; weights {layers} x 3^2 x C^2 = "
            f"{layers * 9}C^2 = {stack:,}; {layers} ReLUs")
        lines.append(
            f"  1 x {rf}x{rf}: receptive field {rf}; weights {rf}^2 x C^2 = {rf * rf}C^2 = {single:,}; 1 ReLU "
            f"-> {100 * (single - stack) / stack:.0f}% more weights than the stack")
    return lines
