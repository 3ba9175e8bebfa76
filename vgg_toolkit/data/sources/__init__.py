"""Where samples come from before they are shards: an image folder, a CSV / JSON list (``files``), or a
packaged source: Fashion-MNIST (``fashion_mnist``) or the bundled localisation set, objects cut from
labelme's examples and pasted on real photos (``labelme_composites``)."""

from __future__ import annotations

from pathlib import Path

from ...errors import VggtkError
from .base import SPLITS, Source
from .fashion_mnist import FASHION_MNIST_ROOT, fashion_mnist, read_idx
from .files import image_folder, image_list
from .labelme_composites import localisation_source

PACKAGED = {
    "fashion-mnist": "class-balanced Fashion-MNIST subset (Debian dataset-fashion-mnist): 28x28 greyscale PNG",
    "localisation": "real objects on real photos with exact boxes (labelme-examples, scikit-image photos)",
}


def open_source(src: str, data_root: str | None = None, **options) -> Source:
    """A folder, a ``.csv`` / ``.json`` list, or the name of a packaged source (``PACKAGED``)."""
    if src == "fashion-mnist" and not Path(src).exists():
        return fashion_mnist(data_root, **options)
    if src == "localisation" and not Path(src).exists():
        return localisation_source(data_root, **options)
    path = Path(src)
    if path.is_dir():
        return image_folder(path)
    if path.is_file() and path.suffix.lower() in (".csv", ".json"):
        return image_list(path)
    raise VggtkError(f"{src}: not an image folder, a .csv / .json list, nor a packaged source "
                     f"({', '.join(PACKAGED)})")
