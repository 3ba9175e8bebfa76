"""Every file vggtk writes says what kind of output it is, and an output path is replaced only by a file of
the same kind: a report never replaces weights, a manifest, a checkpoint's state or another report. Each
command run twice onto the same paths replaces its own outputs."""

import json
from pathlib import Path

import pytest
from PIL import Image

from cli_runner import vggtk
from realdata import fashion_sample
from vgg_toolkit import VggtkError
from vgg_toolkit.runtime.files import check_output_file, save_json, written_kind

SHARDS = Path(__file__).resolve().parents[1] / "shards"


def test_each_file_of_a_run_and_a_shard_set_says_its_kind(trained, shards):
    run, _ = trained
    best = run / "best"
    assert written_kind(best / "model.safetensors") == "weights"
    assert written_kind(best / "optimizer.safetensors") == "optimizer state"
    assert written_kind(best / "optimizer.json") == "optimizer state"
    assert written_kind(best / "state.json") == "checkpoint state"
    assert written_kind(run / "config.json") == "run configuration"
    assert written_kind(run / "metrics.png") == "training plot"
    assert written_kind(shards / "manifest.json") == "shard manifest"
    assert written_kind(SHARDS / "fashion-mnist" / "manifest.json") == "shard manifest"  # the bundled set
    assert written_kind(sorted(shards.glob("train-*"))[0]) is None  # a shard carries no mark: never replaced


def test_only_a_file_of_the_same_kind_is_replaced(tmp_path):
    save_json(tmp_path / "r.json", {"results": []}, "evaluation results")
    assert check_output_file(tmp_path / "r.json", "evaluation results") == tmp_path / "r.json"
    with pytest.raises(VggtkError, match="holds vggtk's evaluation results, which the predictions does not"):
        check_output_file(tmp_path / "r.json", "predictions")
    # an earlier vggtk's file without a kind is not guessed at
    (tmp_path / "old.json").write_text(json.dumps({"written_by": "vggtk", "results": []}))
    with pytest.raises(VggtkError, match="no recorded kind"):
        check_output_file(tmp_path / "old.json", "evaluation results")
    (tmp_path / "mine.json").write_text(json.dumps({"written_by": "someone else"}))
    with pytest.raises(VggtkError, match="not written by vggtk"):
        check_output_file(tmp_path / "mine.json", "evaluation results")


def test_a_resumed_checkpoint_state_reads_without_its_mark(trained):
    from vgg_toolkit.train.checkpoint import read_state

    state = read_state(trained[0] / "best")
    assert "written_by" not in state and "vggtk_kind" not in state and "step" in state


def test_each_command_run_twice_replaces_its_own_outputs(trained, shards, tmp_path):
    run, _ = trained
    best = run / "best"
    images, _ = fashion_sample(2)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy()).save(photos / f"p{i}.png")
    commands = [
        ["eval", best, "--data", shards, "--methods", "center", "--out", tmp_path / "e.json",
         "--confusion", tmp_path / "c.png"],
        ["predict", best, photos, "--out", tmp_path / "p.json", "--draw", tmp_path / "drawn"],
        ["shards", "inspect", shards, "--sheet", tmp_path / "sheet.png"],
        ["extract-features", best, "--data", shards, "--splits", "val", "--out", tmp_path / "f"],
        ["compare", best, "--results", tmp_path / "e.json", "--chart", tmp_path / "chart.png", "--out",
         tmp_path / "t.json", "--no-timing"],
        ["convert", best, tmp_path / "w.safetensors", "--to", "torchvision"],
    ]
    for _ in range(2):
        for args in commands:
            result = vggtk(*args)
            assert result.exit_code == 0, (args[0], result.output)
    kinds = {name: written_kind(tmp_path / name) for name in
             ("e.json", "c.png", "p.json", "sheet.png", "f/val.safetensors", "chart.png", "t.json", "w.safetensors")}
    assert kinds == {"e.json": "evaluation results", "c.png": "confusion matrix", "p.json": "predictions",
                     "sheet.png": "contact sheet", "f/val.safetensors": "features", "chart.png": "comparison chart",
                     "t.json": "comparison table", "w.safetensors": "weights"}
    assert {written_kind(p) for p in (tmp_path / "drawn").iterdir()} == {"drawing"}

