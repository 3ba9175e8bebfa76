"""`vggtk train` then `vggtk eval` through the real command line, on the tiny real shards and run of
``conftest`` (three Fashion-MNIST classes, a few hundred images, so it runs in seconds)."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from cli_runner import input_error, vggtk
from vgg_toolkit import TrainScale, read_model_info
from vgg_toolkit.data.shards.manifest import Manifest
from vgg_toolkit.data.shards.reader import iter_raw
from vgg_toolkit.data.shards.records import Record
from vgg_toolkit.data.shards.writer import ShardWriter

SHARDS = Path(__file__).resolve().parents[1] / "shards"


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
    plan = json.loads((run / "config.json").read_text())
    config = plan["config"]
    assert config["epochs"] == 2 and config["batch_size"] == 16 and config["lr"] == 0.02  # TOML + CLI merged
    # What the data decides is recorded beside what the user chose: the channels, the crop, the recipe's S.
    assert plan["model_options"]["in_chans"] == 1 and plan["model_options"]["input_size"] == 32
    assert plan["model_options"]["width"] == 0.25  # the VGG plugin's recipe for small images
    assert plan["scale"] == [32, 40] and plan["facts"]["classes"] == Manifest.load(shards).classes
    info = read_model_info(run / "best" / "model.safetensors")
    assert info.classes == tuple(Manifest.load(shards).classes) and info.train_scale == TrainScale(32, 40)
    assert "test top1_err" in output and "Training finished" in output


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
    reported = float(output.split("test top1_err")[1].split("%")[0].strip(" │"))
    assert rows[0]["top1_err_pct"] == pytest.approx(reported, abs=0.005)
    assert len(rows[0]["per_class"]) == 3


def test_eval_off_a_terminal_says_how_far_it_is(trained, shards, tmp_path, monkeypatch):
    """No bar can be drawn into a pipe or a log file: a line instead, every LINE_EVERY seconds (here at
    every batch)."""
    from vgg_toolkit.evaluation import runner

    monkeypatch.setattr(runner, "LINE_EVERY", 0.0)
    run, _ = trained
    result = vggtk("eval", run / "best", "--data", shards, "--methods", "center", "--batch-size", 16, "--out",
                   tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("eval centre crop: ")]
    total = Manifest.load(shards).samples("test")
    assert len(lines) == -(-total // 16) and lines[-1].startswith(f"eval centre crop: {total}/{total} images, ")


def test_eval_ensemble_of_checkpoints_with_different_classes_is_an_error(trained, shards, tmp_path):
    run, _ = trained
    result = vggtk("eval", run / "best", tmp_path / "nothing", "--data", shards)
    assert result.exit_code != 0 and "nothing: no checkpoint here" in input_error(result)


def test_train_rejects_inconsistent_options(shards, tmp_path):
    result = vggtk("train", "--data", shards, "--run-dir", tmp_path, "--scale", 30)
    assert "training scale 30 is below the 32-pixel crop" in input_error(result)
    result = vggtk("train", "--data", shards, "--run-dir", tmp_path, "--scale-min", 32)
    assert "needs both --scale-min and --scale-max" in input_error(result)
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = [")
    result = vggtk("train", "--data", shards, "--config", bad)
    assert "bad.toml: cannot read the run configuration" in input_error(result)
    bad.write_text("epochz = 3\n")
    result = vggtk("train", "--data", shards, "--config", bad)
    assert "bad.toml: epochz: unknown training option (did you mean 'epochs'?)" in input_error(result)


def test_init_from_the_same_architecture_fine_tunes_at_the_papers_lower_rate(trained, shards):
    from vgg_toolkit.data.facts import data_facts
    from vgg_toolkit.train.config import parse_config
    from vgg_toolkit.train.plan import plan_run

    run, _ = trained
    facts = data_facts(Manifest.load(shards))
    lr = lambda **values: plan_run(parse_config({"init_from": str(run / "best"), **values}), facts).lr  # noqa: E731
    assert lr() == 1e-3  # S=384 from S=256 style
    assert lr(arch="vgg-d") == 1e-2  # A -> D
    assert lr(lr=0.05) == 0.05


# Streaming training: what runs when a split is too big to decode up front, or holds photos of many sizes.

@pytest.fixture
def streamed(monkeypatch):
    monkeypatch.setattr("vgg_toolkit.train.batches.IN_MEMORY_LIMIT", 0)


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
    assert "stopped mid-epoch with --workers 0 or 1 (this run: 2); resume with the same" in input_error(other_grid)


@pytest.mark.parametrize("source", ["streamed", "in memory"])
def test_training_counts_and_names_skipped_samples(source, shards, tmp_path, monkeypatch):
    if source == "streamed":
        monkeypatch.setattr("vgg_toolkit.train.batches.IN_MEMORY_LIMIT", 0)
    data = tmp_path / "shards"
    shutil.copytree(shards, data)
    # A source image that was already broken when the shard was written: the shard itself is sound.
    manifest = Manifest.load(data)
    tar = Path(manifest.shard_locations("train")[0])
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
    assert failed.exit_code != 0 and f"{tar.name}[{member}]: cannot decode image" in input_error(failed)

    result = stream_train(data, tmp_path / "skip", "--on-error", "skip")
    assert result.exit_code == 0, result.output
    assert "epoch 1: skipped 1 unreadable training sample(s)" in result.output
    assert member in result.output.replace("\n", "")
    records = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    epoch = [r for r in records if r["event"] == "epoch"][-1]
    assert records[-1]["event"] == "test" and epoch["train_skipped"] == 1
    more = stream_train(data, tmp_path / "skip", "--on-error", "skip", "--epochs", 2)
    assert more.exit_code == 0, more.output
    epochs = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "epoch"]
    # Streamed, each epoch meets the sample again; decoded into memory, it was dropped once, when this
    # process decoded the split, and is counted with the first epoch it trains.
    assert [e["train_skipped"] for e in epochs] == [1, 1]


def test_the_default_recipe_trains_on_the_bundled_photos(tmp_path):
    """On 224-pixel crops of real photos, the default init and learning rate give a finite, falling loss
    (the paper's init read as a standard deviation of 0.1 stopped this run with a non-finite loss at
    step 4). A narrow net, so that it runs in seconds. Asked to decode on the device, where there is no
    GPU decoder, it says so and the workers decode."""
    result = vggtk("train", "--data", SHARDS / "localisation", "--run-dir", tmp_path, "--width", 0.25, "--fc-dim", 256,
                   "--batch-size", 32, "--epochs", 1, "--log-every", 1, "--decode", "device")
    assert result.exit_code == 0, result.output
    assert "--decode device: JPEG decoding on the device needs a CUDA device, and training runs on cpu; the " \
           "workers decode" in result.output
    assert "epoch 1 step 6/6: loss " in result.output  # off a terminal, no bar: a line every --log-every steps
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["event"] == "step"]  # running mean over the epoch's steps
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.005
    assert json.loads((tmp_path / "config.json").read_text())["model_options"]["init"] == "glorot"
