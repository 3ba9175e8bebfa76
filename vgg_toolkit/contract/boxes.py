"""The box conventions (README, "Localisation"): boxes are ``x1 y1 x2 y2`` in continuous pixel
coordinates of the image they belong to (no +1). A regression head predicts a box as (centre x,
centre y, width, height) relative to its input window, each divided by the window's size; mapping back
undoes the window's offset and the test rescaling. A prediction is correct when its IoU with a
ground-truth box of the right class is at least 0.5 (as the ILSVRC devkit counts)."""

from __future__ import annotations

import torch

CORRECT_IOU = 0.5


def area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of each xyxy box (0 for an empty or inverted one)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of boxes ``a`` (..., 4) and ``b`` (..., 4), broadcast; 0 where both are
    empty."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def encode(boxes: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """xyxy pixels of a ``height`` x ``width`` window -> (cx, cy, w, h) as fractions of the window."""
    scale = boxes.new_tensor([width, height])
    return torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2 / scale, (boxes[..., 2:] - boxes[..., :2]) / scale], -1)


def decode(codes: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """(cx, cy, w, h) fractions of a ``height`` x ``width`` window -> xyxy pixels of that window."""
    scale = codes.new_tensor([width, height])
    centre, size = codes[..., :2] * scale, codes[..., 2:] * scale
    return torch.cat([centre - size / 2, centre + size / 2], -1)


def main_box(boxes: torch.Tensor, box_labels: torch.Tensor, label: int) -> torch.Tensor | None:
    """The box a single-object task trains on: the largest box of the image's own class (None if none)."""
    mine = boxes[box_labels == label] if len(boxes) else boxes
    if not len(mine):
        return None
    return mine[area(mine).argmax()]
