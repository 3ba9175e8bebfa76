"""Test-time geometry on float NCHW batches: the isotropic rescale to a test scale Q, crop positions,
and the single centre view that both per-epoch validation and the ``center`` protocol feed the net."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..contract.model import model_info
from ..contract.scale import TrainScale
from ..errors import VggtkError


def test_scales_for(model, scales=None, multi: bool = False, train_scale: TrainScale | None = None,
                    crop: int | None = None) -> tuple[int, ...]:
    """The test scales Q used on ``model``: ``scales``, else the paper's from the training scale
    (``train_scale``, else the model's; fixed S: {S} or {S-32, S, S+32}; jittered: {mid} or {Smin, mid,
    Smax} with ``multi``), else from S = the crop. A Q below the crop (``crop``, else the model's input
    size) is raised to it, never padded; scales that become equal are used once."""
    crop = crop or model_info(model).input_size
    if scales is None:
        spec = train_scale or model_info(model).train_scale or TrainScale.parse(crop)
        scales = spec.test_scales(multi=multi)
    used: list[int] = []
    for q in scales:
        q = max(int(q), crop)
        if q not in used:
            used.append(q)
    return tuple(used)


def rescaled_size(height: int, width: int, q: int, crop: int | None = None) -> tuple[int, int]:
    """(height, width) with the smallest side equal to ``q`` and the aspect ratio kept (rounded).

    With ``crop``, a width that is the longer side is rounded instead to the nearest size that leaves an
    even margin around a centred crop, so the middle crop is centred exactly and a mirrored image meets
    mirrored crops (the aspect ratio moves by at most one pixel).
    """
    if height > width:
        return max(q, int(height * q / width + 0.5)), q
    exact = width * q / height
    if crop is None or crop > q:
        return q, max(q, int(exact + 0.5))
    margin = 2 * int((exact - crop) / 2 + 0.5)
    if margin < q - crop:  # never below the smallest side
        margin += 2
    return q, crop + margin if width > height else q


def rescale(images: torch.Tensor, q: int, crop: int | None = None) -> torch.Tensor:
    """Isotropic rescale of an NCHW batch so its smallest side is ``q`` (bilinear, antialiased)."""
    size = rescaled_size(images.shape[-2], images.shape[-1], q, crop)
    if size == tuple(images.shape[-2:]):
        return images  # already at the size: spare a pass over the batch
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


def grid_positions(length: int, crop: int, n: int = 5) -> list[int]:
    """``n`` crop offsets along a side of ``length`` pixels, from edge to edge, mirror-symmetric."""
    margin = length - crop
    if margin < 0:
        raise VggtkError(f"a {crop}-pixel crop does not fit in {length} pixels")
    if n == 1:
        return [margin // 2]
    first = [(i * margin) // (n - 1) for i in range((n + 1) // 2)]
    # the second half mirrors the first, so a flipped image meets the flipped crops
    return first + [margin - p for p in reversed(first[: n // 2])]


def crop_at(x: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    return x[..., top:top + size, left:left + size]


def center_trim(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Trim each side of an NCHW batch to a multiple of ``multiple`` pixels (never below one), taking the
    same number of pixels off both ends (the odd one off the bottom or right). A net whose pools floor
    would otherwise drop the last rows and columns, anchoring its windows at the top left."""
    h, w = x.shape[-2:]
    th, tw = max(multiple, h - h % multiple), max(multiple, w - w % multiple)
    if (th, tw) == (h, w) or th > h or tw > w:
        return x
    top, left = (h - th) // 2, (w - tw) // 2
    return x[..., top:top + th, left:left + tw]


def dense_input(model, x: torch.Tensor) -> torch.Tensor:
    """``x`` as dense evaluation feeds the fully-convolutional ``model``: trimmed to a multiple of its
    output stride, centred, so its windows sit symmetrically; whole for a net whose pools round up
    (``pools_round_up``, as Caffe's do), which loses no rows or columns."""
    if getattr(model, "pools_round_up", False):
        return x
    return center_trim(x, model.output_stride)


def center_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    return crop_at(x, grid_positions(x.shape[-2], crop, 1)[0], grid_positions(x.shape[-1], crop, 1)[0], crop)


def center_view_geometry(height: int, width: int, q: int, crop: int) -> tuple[float, float, int, int]:
    """(x scale, y scale, left, top) of the centre view: a point (x, y) of the image is at
    (x * sx - left, y * sy - top) in the window."""
    h, w = rescaled_size(height, width, max(q, crop), crop)
    return w / width, h / height, grid_positions(w, crop, 1)[0], grid_positions(h, crop, 1)[0]


def center_view_boxes(boxes: torch.Tensor, height: int, width: int, q: int, crop: int) -> torch.Tensor:
    """Boxes (n, 4) of a ``height`` x ``width`` image in pixels of its ``center_view`` window. Not clipped:
    a box is judged whole, as the protocol judges the box mapped back to the image."""
    sx, sy, left, top = center_view_geometry(height, width, q, crop)
    scale = boxes.new_tensor([sx, sy, sx, sy])
    return boxes * scale - boxes.new_tensor([left, top, left, top])


def boxes_from_center_view(boxes: torch.Tensor, height: int, width: int, q: int, crop: int) -> torch.Tensor:
    """Boxes in pixels of the ``center_view`` window, in pixels of the ``height`` x ``width`` image."""
    sx, sy, left, top = center_view_geometry(height, width, q, crop)
    return (boxes + boxes.new_tensor([left, top, left, top])) / boxes.new_tensor([sx, sy, sx, sy])


def center_view(images: torch.Tensor, q: int, crop: int) -> torch.Tensor:
    """The paper's single-crop view: rescale to Q (raised to the crop when smaller), take the centre crop."""
    return center_crop(rescale(images, max(q, crop), crop), crop)
