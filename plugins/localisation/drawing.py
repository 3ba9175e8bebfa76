"""Pictures of boxes: one photo with its predicted box (``vggtk predict --draw``) and the grid of sample
images with their true and predicted boxes that ``vggtk eval --task localisation --boxes-png`` writes."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

import vgg_toolkit as vt

from .scoring import localised

TRUE = (0, 200, 0)
# Distinct on photos and for the common colour-vision deficiencies (Okabe-Ito), one per method.
METHOD_COLOURS = [(230, 159, 0), (86, 180, 233), (204, 121, 167), (213, 94, 0), (0, 114, 178), (240, 228, 66)]
TILE_HEIGHT = 200
COLUMNS = 4
LINE = 14
BOX_GRID = "box grid"  # eval --task localisation --boxes-png
DRAWING = "drawing"  # predict --draw


def to_pil(image: torch.Tensor) -> Image.Image:
    """A CHW uint8 tensor (1 or 3 channels) as an RGB picture."""
    array = image.expand(3, -1, -1) if image.shape[0] == 1 else image
    return Image.fromarray(array.permute(1, 2, 0).contiguous().numpy()).convert("RGB")


def is_box(box) -> bool:
    """Whether (x1, y1, x2, y2) encloses anything: an inverted or empty box is a regressor's failure, never
    drawn or printed as if it were a box."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return x2 > x1 and y2 > y1


def draw_box(canvas: ImageDraw.ImageDraw, box, colour, label: str = "", width: int = 2) -> bool:
    """Draw ``box`` with its label; an inverted or empty one is not drawn (False), its label says so."""
    x1, y1, x2, y2 = (float(v) for v in box)
    drawn = is_box(box)
    if drawn:
        canvas.rectangle([x1, y1, x2, y2], outline=colour, width=width)
    if label or not drawn:
        text = (label + " " if label else "") + ("" if drawn else "(inverted or empty box, not drawn)")
        canvas.text((max(0.0, x1 if drawn else 0.0) + 2, max(0.0, y1 if drawn else 0.0) + 2), vt.one_line(text),
                    fill=colour)
    return drawn


def box_grid(samples: list, methods: list[tuple[str, list]], classes: list[str], target: Path) -> None:
    """``samples``: (image CHW uint8, label, true boxes, their labels) per image; ``methods``: (name, one
    predicted box per image, in image pixels). Each tile shows the image with its true boxes of its class
    in green and each method's box in that method's colour, ``ok`` when it localises the object."""
    tiles = []
    for i, (image, label, gt, gt_labels) in enumerate(samples):
        picture = to_pil(image)
        scale = TILE_HEIGHT / picture.height
        picture = picture.resize((max(1, round(picture.width * scale)), TILE_HEIGHT), Image.BILINEAR)
        canvas = ImageDraw.Draw(picture)
        for box in gt[gt_labels == label]:
            draw_box(canvas, box * scale, TRUE)
        marks = []
        for k, (_, boxes) in enumerate(methods):
            if i < len(boxes):
                colour = METHOD_COLOURS[k % len(METHOD_COLOURS)]
                if is_box(boxes[i]):
                    draw_box(canvas, boxes[i] * scale, colour)
                marks.append(("ok" if localised(boxes[i], gt, gt_labels, label) else
                              "x" if is_box(boxes[i]) else "inv", colour))
        caption = Image.new("RGB", (picture.width, LINE + 4), "white")
        writer = ImageDraw.Draw(caption)
        writer.text((2, 2), vt.one_line(classes[label] if label < len(classes) else str(label)), fill=(0, 0, 0))
        x = caption.width - 2
        for text, colour in reversed(marks):
            x -= 8 * len(text) + 4
            writer.text((x, 2), text, fill=colour)
        tile = Image.new("RGB", (picture.width, TILE_HEIGHT + caption.height), "white")
        tile.paste(picture, (0, 0))
        tile.paste(caption, (0, TILE_HEIGHT))
        tiles.append(tile)
    legend = [("true box", TRUE)] + [(name, METHOD_COLOURS[k % len(METHOD_COLOURS)])
                                     for k, (name, _) in enumerate(methods)]
    rows = [tiles[i:i + COLUMNS] for i in range(0, len(tiles), COLUMNS)]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max([sum(t.width + 4 for t in row) for row in rows] +
                [24 + int(measure.textlength(vt.one_line(name))) + 4 for name, _ in legend])
    top = LINE * len(legend) + 8
    sheet = Image.new("RGB", (width, top + sum(max(t.height for t in row) + 4 for row in rows)), "white")
    writer = ImageDraw.Draw(sheet)
    for k, (name, colour) in enumerate(legend):
        writer.rectangle([4, 4 + k * LINE, 14, 14 + k * LINE], fill=colour)
        writer.text((20, 3 + k * LINE), vt.one_line(name), fill=(0, 0, 0))
    y = top
    for row in rows:
        x = 0
        for tile in row:
            sheet.paste(tile, (x, y))
            x += tile.width + 4
        y += max(t.height for t in row) + 4
    vt.save_png(sheet, target, BOX_GRID)
