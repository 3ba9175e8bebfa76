"""When a box localises an object (the ILSVRC rule the issue's conventions state)."""

from __future__ import annotations

import torch

import vgg_toolkit as vt


def localised(box: torch.Tensor, boxes: torch.Tensor, box_labels: torch.Tensor, label: int) -> bool:
    """Whether ``box`` overlaps some ground-truth box of class ``label`` with IoU >= 0.5."""
    mine = boxes[box_labels == label]
    return bool(len(mine)) and bool((vt.iou(box[None], mine) >= vt.CORRECT_IOU).any())
