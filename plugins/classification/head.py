"""The classification head: a last layer of one output per class, multinomial logistic regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vgg_toolkit import topk_misses


class ClassificationHead:
    name = "classification"
    monitor = "top1_err"

    def num_outputs(self, num_classes: int) -> int:
        return num_classes

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), targets)

    def error_counts(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        misses = topk_misses(outputs, targets, (1, 5))
        return {"top1_err": misses[1], "top5_err": misses[5]}
