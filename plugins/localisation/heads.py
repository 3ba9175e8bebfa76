"""The paper's localisation heads (Appendix A): the last layer predicts a bounding box instead of class
scores, trained with a Euclidean loss. Single-class regression (SCR) predicts one box shared by all
classes; per-class regression (PCR) one box per class, and only the ground-truth class's box is in its
loss. Boxes are (centre x, centre y, width, height) of the input window, as fractions of its size."""

from __future__ import annotations

import torch

import vgg_toolkit as vt


class RegressionHead:
    monitor = "loc_err"

    def __init__(self, per_class: bool):
        self.per_class = per_class
        self.name = "pcr" if per_class else "scr"

    def num_outputs(self, num_classes: int) -> int:
        return 4 * num_classes if self.per_class else 4

    def box_targets(self, labels, boxes, box_labels, height, width) -> torch.Tensor:
        """(N, 5): the label, then the main box (the largest of the image's class) encoded in the window;
        NaN where an image has no box of its class (such a row is left out of the loss and counted wrong)."""
        rows = []
        for label, image_boxes, image_box_labels in zip(labels.tolist(), boxes, box_labels):
            box = vt.main_box(image_boxes, image_box_labels, label)
            code = vt.encode_boxes(box, height, width) if box is not None else torch.full((4,), float("nan"))
            rows.append(torch.cat([torch.tensor([float(label)]), code.float()]))
        return torch.stack(rows)

    def predicted(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, 4): the box for each image's class (PCR), or the one box (SCR)."""
        outputs = outputs.float()
        if not self.per_class:
            return outputs
        per_class = outputs.view(len(outputs), -1, 4)
        return per_class[torch.arange(len(outputs), device=outputs.device), labels.long()]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Caffe's Euclidean loss, 1/(2N) sum |pred - true|^2, over the images that have a box."""
        labels, codes = targets[:, 0].long(), targets[:, 1:]
        present = torch.isfinite(codes).all(1)
        error = (self.predicted(outputs, labels) - torch.nan_to_num(codes)).pow(2).sum(1)
        return (error * present).sum() / (2 * present.sum().clamp(min=1))

    def error_counts(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images whose box (of the true class, for PCR) has an IoU below 0.5 with the true box."""
        labels, codes = targets[:, 0].long(), targets[:, 1:]
        overlap = vt.iou(vt.decode_boxes(self.predicted(outputs, labels), 1, 1), vt.decode_boxes(codes, 1, 1))
        wrong = ~(overlap >= vt.CORRECT_IOU) | ~torch.isfinite(codes).all(1)
        return {"loc_err": wrong.sum()}
