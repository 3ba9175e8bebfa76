"""Where samples come from before they are shards: an image folder, a CSV / JSON list (``files``), or a
packaged source: Fashion-MNIST (``fashion_mnist``) or the bundled localisation set, objects cut from
labelme's examples and pasted on real photos (``labelme_composites``)."""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path

from ...contract.options import check_value
from ...errors import VggtkError
from .base import SPLITS, Source
from .fashion_mnist import FASHION_MNIST_ROOT, fashion_mnist, read_idx
from .files import image_folder, image_list
from .garments_in_scenes import garments_in_scenes
from .garments_on_photos import garments_on_photos
from .labelme_composites import localisation_source

PACKAGED = {
    "fashion-mnist": (fashion_mnist, "class-balanced Fashion-MNIST subset (Debian dataset-fashion-mnist): 28x28 "
                                     "greyscale PNG"),
    "localisation": (localisation_source, "real objects on real photos with exact boxes (labelme-examples, "
                                          "scikit-image photos)"),
    "garments-on-photos": (garments_on_photos, "Fashion-MNIST garments pasted on real photos, exact boxes: a "
                                               "localisation set big enough to measure (56x56 RGB PNG)"),
    "garments-in-scenes": (garments_in_scenes, "Fashion-MNIST garments of any size anywhere on real photos, half "
                                               "with a distractor of another class: a localisation set where "
                                               "the paper's protocols differ (128x128 RGB PNG)"),
}


def open_source(src: str, data_root: str | None = None, **options) -> Source:
    """A folder, a ``.csv`` / ``.json`` list, or the name of a packaged source (``PACKAGED``), whose
    ``options`` (split sizes, seed) are checked against its signature: known names, whole numbers >= 0."""
    if src in PACKAGED and not Path(src).exists():
        build = PACKAGED[src][0]
        known = [p for p in inspect.signature(build).parameters if p != "root"]
        for key, value in options.items():
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise VggtkError(f"--source-option {key}: not an option of {src}{hint}; it takes {', '.join(known)}")
            if check_value(value, int, f"--source-option {key}") < 0:
                raise VggtkError(f"--source-option {key}: must be at least 0, got {value}")
        if options.get("train") == 0:
            raise VggtkError("--source-option train: the training split may not be empty")
        return build(data_root, **options)
    if options:
        raise VggtkError(f"--source-option applies to packaged sources ({', '.join(PACKAGED)}), not to {src}")
    path = Path(src)
    if path.is_dir():
        return image_folder(path)
    if path.is_file() and path.suffix.lower() in (".csv", ".json"):
        return image_list(path)
    raise VggtkError(f"{src}: not an image folder, a .csv / .json list, nor a packaged source "
                     f"({', '.join(PACKAGED)})")
