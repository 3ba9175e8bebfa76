"""The bundled localisation set: real objects on real photos, with exact boxes.

Objects are cut from real photos along their hand-drawn polygons (Debian's ``labelme-examples``:
PASCAL VOC 2011 photos, a video frame and an Amazon Picking Challenge shelf photo) and pasted, scaled
and possibly mirrored, onto crops of real photos (scikit-image's bundled photos, public domain or
CC0). The mask is pasted binary, so the box -- the extent of the pasted pixels -- is exact. The test
split also holds the real annotated photos themselves, with their own boxes (scaled with the photo).

One object per composite, so each image has one class and one box, as in the paper's localisation
task (Appendix A).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ...errors import VggtkError
from ..shards.records import Record
from .base import Source

LABELME_ROOT = "/usr/share/doc/labelme-examples/examples"  # Debian package labelme-examples
LABELME_ENV = "VGGTK_LABELME_EXAMPLES"

# labelme label -> our class name. Polygons under MIN_AREA px^2 are occluded fragments (the bottle and
# the sofa parts of 2011_000003/6 among them), so those classes have no object to paste.
CLASS_NAMES = {"person": "person", "bus": "bus", "car": "car", "chair": "chair",
               "highland_6539_self_stick_notes": "sticky notes", "mead_index_cards": "index cards",
               "kong_air_dog_squeakair_tennis_ball": "tennis ball"}
CLASSES = ["person", "bus", "car", "chair", "sticky notes", "index cards", "tennis ball"]
OBJECT_FILES = ["instance_segmentation/data_annotated/2011_000003.json",
                "instance_segmentation/data_annotated/2011_000006.json",
                "instance_segmentation/data_annotated/2011_000025.json",
                "video_annotation/data_annotated/00000100.json",
                "tutorial/apc2016_obj3.json"]
PHOTO_FILES = ["bbox_detection/data_annotated/2011_000003.json",
               "bbox_detection/data_annotated/2011_000006.json",
               "bbox_detection/data_annotated/2011_000025.json"] + [
    f"video_annotation/data_annotated/{i:08d}.json" for i in range(100, 105)]
# scikit-image's photos: public domain (NASA, SpaceX) or CC0 (chelsea, coffee, grass, gravel, brick).
BACKGROUNDS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
               "grass.png", "gravel.png", "brick.png"]
MIN_AREA = 2500
CANVAS = (256, 192)
LICENCE = (
    "Objects and the annotated test photos: Debian package labelme-examples (labelme by Kentaro Wada, "
    "GPL-3+; photos from PASCAL VOC 2011 and the Amazon Picking Challenge 2016 as shipped there). "
    "Backgrounds: scikit-image's bundled photos (astronaut, hubble_deep_field: NASA, public domain; "
    "rocket: SpaceX, public domain; chelsea, coffee, grass, gravel, brick: CC0).")


def _labelme_root(root) -> Path:
    path = Path(root or os.environ.get(LABELME_ENV) or LABELME_ROOT)
    if not path.is_dir():
        raise VggtkError(f"{path}: labelme examples not found (apt-get install labelme-examples, or set "
                         f"{LABELME_ENV} / --data-root)")
    return path


def _skimage_dir() -> Path:
    try:
        import skimage.data
    except ImportError:
        raise VggtkError("building the localisation set needs scikit-image (pip install -e '.[demo]')") from None
    return Path(skimage.data.__file__).parent


def _polygon_mask(size, points) -> np.ndarray:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in points], fill=255)
    return np.asarray(mask) > 127


@dataclass(frozen=True)
class _Object:
    name: str
    label: int
    file: str  # labelme json, relative to the root
    index: int  # shape index in it


@lru_cache(maxsize=None)
def _load_labelme(root: str, rel: str):
    path = Path(root) / rel
    meta = json.loads(path.read_text())
    image = path.parent / meta["imagePath"]
    if image.suffix.lower() not in (".jpg", ".jpeg", ".png"):  # the tutorial's json names itself
        image = path.with_suffix(".jpg")
    with Image.open(image) as img:
        photo = img.convert("RGB")
    return meta, photo


def _objects(root: Path) -> list[_Object]:
    out = []
    for rel in OBJECT_FILES:
        meta, photo = _load_labelme(str(root), rel)
        for i, shape in enumerate(meta["shapes"]):
            name = CLASS_NAMES.get(shape["label"])
            if name is None or shape.get("shape_type", "polygon") != "polygon":
                continue
            if _polygon_mask(photo.size, shape["points"]).sum() >= MIN_AREA:
                out.append(_Object(name, CLASSES.index(name), rel, i))
    return out


@lru_cache(maxsize=64)
def _cutout(root: str, rel: str, index: int) -> tuple[Image.Image, np.ndarray]:
    """The object's bounding rectangle of the photo and its mask there."""
    meta, photo = _load_labelme(root, rel)
    mask = _polygon_mask(photo.size, meta["shapes"][index]["points"])
    ys, xs = np.nonzero(mask)
    x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return photo.crop((x1, y1, x2, y2)), mask[y1:y2, x1:x2]


@lru_cache(maxsize=None)
def _background(path: str) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


@dataclass(frozen=True)
class CompositeRef:
    key: str
    root: str
    obj: _Object
    background: str
    seed: int
    split: str

    def load(self) -> Record:
        rng = np.random.default_rng(self.seed)
        bg = _background(self.background)
        cw, ch = CANVAS
        # A random crop of the background with the canvas's aspect ratio, 50-100% of what fits.
        fit = min(bg.size[0] / cw, bg.size[1] / ch)
        scale = fit * rng.uniform(0.5, 1.0)
        bw, bh = cw * scale, ch * scale
        bx, by = rng.uniform(0, bg.size[0] - bw), rng.uniform(0, bg.size[1] - bh)
        canvas = bg.resize(CANVAS, Image.BILINEAR, box=(bx, by, bx + bw, by + bh))
        patch, mask = _cutout(self.root, self.obj.file, self.obj.index)
        if rng.random() < 0.5:
            patch, mask = patch.transpose(Image.FLIP_LEFT_RIGHT), mask[:, ::-1]
        # The object's longer side takes 35-80% of the canvas's matching side, and it must fit.
        pw, ph = patch.size
        s = rng.uniform(0.35, 0.8) * (cw / pw if pw / cw >= ph / ch else ch / ph)
        s = min(s, 0.95 * cw / pw, 0.95 * ch / ph)
        ow, oh = max(8, round(pw * s)), max(8, round(ph * s))
        patch = patch.resize((ow, oh), Image.BILINEAR)
        alpha = Image.fromarray((mask * 255).astype(np.uint8)).resize((ow, oh), Image.BILINEAR)
        hard = np.asarray(alpha) >= 128  # binary: the box below is exactly the pasted pixels' extent
        x, y = int(rng.integers(0, cw - ow + 1)), int(rng.integers(0, ch - oh + 1))
        canvas.paste(patch, (x, y), Image.fromarray((hard * 255).astype(np.uint8)))
        ys, xs = np.nonzero(hard)
        box = [float(x + xs.min()), float(y + ys.min()), float(x + xs.max() + 1), float(y + ys.max() + 1)]
        return Record(self.key, _jpeg(canvas), "jpg", self.obj.label, [box], [self.obj.label],
                      meta={"object": f"{Path(self.obj.file).stem}#{self.obj.index}",
                            "background": Path(self.background).stem})


@dataclass(frozen=True)
class PhotoRef:
    key: str
    root: str
    file: str
    split: str = "test"
    max_side: int = 500

    def load(self) -> Record:
        meta, photo = _load_labelme(self.root, self.file)
        scale = min(1.0, self.max_side / max(photo.size))
        size = (round(photo.size[0] * scale), round(photo.size[1] * scale))
        sx, sy = size[0] / photo.size[0], size[1] / photo.size[1]
        boxes, labels = [], []
        for shape in meta["shapes"]:
            name = CLASS_NAMES.get(shape["label"])
            if name is None:
                continue
            pts = np.asarray(shape["points"], dtype=np.float64)
            x1, y1 = np.clip(pts.min(0), 0, None)
            x2, y2 = np.minimum(pts.max(0), photo.size)
            boxes.append([x1 * sx, y1 * sy, x2 * sx, y2 * sy])
            labels.append(CLASSES.index(name))
        if not boxes:
            raise VggtkError(f"{self.file}: no box of a known class")
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
        image = photo if size == photo.size else photo.resize(size, Image.BILINEAR)
        return Record(self.key, _jpeg(image), "jpg", labels[int(np.argmax(areas))], boxes, labels,
                      meta={"photo": Path(self.file).stem})


def localisation_source(root: str | None = None, train: int = 200, val: int = 40, test: int = 40,
                        seed: int = 0) -> Source:
    """``train`` / ``val`` / ``test`` composites (objects cycled evenly, backgrounds drawn at random), and
    the annotated photos in the test split."""
    lroot = _labelme_root(root)
    objects = _objects(lroot)
    if not objects:
        raise VggtkError(f"{lroot}: no objects found in the labelme examples")
    backgrounds = [str(_skimage_dir() / name) for name in BACKGROUNDS]
    rng = np.random.default_rng(seed)
    refs: list = []
    n = 0
    for split, count in (("train", train), ("val", val), ("test", test)):
        for i in range(count):
            obj = objects[n % len(objects)]
            bg = backgrounds[int(rng.integers(len(backgrounds)))]
            refs.append(CompositeRef(f"loc_{split}_{i:04d}", str(lroot), obj, bg, int(rng.integers(2**62)), split))
            n += 1
    refs += [PhotoRef(f"photo_{Path(f).stem}", str(lroot), f) for f in PHOTO_FILES if (lroot / f).exists()]
    return Source("localisation", list(CLASSES), refs, channels=3, info={
        "source": {"kind": "localisation", "packages": ["labelme-examples", "scikit-image"], "seed": seed,
                   "objects": len(objects), "canvas": list(CANVAS),
                   "note": "loc_* keys: one real object pasted on a real photo, box = pasted pixels' extent; "
                           "photo_* keys (test split): real annotated photos, boxes from their annotation"},
        "licence": LICENCE})
