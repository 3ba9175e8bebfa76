"""`vggtk train` then `vggtk eval` through the real command line, on the tiny real shards and run of
``conftest`` (three Fashion-MNIST classes, a few hundred images, so it runs in seconds)."""

import json
import shutil

import pytest
import torch

from cli_runner import vggtk
from vgg_toolkit.data.shards.manifest import Manifest
from vgg_toolkit.data.shards.reader import iter_raw
from vgg_toolkit.data.shards.records import Record
from vgg_toolkit.data.shards.writer import ShardWriter


def test_train_writes_checkpoints_metrics_plot_and_the_resolved_config(trained, shards):
    run, output = trained
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] * 1.5  # finite, not diverging
    # Errors are percentages of the validation images: each is a whole number of them.
    n_val = Manifest.load(shards).samples("val")
    for e in epochs:
        wrong = e["val_top1_err"] * n_val / 100
        assert 0 <= e["val_top1_err"] <= 100 and abs(wrong - round(wrong)) < 1e-6
    assert (run / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 2 and config["batch_size"] == 16 and config["lr"] == 0.02  # TOML + CLI merged
    assert config["model"]["in_chans"] == 1 and config["model"]["input_size"] == 32
    assert config["train_scale"] == [32, 40] and config["classes"] == Manifest.load(shards).classes
    assert (run / "best" / "model.safetensors").is_file()
    assert "test top-1 error" in output and "Training finished" in output


def test_train_resumes_from_the_newest_checkpoint(trained, shards, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)  # the other tests read the original run as it was
    result = vggtk("train", "--data", shards, "--run-dir", run, "--epochs", 3, "--batch-size", 16, "--lr", "0.02")
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.output and "epoch 3:" in result.output and "epoch 1:" not in result.output


def test_eval_prints_the_table_and_writes_json(trained, shards, tmp_path):
    run, output = trained
    out = tmp_path / "eval.json"
    result = vggtk("eval", run / "best", "--data", shards, "--methods", "center,dense,multicrop,combined",
                   "--out", out, "--per-class", "--confusion", tmp_path / "cm.png")
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["results"]
    assert [r["method"] for r in rows][0].startswith("centre")
    assert len(rows) == 4 and all(r["test_scales"] == "36" for r in rows)  # Q = (Smin + Smax) / 2
    assert (tmp_path / "cm.png").is_file()
    # The training run's closing test error is the same protocol run by the same code.
    reported = float(output.split("test top-1 error")[1].split("%")[0].strip(" │"))
    assert rows[0]["top1_err_pct"] == pytest.approx(reported, abs=0.005)
    assert len(rows[0]["per_class"]) == 3


def test_eval_ensemble_of_checkpoints_with_different_classes_is_an_error(trained, shards, tmp_path):
    run, _ = trained
    result = vggtk("eval", run / "best", tmp_path / "nothing", "--data", shards)
    assert result.exit_code != 0 and "nothing: no checkpoint here" in str(result.exception)


def test_train_rejects_inconsistent_options(shards, tmp_path):
    result = vggtk("train", "--data", shards, "--run-dir", tmp_path, "--scale", 30)
    assert "below the crop size 32" in str(result.exception)
    result = vggtk("train", "--data", shards, "--run-dir", tmp_path, "--scale-min", 32)
    assert "needs both --scale-min and --scale-max" in str(result.exception)
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = [")
    result = vggtk("train", "--data", shards, "--config", bad)
    assert "bad.toml: cannot read the run configuration" in str(result.exception)
    bad.write_text("epochz = 3\n")
    result = vggtk("train", "--data", shards, "--config", bad)
    assert "unknown training option(s): epochz" in str(result.exception)


def test_init_from_the_same_architecture_fine_tunes_at_the_papers_lower_rate(trained, shards):
    from vgg_toolkit.train.run import build_config

    run, _ = trained
    manifest = Manifest.load(shards)
    assert build_config({"init_from": str(run / "best")}, manifest).lr == 1e-3  # S=384 from S=256 style
    assert build_config({"init_from": str(run / "best"), "arch": "vgg-d"}, manifest).lr == 1e-2  # A -> D
    assert build_config({"init_from": str(run / "best"), "lr": 0.05}, manifest).lr == 0.05


# Streaming training: what runs when a split is too big to decode up front, or holds photos of many sizes.

@pytest.fixture
def streamed(monkeypatch):
    monkeypatch.setattr("vgg_toolkit.train.run.IN_MEMORY_LIMIT", 0)


def stream_train(shards, run, *extra):
    return vggtk("train", "--data", shards, "--run-dir", run, "--epochs", 1, "--batch-size", 16, "--lr", "0.02",
                 "--checkpoint-every", 3, "--keep-last", 0, *extra)


def test_streaming_run_killed_mid_epoch_resumes_to_the_same_weights_on_the_same_reader_grid(streamed, shards,
                                                                                            tmp_path):
    from safetensors.torch import load_file

    whole = stream_train(shards, tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", cut)
    checkpoints = sorted(cut.glob("ckpt-*"))
    for later in checkpoints[1:] + [cut / "best"]:
        shutil.rmtree(later)  # as if killed after the first mid-epoch checkpoint (step 3 of 9)
    resumed = stream_train(shards, cut)
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed from {checkpoints[0]}" in resumed.output.replace("\n", "")
    final = sorted((tmp_path / "whole").glob("ckpt-*"))[-1].name
    a, b = load_file(tmp_path / "whole" / final / "model.safetensors"), load_file(cut / final / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    other_grid = stream_train(shards, tmp_path / "whole", "--resume", tmp_path / "whole" / checkpoints[0].name,
                              "--workers", 2)
    assert other_grid.exit_code != 0
    assert "stopped mid-epoch with workers 1 (this run: 2); resume with the same" in str(other_grid.exception)


def test_streaming_training_counts_and_names_skipped_samples(streamed, shards, tmp_path):
    data = tmp_path / "shards"
    shutil.copytree(shards, data)
    # A source image that was already broken when the shard was written: the shard itself is sound.
    manifest = Manifest.load(data)
    tar = manifest.shard_paths("train")[0]
    records = [Record(raw["__key__"], raw["png"], "png", int(raw["cls"])) for raw in iter_raw(str(tar))]
    bad = records[0]
    records[0] = Record(bad.key, bad.image[:8] + bytes(len(bad.image) - 8), "png", bad.label)
    writer = ShardWriter(tar)
    for record in records:
        writer.write(record)
    manifest.splits["train"][0] = writer.close()
    manifest.write()
    member = f"{bad.key}.png"

    failed = stream_train(data, tmp_path / "fail")
    assert failed.exit_code != 0 and f"{tar.name}[{member}]: cannot decode image" in str(failed.exception)

    result = stream_train(data, tmp_path / "skip", "--on-error", "skip")
    assert result.exit_code == 0, result.output
    assert "epoch 1: skipped 1 unreadable training sample(s)" in result.output
    assert member in result.output.replace("\n", "")
    epoch = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()][-1]
    assert epoch["event"] == "epoch" and epoch["train_skipped"] == 1
