"""Protocol 2 (Appendix A.2): the localisation net applied densely, a box per location of its
fully-convolutional output (per class for PCR), at one or several scales; the boxes of each of the
image's top-5 classes (from a classification net) merged greedily into one.

The merge, a deterministic variant of OverFeat's (Sermanet et al. 2014, whose thresholds are not
published): every box starts with a support of 1; the two boxes that overlap most are merged while
their IoU is at least ``threshold`` (the merged box is their support-weighted mean, its support the
sum); ties go to the earlier pair. The merged box with the largest support (then the earliest) is the
class's answer. ``threshold`` is picked on the validation split, never on the split reported.
"""

from __future__ import annotations

import torch
from einops import rearrange

import vgg_toolkit as vt


def box_map(model, image: torch.Tensor, q: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Boxes (locations, outputs/4, 4) in pixels of the image ``image`` (1, C, H, W), from the dense
    net at scale ``q``: one per location of its output map (and per class for PCR), row by row; and the
    map's (rows, cols)."""
    info = vt.model_info(model)
    crop, stride = info.input_size, model.output_stride
    height, width = image.shape[-2:]
    rescaled = vt.rescale(image, max(q, crop), crop)
    h, w = rescaled.shape[-2:]
    x = vt.dense_input(model, rescaled)
    top, left = (h - x.shape[-2]) // 2, (w - x.shape[-1]) // 2
    with torch.no_grad(), vt.model_form(model, fully_conv=True):
        codes = model(x).float()  # (1, outputs, rows, cols)
    rows, cols = codes.shape[-2:]
    codes = rearrange(codes[0], "(k xywh) rows cols -> rows cols k xywh", xywh=4)
    boxes = vt.decode_boxes(codes, crop, crop)
    offset_y = torch.arange(rows, dtype=boxes.dtype)[:, None, None] * stride + top
    offset_x = torch.arange(cols, dtype=boxes.dtype)[None, :, None] * stride + left
    shift = torch.stack([offset_x.expand(rows, cols, 1), offset_y.expand(rows, cols, 1)] * 2, -1)
    boxes = boxes + shift
    scale = boxes.new_tensor([w / width, h / height, w / width, h / height])
    return rearrange(boxes / scale, "rows cols k xyxy -> (rows cols) k xyxy"), (rows, cols)


def class_map(classifier, image: torch.Tensor, q: int) -> torch.Tensor:
    """The classification net's posteriors (classes, rows, cols) at every window of the dense net at scale
    ``q``, on the image rescaled and trimmed as ``box_map`` does: each window's class scores, which rate
    the boxes of the windows they share."""
    crop = vt.model_info(classifier).input_size
    x = vt.dense_input(classifier, vt.rescale(image, max(q, crop), crop))
    with torch.no_grad(), vt.model_form(classifier, fully_conv=True):
        return classifier(x).float().softmax(dim=1)[0].cpu()


def merge(boxes: torch.Tensor, threshold: float) -> torch.Tensor:
    """The greedy merge of the module docstring: ``boxes`` (n, 4) -> the answer box (4,)."""
    boxes = boxes.double().clone()
    support = torch.ones(len(boxes), dtype=torch.float64)
    alive = torch.ones(len(boxes), dtype=torch.bool)
    overlap = vt.iou(boxes[:, None], boxes[None])
    overlap.fill_diagonal_(-1)
    while alive.sum() > 1:
        masked = overlap.masked_fill(~(alive[:, None] & alive[None]), -1)
        best = int(masked.argmax())
        i, j = divmod(best, len(boxes))
        if masked[i, j] < threshold:
            break
        i, j = min(i, j), max(i, j)
        boxes[i] = (boxes[i] * support[i] + boxes[j] * support[j]) / (support[i] + support[j])
        support[i] += support[j]
        alive[j] = False
        row = vt.iou(boxes[i][None], boxes)
        overlap[i], overlap[:, i] = row, row
        overlap[i, i] = -1
    support[~alive] = -1
    return boxes[int(support.argmax())].float()


def match_score(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """OverFeat's match score of boxes (n, 4) against boxes (m, 4), lower for boxes more alike: the distance
    between their centres, in units of their mean side, plus how little they overlap (1 - IoU). OverFeat
    sums "the distance between centres" and "the intersection area" without stating units; these keep
    the two terms comparable at any image size, and overlap lowers the score as it should."""
    ca, cb = (a[:, :2] + a[:, 2:]) / 2, (b[:, :2] + b[:, 2:]) / 2
    side_a, side_b = (a[:, 2:] - a[:, :2]).mean(1), (b[:, 2:] - b[:, :2]).mean(1)
    distance = torch.cdist(ca, cb) / ((side_a[:, None] + side_b[None]) / 2).clamp_min(1e-6)
    return distance + 1 - vt.iou(a[:, None], b[None])


def overfeat_merge(boxes: torch.Tensor, ratings: torch.Tensor, threshold: float) -> tuple[torch.Tensor, float]:
    """OverFeat's greedy merge as the paper applies it: while the two most alike boxes score below
    ``threshold``, replace them by the mean of their coordinates, its rating the sum of theirs; the answer
    is the box with the highest rating (a window's rating: the classification net's score for the class
    there). Returns (box, rating)."""
    boxes, ratings = boxes.double().clone(), ratings.double().clone()
    alive = torch.ones(len(boxes), dtype=torch.bool)
    scores = match_score(boxes, boxes)
    scores.fill_diagonal_(float("inf"))
    while alive.sum() > 1:
        masked = scores.masked_fill(~(alive[:, None] & alive[None]), float("inf"))
        best = int(masked.argmin())
        i, j = divmod(best, len(boxes))
        if masked[i, j] >= threshold:
            break
        i, j = min(i, j), max(i, j)
        boxes[i] = (boxes[i] + boxes[j]) / 2
        ratings[i] += ratings[j]
        alive[j] = False
        row = match_score(boxes[i][None], boxes)[0]
        scores[i], scores[:, i] = row, row
        scores[i, i] = float("inf")
    ratings[~alive] = -float("inf")
    k = int(ratings.argmax())
    return boxes[k].float(), float(ratings[k])


def candidates(loc_models, heads, images, scales_of, classes: list[int], rate=None) -> dict[int, tuple]:
    """For each class in ``classes``, every box the localisation nets give it, over their scales (the one
    box of an SCR net stands for every class), and each box's rating: ``rate(q, (rows, cols))``, the
    classification net's posteriors (classes, rows, cols) at the windows of scale ``q``, else 1 per box.
    ``images[i]`` is the image as localisation net i takes it."""
    found = {c: ([], []) for c in classes}
    for model, head, image in zip(loc_models, heads, images):
        for q in scales_of(model):
            boxes, grid = box_map(model, image, q)
            scores = rate(q, grid).flatten(1) if rate is not None else None
            for c in classes:
                found[c][0].append(boxes[:, c] if head == "pcr" else boxes[:, 0])
                found[c][1].append(scores[c] if scores is not None else torch.ones(len(boxes)))
    return {c: (torch.cat(b), torch.cat(r)) for c, (b, r) in found.items()}
