"""Top-k error, per-class accuracy and the confusion matrix, against counts made by hand."""

import math

import pytest
import torch

from vgg_toolkit import VggtkError
from vgg_toolkit.evaluation.metrics import (
    confusion_matrix, per_class_accuracy, save_confusion_png, topk_error, topk_errors,
)

# 4 images, 6 classes; the label's rank among the posteriors is 1, 2, 6 and 5
POSTERIORS = torch.tensor([
    [0.50, 0.10, 0.10, 0.10, 0.10, 0.10],   # label 0: rank 1
    [0.05, 0.30, 0.40, 0.10, 0.10, 0.05],   # label 1: rank 2
    [0.30, 0.25, 0.01, 0.20, 0.14, 0.10],   # label 2: rank 6
    [0.26, 0.25, 0.24, 0.05, 0.15, 0.05],   # label 4: rank 4 (0.26, 0.25, 0.24 above it)
])
LABELS = torch.tensor([0, 1, 2, 4])


def test_topk_error_counts_labels_outside_the_top_k():
    assert topk_error(POSTERIORS, LABELS, 1) == pytest.approx(3 / 4)
    assert topk_error(POSTERIORS, LABELS, 2) == pytest.approx(2 / 4)
    assert topk_error(POSTERIORS, LABELS, 4) == pytest.approx(1 / 4)
    assert topk_error(POSTERIORS, LABELS, 5) == pytest.approx(1 / 4)
    assert topk_error(POSTERIORS, LABELS, 6) == 0.0
    assert topk_errors(POSTERIORS, LABELS, (1, 5)) == pytest.approx({1: 0.75, 5: 0.25})


def test_topk_error_matches_a_rank_count_on_random_posteriors():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(200, 17, generator=g).softmax(1)
    y = torch.randint(0, 17, (200,), generator=g)
    rank = (p > p[torch.arange(200), y][:, None]).sum(1) + 1  # no ties in random floats
    for k in (1, 3, 5):
        assert topk_error(p, y, k) == pytest.approx((rank > k).float().mean().item())


def test_top5_with_fewer_than_five_classes_is_zero_not_an_error():
    assert topk_error(torch.rand(3, 2), torch.tensor([0, 1, 1]), 5) == 0.0


def test_bad_labels_and_shapes_are_clear_errors():
    with pytest.raises(VggtkError, match="label 7 is outside the 6 classes"):
        topk_error(POSTERIORS, torch.tensor([0, 1, 7, 0]))
    with pytest.raises(VggtkError, match="4 posteriors but 3 labels"):
        topk_error(POSTERIORS, torch.tensor([0, 1, 2]))
    with pytest.raises(VggtkError):
        topk_error(POSTERIORS, LABELS, 0)


def test_confusion_matrix_and_per_class_accuracy():
    cm = confusion_matrix(POSTERIORS, LABELS)
    assert cm.shape == (6, 6) and cm.dtype == torch.int64 and cm.sum() == 4
    # (true, predicted): 0->0, 1->2, 2->0, 4->0
    expected = torch.zeros(6, 6, dtype=torch.int64)
    for t, p in [(0, 0), (1, 2), (2, 0), (4, 0)]:
        expected[t, p] += 1
    assert torch.equal(cm, expected)
    assert torch.equal(confusion_matrix(POSTERIORS.argmax(1), LABELS, num_classes=6), cm)
    acc = per_class_accuracy(cm)
    assert acc[0] == 1.0 and acc[1] == 0.0 and acc[2] == 0.0 and acc[4] == 0.0
    assert math.isnan(acc[3]) and math.isnan(acc[5])  # no images of those classes


def test_confusion_png_is_a_real_image(tmp_path):
    from PIL import Image

    cm = confusion_matrix(POSTERIORS, LABELS)
    path = save_confusion_png(cm, tmp_path / "sub" / "cm.png", class_names=list("abcdef"))
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100
        # not a blank canvas: the matrix cells are drawn in several colours
        assert len(img.convert("RGB").getcolors(1 << 24)) > 10


def test_error_rates_are_counted_in_whole_images():
    """255 of 2000 wrong is 12.75%, exactly: a float32 mean made it 12.749999 (printed 12.7)."""
    labels = torch.zeros(2000, dtype=torch.long)
    posteriors = torch.zeros(2000, 10)
    posteriors[:, 0] = 1.0
    posteriors[:255, 0], posteriors[:255, 3] = 0.3, 0.7  # wrong at top-1, right at top-5
    errors = topk_errors(posteriors, labels, (1, 5))
    assert errors[1] == 255 / 2000 and f"{100 * errors[1]:.2f}" == "12.75" and errors[5] == 0.0
