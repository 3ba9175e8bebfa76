"""``vggtk eval --task localisation``: the paper's localisation protocols (Appendix A) and a baseline.

- ``center`` (protocol 1): the centre crop at the single test scale Q; the box of the ground-truth class
  (PCR) or the one box (SCR) is mapped back to the image. Several checkpoints: their boxes' corners
  are averaged.
- ``dense`` (protocol 2): the localisation nets applied densely at their test scales, the boxes of each of
  the image's top-5 classes (from the ``--classifier`` checkpoint's dense protocol at the same scales)
  merged by OverFeat's greedy rule, each window's box rated by the classifier's score for the class at
  that window, the best-rated merged box answering (``dense.overfeat_merge``; ``--merge support`` keeps
  the earlier most-supported rule, ``dense.merge``); the threshold picked on the validation split; the
  classifier runs once per image and scale, shared by every head; several localisation checkpoints pool
  their boxes before the merge. Top-1 and top-5 localisation error.
- ``center-box`` (baseline): a box of the training split's mean relative size, centred in the image.
- ``gradcam-box`` (baseline, needs ``--classifier``): the classification net's own evidence for the true
  class: Grad-CAM (Selvaraju et al. 2017) on the centre view at the deepest conv block whose map is at
  least 4 x 4, upsampled, thresholded at a fraction of its maximum (picked on the val split), and the box
  around what is above it.

An image counts as localised when its box overlaps some ground-truth box of its class with IoU >= 0.5;
the localisation error is the share of images that are not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from rich.table import Table

import vgg_toolkit as vt

from .dense import candidates, class_map, merge, overfeat_merge
from .drawing import BOX_GRID, box_grid
from .scoring import localised

METHODS = ("center", "center-box")  # "dense" needs --classifier, so it runs when asked for
SAMPLES = 16  # images in the --boxes-png grid
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
CAM_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
HEADS = ("scr", "pcr")


@dataclass
class LocResult:
    method: str
    config: str
    test_scales: str
    images: int
    wrong: int
    seconds: float
    boxes: list = field(default_factory=list, repr=False)  # the first SAMPLES images' boxes, for the grid

    @property
    def error(self) -> float:
        return 100.0 * self.wrong / self.images if self.images else float("nan")

    def to_json(self) -> dict:
        return {"method": self.method, "config": self.config, "test_scales": self.test_scales, "images": self.images,
                "loc_err_pct": round(self.error, 6), "seconds": round(self.seconds, 6)}


def _check_heads(models, names) -> list:
    heads = []
    for model, name in zip(models, names):
        head = vt.model_info(model).head
        if head not in HEADS:
            raise vt.VggtkError(f"{name}: a {head} net; localisation needs a net with a scr or pcr head "
                                "(vggtk train --head scr|pcr --init-from CLASSIFIER)")
        heads.append(head)
    return heads


def _single_scale(request: vt.EvalRequest, model) -> int:
    """Protocol 1's one test scale: the first of ``--scales`` (which protocol 2 uses whole), else Q."""
    scales = request.options.get("scales")
    return vt.test_scales_for(model, scales[:1] if scales else None)[0]


def protocol_center(request: vt.EvalRequest) -> LocResult:
    heads = _check_heads(request.models, request.names)
    scales = [_single_scale(request, m) for m in request.models]
    preps = [vt.input_preprocessing(m, request.manifest) for m in request.models]
    wrong = seen = 0
    seconds = 0.0
    kept = []
    for batch in vt.read_split(request.manifest, request.split, batch_size=request.batch_size,
                               workers=request.workers, on_error=request.on_error, limit=request.limit,
                               with_boxes=True):
        height, width = batch.images.shape[-2:]
        start = time.perf_counter()
        boxes = 0
        for model, head, q, prep in zip(request.models, heads, scales, preps):
            crop = vt.model_info(model).input_size
            device = next(model.parameters()).device
            x = vt.center_view(prep.apply(batch.images.to(device)), q, crop)
            with torch.no_grad(), vt.model_form(model, fully_conv=False), vt.mixed_precision(device):
                codes = model(x).float().cpu()
            if head == "pcr":
                codes = codes.view(len(codes), -1, 4)[torch.arange(len(codes)), batch.labels]
            boxes = boxes + vt.boxes_from_center_view(vt.decode_boxes(codes, crop, crop), height, width, q, crop)
        seconds += time.perf_counter() - start
        boxes = boxes / len(request.models)
        for box, label, gt, gt_labels in zip(boxes, batch.labels.tolist(), batch.boxes, batch.box_labels):
            wrong += not localised(box, gt, gt_labels, label)
            seen += 1
        kept.extend(boxes[:SAMPLES - len(kept)])
    names = " + ".join(vt.model_info(m).arch for m in request.models)
    return LocResult("centre crop, " + ("true class's box" if "pcr" in heads else "one box"), names,
                     ",".join(map(str, sorted(set(scales)))), seen, wrong, seconds, kept)


def loc_scales(request: vt.EvalRequest, model) -> tuple[int, ...]:
    """The test scales of protocol 2 (and of its classification net): ``--scales``; else the single Q;
    with ``--multi-scale`` the paper's Table 9 pair {S-32, S} for a fixed S (``--wide-scales`` adds S+32)."""
    multi = request.options.get("multi_scale", False)
    scales = vt.test_scales_for(model, request.options.get("scales"), multi=multi)
    info = vt.model_info(model)
    fixed = info.train_scale is None or not info.train_scale.jittered
    if multi and request.options.get("scales") is None and fixed and not request.plugin_options.get("wide_scales"):
        scales = scales[:2]
    return scales


def _dense_guesses(request: vt.EvalRequest, split: str, classifier, heads) -> list:
    """Per image: (label, true boxes, true box labels, top-5 classes, their candidate boxes and ratings).
    The classification net runs once per image and scale, its results shared by every localisation net:
    its dense posteriors over the scales give the top 5, its posteriors per window rate the boxes."""
    preps = {id(m): vt.input_preprocessing(m, request.manifest) for m in [*request.models, classifier]}
    scales = sorted({q for m in request.models for q in loc_scales(request, m)})
    classify = vt.get_evaluator("dense", scales=scales)
    device = next(classifier.parameters()).device
    out = []
    for batch in vt.read_split(request.manifest, split, batch_size=1, workers=request.workers,
                               on_error=request.on_error, limit=request.limit if split == request.split else None,
                               with_boxes=True):
        def seen_by(model):
            return preps[id(model)].apply(batch.images.to(next(model.parameters()).device))

        image = seen_by(classifier)
        with vt.mixed_precision(device):
            top5 = classify(classifier, image)[0].topk(min(5, request.manifest.num_classes)).indices
            maps = {q: class_map(classifier, image, q) for q in scales}
        classes = top5.tolist()

        def rate(q, grid):  # the classifier's windows are the localisation net's when both share a geometry
            found = maps[q]
            if tuple(found.shape[-2:]) != tuple(grid):
                found = torch.nn.functional.interpolate(found[None], size=grid, mode="nearest")[0]
            return found

        found = candidates(request.models, heads, [seen_by(m) for m in request.models],
                           lambda model: loc_scales(request, model), classes, rate)
        out.append((int(batch.labels[0]), batch.boxes[0], batch.box_labels[0], classes, found))
    return out


MERGES = ("overfeat", "support")
MATCH_THRESHOLDS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)  # OverFeat's match score: centre distance + (1 - IoU)


def answer(found: tuple, rule: str, threshold: float) -> torch.Tensor:
    """The box a class's candidates merge to: OverFeat's (the best-rated merged box) or today's (the
    best-supported cluster)."""
    boxes, ratings = found
    return overfeat_merge(boxes, ratings, threshold)[0] if rule == "overfeat" else merge(boxes, threshold)


def _dense_errors(guesses, rule: str, threshold: float) -> tuple[int, int]:
    """(top-1 wrong, top-5 wrong) over the images, merging at ``threshold``."""
    wrong1 = wrong5 = 0
    for label, gt, gt_labels, classes, found in guesses:
        right = [c == label and localised(answer(found[c], rule, threshold), gt, gt_labels, label) for c in classes]
        wrong1 += not right[0]
        wrong5 += not any(right)
    return wrong1, wrong5


def protocol_dense(request: vt.EvalRequest) -> list[LocResult]:
    heads = _check_heads(request.models, request.names)
    path = request.plugin_options.get("classifier")
    if not path:
        raise vt.VggtkError("--methods dense: protocol 2 takes its top-5 classes from a classification net; "
                            "name one with --classifier CKPT")
    device = next(request.models[0].parameters()).device
    classifier = vt.load_trained(path, device, command="eval")
    if vt.model_info(classifier).head != "classification":
        raise vt.VggtkError(f"--classifier {path}: a {vt.model_info(classifier).head} net, not a classifier")
    vt.check_fits_data([classifier], request.manifest, [str(path)])
    options = request.plugin_options
    rule = options.get("merge") or ("support" if options.get("merge_iou") is not None else "overfeat")
    if rule not in MERGES:
        raise vt.VggtkError(f"--merge {rule!r}: one of {', '.join(MERGES)}")
    other = "merge_iou" if rule == "overfeat" else "merge_score"
    if options.get(other) is not None:
        raise vt.VggtkError(f"--{other.replace('_', '-')} is a threshold of the other merge than --merge {rule}")
    given = options.get("merge_score" if rule == "overfeat" else "merge_iou")
    grid = MATCH_THRESHOLDS if rule == "overfeat" else THRESHOLDS
    threshold, picked = given, "given"
    if threshold is None:  # picked on the validation split, never on the one reported
        if "val" not in request.manifest.splits:
            raise vt.VggtkError(f"{request.manifest.path}: no val split to pick the merge threshold on; give "
                                f"{'--merge-score' if rule == 'overfeat' else '--merge-iou'}")
        val = _dense_guesses(request, "val", classifier, heads)
        pick = (lambda t: (_dense_errors(val, rule, t)[1], t)) if rule == "support" else \
            (lambda t: (_dense_errors(val, rule, t)[1], -t))  # ties: the larger score merges more
        threshold, picked = min(grid, key=pick), "picked on val"
    start = time.perf_counter()
    guesses = _dense_guesses(request, request.split, classifier, heads)
    wrong1, wrong5 = _dense_errors(guesses, rule, threshold)
    seconds = time.perf_counter() - start
    top1_boxes = [answer(found[classes[0]], rule, threshold) for _, _, _, classes, found in guesses[:SAMPLES]]
    names = " + ".join(vt.model_info(m).arch for m in request.models)
    scales = ",".join(map(str, sorted({q for m in request.models for q in loc_scales(request, m)})))
    method = (f"dense, OverFeat's merge below a match score of {threshold:g}" if rule == "overfeat" else
              f"dense, most support, merged at IoU >= {threshold:g}") + f" ({picked})"
    return [LocResult(method + ", top-1", names, scales, len(guesses), wrong1, seconds, top1_boxes),
            LocResult(method + ", top-5", names, scales, len(guesses), wrong5, seconds)]


def mean_relative_size(manifest: vt.Manifest) -> tuple[float, float]:
    """The mean width and height of the training split's main boxes, as fractions of their images."""
    widths, heights = [], []
    for batch in vt.read_split(manifest, "train", batch_size=64, with_boxes=True):
        h, w = batch.images.shape[-2:]
        for label, boxes, box_labels in zip(batch.labels.tolist(), batch.boxes, batch.box_labels):
            box = vt.main_box(boxes, box_labels, label)
            if box is not None:
                widths.append(float(box[2] - box[0]) / w)
                heights.append(float(box[3] - box[1]) / h)
    if not widths:
        raise vt.VggtkError(f"{manifest.path}: the training split holds no boxes to size the baseline")
    return sum(widths) / len(widths), sum(heights) / len(heights)


def baseline_center_box(request: vt.EvalRequest) -> LocResult:
    rw, rh = mean_relative_size(request.manifest)
    wrong = seen = 0
    kept = []
    for batch in vt.read_split(request.manifest, request.split, batch_size=request.batch_size,
                               workers=request.workers, on_error=request.on_error, limit=request.limit,
                               with_boxes=True):
        h, w = batch.images.shape[-2:]
        box = torch.tensor([w * (1 - rw) / 2, h * (1 - rh) / 2, w * (1 + rw) / 2, h * (1 + rh) / 2])
        for label, gt, gt_labels in zip(batch.labels.tolist(), batch.boxes, batch.box_labels):
            wrong += not localised(box, gt, gt_labels, label)
            seen += 1
        kept.extend([box] * min(len(batch.labels), SAMPLES - len(kept)))
    return LocResult(f"centre box ({rw:.2f} x {rh:.2f} of the image)", "baseline", "-", seen, wrong, 0.0, kept)


def _cam_tap(model, crop: int) -> str:
    if not isinstance(model, vt.FeatureTaps):
        raise vt.VggtkError("--methods gradcam-box: the classifier has no feature taps to take Grad-CAM from")
    blocks = sorted((t for t in model.feature_taps if t.startswith("block") and t[5:].isdigit()), key=lambda t: int(t[5:]))
    usable = [t for t in blocks if crop // 2 ** int(t[5:]) >= 4]
    if not usable:
        raise vt.VggtkError("--methods gradcam-box: the classifier has no conv block with a map of 4 x 4 or more")
    return usable[-1]


def _cams(request: vt.EvalRequest, split: str, classifier) -> list:
    """Per image: (Grad-CAM of its true class on the centre view, upsampled to the window; image size; label;
    true boxes; their labels)."""
    info = vt.model_info(classifier)
    crop, q = info.input_size, vt.test_scales_for(classifier)[0]
    tap, prep = _cam_tap(classifier, crop), vt.input_preprocessing(classifier, request.manifest)
    device = next(classifier.parameters()).device
    out = []
    for batch in vt.read_split(request.manifest, split, batch_size=request.batch_size, workers=request.workers,
                               on_error=request.on_error, limit=request.limit if split == request.split else None,
                               with_boxes=True):
        x = vt.center_view(prep.apply(batch.images.to(device)), q, crop)
        with torch.enable_grad(), vt.model_form(classifier, fully_conv=False):
            taps = classifier.forward_features(x, taps=(tap, "logits"))
            score = taps["logits"].gather(1, batch.labels.to(device)[:, None]).sum()
            (grad,) = torch.autograd.grad(score, taps[tap])
        cam = torch.relu((grad.mean((2, 3), keepdim=True) * taps[tap]).sum(1, keepdim=True)).detach()
        cam = torch.nn.functional.interpolate(cam, size=(crop, crop), mode="bilinear", align_corners=False)[:, 0]
        for i in range(len(batch.labels)):
            out.append((cam[i].cpu(), batch.images.shape[-2:], int(batch.labels[i]), batch.boxes[i],
                        batch.box_labels[i]))
    return out, q, crop


def _cam_box(cam: torch.Tensor, threshold: float, crop: int) -> torch.Tensor:
    on = cam >= threshold * cam.max()
    if cam.max() <= 0 or not on.any():  # no evidence: the whole window
        return torch.tensor([0.0, 0.0, float(crop), float(crop)])
    ys, xs = torch.nonzero(on, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def _cam_boxes(cams, q: int, crop: int, threshold: float) -> tuple[int, list]:
    """(images not localised, their boxes in image pixels)."""
    wrong, boxes = 0, []
    for cam, (h, w), label, gt, gt_labels in cams:
        boxes.append(vt.boxes_from_center_view(_cam_box(cam, threshold, crop)[None], h, w, q, crop)[0])
        wrong += not localised(boxes[-1], gt, gt_labels, label)
    return wrong, boxes


def baseline_gradcam_box(request: vt.EvalRequest) -> list[LocResult]:
    path = request.plugin_options.get("classifier")
    if not path:
        raise vt.VggtkError("--methods gradcam-box: the baseline takes its evidence from a classification net; "
                            "name one with --classifier CKPT")
    classifier = vt.load_trained(path, next(request.models[0].parameters()).device, command="eval")
    vt.check_fits_data([classifier], request.manifest, [str(path)])
    if "val" not in request.manifest.splits:
        raise vt.VggtkError(f"{request.manifest.path}: no val split to pick the Grad-CAM threshold on")
    val, q, crop = _cams(request, "val", classifier)
    threshold = min(CAM_THRESHOLDS, key=lambda t: (_cam_boxes(val, q, crop, t)[0], t))
    start = time.perf_counter()
    cams, q, crop = _cams(request, request.split, classifier)
    wrong, boxes = _cam_boxes(cams, q, crop, threshold)
    return [LocResult(f"Grad-CAM box at {threshold:g} of its peak (picked on val)", "baseline: "
                      f"{vt.model_info(classifier).arch}", str(q), len(cams), wrong, time.perf_counter() - start,
                      boxes[:SAMPLES])]


RUNNERS = {"center": lambda r: [protocol_center(r)], "dense": protocol_dense,
           "center-box": lambda r: [baseline_center_box(r)], "gradcam-box": baseline_gradcam_box}


def _draw_grid(request: vt.EvalRequest, results: list[LocResult], target) -> None:
    samples = []
    for batch in vt.read_split(request.manifest, request.split, batch_size=SAMPLES, on_error=request.on_error,
                               limit=SAMPLES, with_boxes=True):
        samples += list(zip(batch.images, batch.labels.tolist(), batch.boxes, batch.box_labels))
    methods = [(f"{r.config}: {r.method}", r.boxes) for r in results if r.boxes]
    box_grid(samples, methods, list(request.manifest.classes), target)


def localisation_task(request: vt.EvalRequest) -> dict:
    methods = list(request.methods or METHODS)
    unknown = [m for m in methods if m not in RUNNERS]
    if unknown:
        raise vt.VggtkError(f"--methods: {', '.join(unknown)}: not a localisation protocol; known: "
                            f"{', '.join(RUNNERS)}")
    grid = request.plugin_options.get("boxes_png")
    if grid is not None:
        grid = vt.check_output_file(grid, BOX_GRID)
    for model, name in zip(request.models, request.names):  # before any image: PCR picks boxes by class index
        head = vt.model_info(model).head
        vt.check_fits_data([model], request.manifest, [name], classes=head == "pcr")
    results = [result for m in methods for result in RUNNERS[m](request)]
    table = Table(title=vt.plain(f"{request.manifest.title} / {request.split}: "
                                 "localisation error (%)"))
    for col, justify in (("config", "left"), ("test Q", "left"), ("method", "left"), ("loc err", "right"),
                         ("images", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for r in results:
        table.add_row(vt.plain(r.config), r.test_scales, vt.plain(r.method), f"{r.error:.2f}", f"{r.images:,}")
    vt.print_table(request.console, table)
    request.console.print("an image is localised when its box overlaps a true box of its class with IoU >= 0.5",
                          markup=False)
    if grid is not None:
        _draw_grid(request, results, grid)
        request.console.print(vt.plain(f"true and predicted boxes of {SAMPLES} {request.split} images drawn in {grid}"))
    return {"error_unit": "percent", "results": [r.to_json() for r in results]}
