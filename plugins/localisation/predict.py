"""``vggtk predict``: a user's own photos through trained nets: the top-5 classes of each (any evaluation
protocol, the centre crop by default) and, given a localisation net, the box of its top class."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import List, Optional

import torch
import typer
from PIL import ImageDraw
from rich.console import Console
from rich.table import Table

import vgg_toolkit as vt

from .drawing import DRAWING, draw_box, is_box, to_pil
from .evaluate import HEADS

PREDICTIONS = "predictions"
CSV_MARK = f"# written_by: vggtk; vggtk_kind: {PREDICTIONS}\n"  # a CSV's one place for the mark: a comment


WEIGHTS_SUFFIXES = {".safetensors", ".pth", ".pt", ".caffemodel"}


def is_checkpoint(path: Path) -> bool:
    """A weights file, a checkpoint directory or a catalogue name (not an image)."""
    return (path.suffix in WEIGHTS_SUFFIXES or (path.is_dir() and (path / "model.safetensors").is_file())
            or (not path.exists() and vt.find_weights(str(path)) is not None))


def image_files(paths: list[Path]) -> list[Path]:
    """The images named, and those in the folders named (sorted, recursively)."""
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in vt.IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise vt.VggtkError(f"{path}: no such image, folder or checkpoint")
    if not paths:
        raise vt.VggtkError("name images or folders of images after the checkpoints")
    if not found:
        raise vt.VggtkError(f"no images in {', '.join(map(str, paths))}")
    return found


def drawing_targets(images: list[Path], folder: Path) -> list[Path]:
    """Where each image's drawing goes: its path below the images' common folder, mirrored in ``folder``,
    its own suffix kept in the name (``dup1/x.jpg`` -> ``dup1/x.jpg.png``), so no two images share one."""
    resolved = [p.resolve() for p in images]
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    return [folder / p.relative_to(root).with_name(p.name + ".png") for p in resolved]


def predict_command(
    paths: List[Path] = typer.Argument(..., help="Checkpoints (a directory, a weights file or a catalogue name; several "
                                       "classifiers form an ensemble; a scr/pcr one adds boxes), then images or "
                                       "folders of images."),
    weights: List[str] = typer.Option([], "--weights", help="Pretrained weights by catalogue name (vggtk weights "
                                      "list) or file; more nets of the ensemble."),
    preprocess: Optional[str] = typer.Option(None, help=vt.PREPROCESS_HELP),
    method: str = typer.Option("center", help="Classification protocol: center, dense, multicrop, combined."),
    out: Optional[Path] = typer.Option(None, help="Write the predictions as JSON, or CSV when the name ends in .csv."),
    draw: Optional[Path] = typer.Option(None, help="Write each image with its box and label into this folder."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    on_error: str = typer.Option("fail", help="An unreadable image: fail | skip (counted and named)."),
    plugin_options: dict | None = None,
):
    """Top-5 classes of each image, and with a localisation net its box; as a table, JSON or CSV."""
    vt.check_policy(on_error)
    assume = vt.parse_preprocess(preprocess)
    checkpoints = [p for p in paths if is_checkpoint(p)] + [Path(w) for w in weights]
    if not checkpoints:
        raise vt.VggtkError("name at least one checkpoint before the images (a directory holding model.safetensors, "
                            "a weights file or a catalogue name), or give --weights")
    images = image_files([p for p in paths if not is_checkpoint(p)])
    if out is not None:
        vt.check_output_file(out, PREDICTIONS)
    if draw is not None and draw.exists() and not draw.is_dir():
        raise vt.VggtkError(f"--draw {draw}: is a file; give a folder")
    targets = drawing_targets(images, draw) if draw is not None else []
    for target in targets:  # said before any work, so nothing is half written
        vt.check_output_file(target, DRAWING)
    dev = vt.pick_device(device)
    models = [vt.load_trained(p, dev, plugin_options, command="eval", assume=assume) for p in checkpoints]
    classifiers = [m for m in models if vt.model_info(m).head == "classification"]
    boxers = [m for m in models if vt.model_info(m).head in HEADS]
    if not classifiers:
        raise vt.VggtkError("name a classification checkpoint: the classes come from it (a localisation net only "
                            "places the box)")
    vt.check_same_classes(classifiers, names=[str(p) for p, m in zip(checkpoints, models) if m in classifiers])
    classes = list(vt.model_info(classifiers[0]).classes or [])
    for path, model in zip(checkpoints, models):
        theirs = vt.model_info(model).classes
        if classes and theirs is not None and list(theirs) != classes:
            raise vt.VggtkError(f"{path}: was trained on other classes than {checkpoints[0]}")
    evaluator = vt.get_evaluator(method)
    channels = {str(p): vt.model_info(m).in_chans or 3 for p, m in zip(checkpoints, models)}
    if len(set(channels.values())) > 1 or not set(channels.values()) <= {1, 3}:
        raise vt.VggtkError("predict reads photos as 1- or 3-channel images, one way for every net; these take "
                            + ", ".join(f"{p}: {c}" for p, c in channels.items()))
    channels = next(iter(channels.values()))
    rows, skipped, drawn = [], [], []
    for path, target in zip(images, targets or [None] * len(images)):
        try:
            image = vt.read_image(path, channels)
        except vt.VggtkError as exc:
            if on_error == "fail":
                raise
            skipped.append(str(exc))
            continue
        rows.append(_predict_one(path, image, classifiers, boxers, evaluator, classes))
        drawn.append(target)
    console = Console(soft_wrap=True)
    _print(console, rows)
    if skipped:
        console.print(vt.plain(f"skipped {len(skipped)} unreadable image(s); first: {skipped[0]}"), style="yellow")
    if out is not None:
        _write(out, rows)
        console.print(vt.plain(f"predictions written to {out}"))
    if draw is not None:
        for row, target in zip(rows, drawn):
            _draw(Path(row["image"]), row, target)
        console.print(vt.plain(f"drawings written to {draw}"))


def _predict_one(path: Path, image: torch.Tensor, classifiers, boxers, evaluator, classes) -> dict:
    posteriors = 0
    for model in classifiers:
        device = next(model.parameters()).device
        x = vt.input_preprocessing(model).apply(image[None].to(device))
        with vt.mixed_precision(device):
            posteriors = posteriors + evaluator(model, x)[0].float().cpu()
    posteriors = posteriors / len(classifiers)
    if not bool(torch.isfinite(posteriors).all()):
        raise vt.VggtkError(f"{path}: the nets give NaN or infinite posteriors (their weights or preprocessing "
                            "record are broken)")
    top = posteriors.topk(min(5, len(posteriors)))
    row = {"image": str(path), "top5": [{"class": classes[i] if classes else str(int(i)), "index": int(i),
                                         "label": vt.class_label(classes[i]) if classes else str(int(i)),
                                         "probability": round(float(p), 6)}
                                        for p, i in zip(top.values, top.indices)]}
    if boxers:
        label = int(top.indices[0])
        boxes = []
        for model in boxers:  # protocol 1: the centre view's box, for the top class (PCR) or the one box
            info = vt.model_info(model)
            device = next(model.parameters()).device
            q, crop = vt.test_scales_for(model)[0], info.input_size
            x = vt.center_view(vt.input_preprocessing(model).apply(image[None].to(device)), q, crop)
            with torch.no_grad(), vt.model_form(model, fully_conv=False):
                codes = model(x).float().cpu()
            if info.head == "pcr":
                codes = codes.view(1, -1, 4)[:, label]
            h, w = image.shape[-2:]
            boxes.append(vt.boxes_from_center_view(vt.decode_boxes(codes, crop, crop), h, w, q, crop)[0])
        box = torch.stack(boxes).mean(0)
        # a box is of the image: clipped to it (the regressor may reach past an edge), never -0
        box = box.clamp(min=0).minimum(box.new_tensor([w, h, w, h])) + 0.0
        if is_box(box):
            row["box"] = {"class": row["top5"][0]["class"], "xyxy": [round(float(v), 2) for v in box]}
        else:  # said, never printed or drawn as a box
            row["box"] = {"class": row["top5"][0]["class"], "xyxy": None,
                          "problem": "the nets' box is inverted or empty within the image"}
    return row


def _print(console: Console, rows: list[dict]) -> None:
    table = Table(title="predictions")
    for col in ("image", "top-5 (probability)", "box (x1, y1, x2, y2)"):
        table.add_column(col, no_wrap=True)
    for row in rows:
        top5 = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in row["top5"])
        box = "-" if "box" not in row else row["box"].get("problem") or ", ".join(f"{v:.2f}" for v in row["box"]["xyxy"])
        table.add_row(vt.plain(row["image"]), vt.plain(top5), box)
    vt.print_table(console, table)


def _write(out: Path, rows: list[dict]) -> None:
    if out.suffix.lower() == ".csv":
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["image", "rank", "class", "probability", "x1", "y1", "x2", "y2"])
        for row in rows:
            box = row.get("box", {}).get("xyxy") or [""] * 4
            for rank, top in enumerate(row["top5"], 1):
                writer.writerow([row["image"], rank, top["class"], top["probability"], *(box if rank == 1 else [""] * 4)])
        vt.write_text(out, CSV_MARK + text.getvalue())
    else:
        vt.save_json(out, {"predictions": rows}, PREDICTIONS)


def _draw(path: Path, row: dict, target: Path) -> None:
    image = to_pil(vt.read_image(path, 3))
    canvas = ImageDraw.Draw(image)
    label = f"{row['top5'][0]['label']} {row['top5'][0]['probability']:.2f}"
    if row.get("box", {}).get("xyxy"):
        draw_box(canvas, row["box"]["xyxy"], (255, 0, 0), label, width=max(1, min(image.size) // 100))
    elif "box" in row:
        canvas.text((2, 2), vt.one_line(f"{label} ({row['box']['problem']})"), fill=(255, 0, 0))
    else:
        canvas.text((2, 2), vt.one_line(label), fill=(255, 0, 0))
    vt.save_png(image, target, DRAWING)
