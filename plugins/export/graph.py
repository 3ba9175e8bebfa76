"""What an exported file computes: a trained net in one of its forms, optionally behind its own
preprocessing, as a plain ``nn.Module`` that ``torch.export`` traces.

Forms:
- ``classifier``: the net as trained, at its input size (N, C, S, S) -> ``scores`` (N, outputs).
- ``dense``: the paper's fully-convolutional net on images of any size at least the net's minimum,
  trimmed as ``vggtk eval`` trims them (centred, to a multiple of the output stride; whole for a net whose
  pools round up) -> ``score_map`` (N, outputs, h, w); with ``average``, ``posteriors`` (N, classes):
  the softmax of the spatially averaged map, the paper's dense posterior at that Q.
- ``features:TAP``: any named tap (the paper's layer names included) of the dense net -> ``features``.
- ``boxes``: a localisation head (SCR/PCR) densely -> ``boxes`` (N, rows, cols, K, 4): each location's
  box (x1, y1, x2, y2) in pixels of the input image, one per class for PCR.

With ``preprocessing``, the graph takes uint8 RGB images and applies the net's recorded record inside
(channel order, pixel range, mean, std), so a server feeds raw pixels; resizing to Q stays the caller's.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

import vgg_toolkit as vt

LOCALISATION_HEADS = ("scr", "pcr")


def parse_form(text: str, model) -> tuple[str, str | None]:
    """(form, tap) from ``--form``; each error names the option and what is known."""
    info = vt.model_info(model)
    form, _, tap = text.partition(":")
    known = ["classifier", "dense", "features:TAP", "boxes"]
    if form not in ("classifier", "dense", "features", "boxes") or (form == "features") != bool(tap):
        raise vt.VggtkError(f"--form {text!r}: not a form; known: {', '.join(known)}")
    if form in ("dense", "boxes", "features"):
        vt.require_fully_conv(model, f"{form} form")
    if form == "features":
        taps = getattr(model, "feature_taps", ())
        if tap not in taps:
            raise vt.VggtkError(f"--form {text!r}: {info.arch} has no tap {tap!r}; known: {', '.join(taps)}")
    if form == "boxes" and info.head not in LOCALISATION_HEADS:
        raise vt.VggtkError(f"--form boxes: the net has the {info.head} head, not a localisation one (scr, pcr)")
    return form, tap or None


class Preprocess(nn.Module):
    """uint8 RGB (N, 3, H, W) -> the net's input, as ``Preprocessing.apply`` computes it."""

    def __init__(self, prep: vt.Preprocessing, channels: int):
        super().__init__()
        mean, std = torch.tensor(prep.mean), torch.tensor(prep.std)
        if channels != len(mean):
            mean, std = mean.mean().reshape(1), std.mean().reshape(1)
        self.flip = prep.channel_order == "BGR" and channels == 3
        self.scale = prep.pixel_range / 255.0
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("inv_std", (1.0 / std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32)
        if self.flip:
            x = x.flip(1)
        if self.scale != 1.0:
            x = x * self.scale
        return (x - self.mean) * self.inv_std


class Exported(nn.Module):
    def __init__(self, model, form: str, tap: str | None = None, average: bool = False,
                 preprocessing: vt.Preprocessing | None = None):
        super().__init__()
        info = vt.model_info(model)
        self.model, self.form, self.tap, self.average = model.eval(), form, tap, average
        self.crop = info.input_size
        self.stride = getattr(model, "output_stride", 32)
        self.whole = bool(getattr(model, "pools_round_up", False))
        self.prepare = Preprocess(preprocessing, info.in_chans or 3) if preprocessing is not None else None
        if form == "classifier":
            model.to_linear() if isinstance(model, vt.FullyConvolutional) else None
        else:
            model.to_fully_conv()

    def _trimmed(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """The dense input as ``vt.dense_input`` makes it, and its offset (top, left) in the image."""
        if self.whole:
            return x, 0, 0
        h, w = x.shape[-2], x.shape[-1]
        th, tw = h - h % self.stride, w - w % self.stride
        top, left = (h - th) // 2, (w - tw) // 2
        # Gathered rows and columns, not a slice: a slice that may or may not be the whole side makes the
        # exporter specialise the graph on which it is for the sample image.
        rows = torch.arange(th, device=x.device) + top
        cols = torch.arange(tw, device=x.device) + left
        return x.index_select(2, rows).index_select(3, cols), top, left

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.prepare(images) if self.prepare is not None else images
        if self.form == "classifier":
            return self.model(x)
        x, top, left = self._trimmed(x)
        if self.form == "features":
            return self.model.forward_features(x, taps=(self.tap,))[self.tap]
        scores = self.model(x)
        if self.form == "dense":
            return scores.mean(dim=(2, 3)).softmax(dim=1) if self.average else scores
        codes = rearrange(scores, "n (k xywh) rows cols -> n rows cols k xywh", xywh=4)
        boxes = vt.decode_boxes(codes, self.crop, self.crop)
        rows, cols = codes.shape[1], codes.shape[2]
        ys = torch.arange(rows, dtype=boxes.dtype, device=boxes.device) * self.stride + top
        xs = torch.arange(cols, dtype=boxes.dtype, device=boxes.device) * self.stride + left
        shift = torch.stack([xs[None, :].expand(rows, cols), ys[:, None].expand(rows, cols)] * 2, -1)
        return boxes + shift[None, :, :, None, :]

    def output_name(self) -> str:
        return {"classifier": "scores", "features": "features", "boxes": "boxes"}.get(
            self.form, "posteriors" if self.average else "score_map")
