"""References for the pretrained-weights tests, written from the published descriptions, not from vggtk:
torchvision's VGG state_dict layout and its ImageClassification preset (resize the shorter side to 256,
bilinear with antialias, centre crop 224 with its rounding, scale to 0-1, ImageNet mean and std), and the
authors' Caffe net (BGR, 0-255 minus the mean pixel, pools rounding up, FC layers run as convolutions)."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])
CAFFE_MEAN_BGR = torch.tensor([103.939, 116.779, 123.68])
# A narrow configuration A in torchvision's flat layout: conv widths and "M" for a 2x2 max-pool.
NARROW_A = [16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M"]


def real_photos() -> dict[str, np.ndarray]:
    """Seven real photographs (HWC uint8 RGB): six of scikit-image's and matplotlib's Grace Hopper."""
    import matplotlib
    import skimage.data

    out = {n: getattr(skimage.data, n)() for n in
           ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "rocket")}
    out["grace_hopper"] = np.asarray(Image.open(os.path.join(matplotlib.get_data_path(), "sample_data",
                                                             "grace_hopper.jpg")).convert("RGB"))
    return out


def at_preset_geometry(photo: np.ndarray, short: int = 256, crop: int = 224) -> np.ndarray:
    """The photo resized (PIL, bilinear) so its shorter side is ``short`` and both margins around a centred
    ``crop`` are even: every pipeline then takes the same pixels without resampling."""
    h, w = photo.shape[:2]
    long = 2 * round(short * max(h, w) / min(h, w) / 2)
    size = (long, short) if w >= h else (short, long)
    return np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR))


def torchvision_state(seed: int, classes: int = 1000, fc: int = 64, config=NARROW_A, in_chans: int = 3) -> dict:
    """Seeded random weights (He-scaled, non-zero biases) in torchvision's VGG layout."""
    g = torch.Generator().manual_seed(seed)
    sd, index, c = {}, 0, in_chans
    for v in config:
        if v == "M":
            index += 1
            continue
        sd[f"features.{index}.weight"] = torch.randn(v, c, 3, 3, generator=g) * (2 / (9 * c)) ** 0.5
        sd[f"features.{index}.bias"] = torch.randn(v, generator=g) * 0.1
        c, index = v, index + 2
    for k, (o, n) in {0: (fc, c * 49), 3: (fc, fc), 6: (classes, fc)}.items():
        sd[f"classifier.{k}.weight"] = torch.randn(o, n, generator=g) * (2 / n) ** 0.5
        sd[f"classifier.{k}.bias"] = torch.randn(o, generator=g) * 0.1
    return sd


def torchvision_preset(photo: np.ndarray) -> torch.Tensor:
    """torchvision's ImageClassification(crop_size=224) on a PIL image: (3, 224, 224)."""
    img = Image.fromarray(photo)
    w, h = img.size
    size = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)  # the long side truncated
    img = img.resize(size, Image.BILINEAR)
    w, h = img.size
    top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
    x = torch.from_numpy(np.array(img.crop((left, top, left + 224, top + 224)))).permute(2, 0, 1).float() / 255
    return (x - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]


def torchvision_trunk(sd: dict, x: torch.Tensor, config=NARROW_A) -> torch.Tensor:
    index = 0
    for v in config:
        if v == "M":
            x, index = F.max_pool2d(x, 2, 2), index + 1
            continue
        x = F.relu(F.conv2d(x, sd[f"features.{index}.weight"], sd[f"features.{index}.bias"], padding=1))
        index += 2
    return x


def torchvision_logits(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """torchvision's VGG forward: trunk, adaptive average pool to 7x7, the three Linear layers."""
    x = F.adaptive_avg_pool2d(torchvision_trunk(sd, x), (7, 7)).flatten(1)
    x = F.relu(F.linear(x, sd["classifier.0.weight"], sd["classifier.0.bias"]))
    x = F.relu(F.linear(x, sd["classifier.3.weight"], sd["classifier.3.bias"]))
    return F.linear(x, sd["classifier.6.weight"], sd["classifier.6.bias"])


def torchvision_dense_fc7(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """The paper's dense FC7 descriptor of a whole (normalised) image: FC6 as a 7x7 convolution, FC7 as a
    1x1, averaged over the map, L2-normalised."""
    fmap = torchvision_trunk(sd, x)
    w6 = sd["classifier.0.weight"].view(len(sd["classifier.0.weight"]), fmap.shape[1], 7, 7)
    x = F.relu(F.conv2d(fmap, w6, sd["classifier.0.bias"]))
    w7 = sd["classifier.3.weight"][:, :, None, None]
    x = F.relu(F.conv2d(x, w7, sd["classifier.3.bias"])).mean(dim=(2, 3))
    return F.normalize(x, dim=1)


def caffe_dense_scores(weights: dict, blocks, image_rgb: torch.Tensor, kernel: int = 7) -> torch.Tensor:
    """The authors' net, densely, on one whole uint8 RGB image (3, H, W): BGR, 0-255 minus the mean pixel,
    3x3 convs, pools rounding up, FC6 as a kxk convolution, FC7/FC8 as 1x1, class scores averaged."""
    x = image_rgb.float().flip(0)[None] - CAFFE_MEAN_BGR[:, None, None]
    w = {k: torch.from_numpy(v) for k, v in weights.items()}
    for b, (_, n) in enumerate(blocks, 1):
        for k in range(1, n + 1):
            x = F.relu(F.conv2d(x, w[f"conv{b}_{k}.weight"], w[f"conv{b}_{k}.bias"], padding=1))
        x = F.max_pool2d(x, 2, 2, ceil_mode=True)
    x = F.relu(F.conv2d(x, w["fc6.weight"].view(-1, x.shape[1], kernel, kernel), w["fc6.bias"]))
    x = F.relu(F.conv2d(x, w["fc7.weight"][:, :, None, None], w["fc7.bias"]))
    return F.conv2d(x, w["fc8.weight"][:, :, None, None], w["fc8.bias"]).mean(dim=(2, 3))[0]
