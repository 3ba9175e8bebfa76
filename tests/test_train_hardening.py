"""`vggtk train` where a run is resumed, run again, or given data it cannot train on: the log holds each
epoch once, a finished run says so, and data with nothing to train or validate on is one line, said
before any training where it can be."""

import json
import shutil
from pathlib import Path

import pytest

from cli_runner import input_error, vggtk
from vgg_toolkit.data.shards.manifest import Manifest
from vgg_toolkit.data.shards.reader import iter_raw
from vgg_toolkit.data.shards.records import Record
from vgg_toolkit.data.shards.writer import ShardWriter

# The options of conftest's `trained` run, whose run.toml gives epochs 2 and batch size 16.
SAME = ("--epochs", 2, "--batch-size", 16, "--lr", "0.02")


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resuming_from_an_earlier_checkpoint_logs_each_epoch_once(trained, shards, tmp_path, monkeypatch):
    from vgg_toolkit.train import reporting

    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"event": "ep')  # a line cut short by a killed run
    plotted, draw = [], reporting.plot_history

    def plot(history, path):
        plotted.append([h["epoch"] for h in history])
        return draw(history, path)

    monkeypatch.setattr(reporting, "plot_history", plot)
    first = sorted(run.glob("ckpt-*"))[0]  # epoch 1's
    result = vggtk("train", "--data", shards, "--run-dir", run, "--epochs", 3, "--batch-size", 16, "--lr", "0.02",
                   "--resume", first)
    assert result.exit_code == 0, result.output
    logged = records(run)
    assert [r["epoch"] for r in logged if r["event"] == "epoch"] == [1, 2, 3]
    assert [r["step"] for r in logged if r["event"] == "test"] == [27]  # the first run's test was of step 18
    assert plotted[0] == [1]  # the plot follows the log as soon as the run resumes


@pytest.mark.parametrize("source", ["in memory", "streamed"])
def test_data_of_which_no_training_sample_is_readable_is_one_line(source, shards, tmp_path, monkeypatch):
    if source == "streamed":
        monkeypatch.setattr("vgg_toolkit.train.batches.IN_MEMORY_LIMIT", 0)
    data = tmp_path / "shards"
    shutil.copytree(shards, data)
    manifest = Manifest.load(data)
    for i, tar in enumerate(manifest.shard_locations("train")):  # every training image damaged at the source
        writer = ShardWriter(Path(tar))
        for raw in iter_raw(tar):
            writer.write(Record(raw["__key__"], raw["png"][:8] + bytes(len(raw["png"]) - 8), "png", int(raw["cls"])))
        manifest.splits["train"][i] = writer.close()
    manifest.write()
    result = vggtk("train", "--data", data, "--run-dir", tmp_path / "run", "--epochs", 1, "--batch-size", 16,
                   "--on-error", "skip")
    message = input_error(result)
    assert f"vggtk: error: {data}" in message and "no training sample was readable" in message
    assert "skipped 144 bad sample(s)" in message


def test_a_set_without_a_val_split_is_refused_before_any_training(shards, tmp_path, monkeypatch):
    monkeypatch.setattr("vgg_toolkit.train.batches.IN_MEMORY_LIMIT", 0)  # streamed: validated after an epoch
    made = vggtk("shards", "create", shards.parent / "src", tmp_path / "noval", "--splits", "train=0.8,test=0.2")
    assert made.exit_code == 0, made.output
    run = tmp_path / "run"
    result = vggtk("train", "--data", tmp_path / "noval", "--run-dir", run, *SAME)
    message = input_error(result)
    assert "noval/manifest.json: no split 'val'" in message
    assert "training on" not in result.output and not run.exists()


def test_running_a_finished_run_again_says_so_and_logs_nothing(trained, shards, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    log = (run / "metrics.jsonl").read_bytes()
    result = vggtk("train", "--data", shards, "--run-dir", run, *SAME)
    assert result.exit_code == 0, result.output
    assert "training already finished at epoch 2, step 18" in result.output.replace("\n", "")
    assert "Training finished" not in result.output and "wall time" not in result.output
    assert "test top1_err" in result.output  # the test it had, from the log
    assert (run / "metrics.jsonl").read_bytes() == log

    # Killed while testing: run again, it tests the finished run, once.
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in log.decode().splitlines()
                                               if json.loads(line)["event"] != "test"))
    result = vggtk("train", "--data", shards, "--run-dir", run, *SAME)
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in records(run) if r["event"] == "test"] == [18]


def test_a_net_started_from_a_checkpoint_takes_its_shape_unless_told(trained, shards):
    """train --head pcr --init-from a quarter-width classifier failed on FC shapes unless --width and
    --fc-dim were repeated: the options come from the net it starts from, the configuration's win."""
    from vgg_toolkit.data.facts import data_facts
    from vgg_toolkit.data.shards.manifest import Manifest
    from vgg_toolkit.train.config import parse_config
    from vgg_toolkit.train.plan import plan_run

    best = trained[0] / "best"
    facts = data_facts(Manifest.load(shards))
    plan = plan_run(parse_config({"init_from": str(best), "head": "pcr", "model": {"dropout": 0.3}}), facts)
    assert plan.model_options["width"] == 0.25 and plan.model_options["fc_dim"] == 256
    assert plan.model_options["dropout"] == 0.3 and plan.num_outputs == 4 * facts.num_classes
    told = plan_run(parse_config({"init_from": str(best), "model": {"fc_dim": 128}}), facts)
    assert told.model_options["fc_dim"] == 128 and told.model_options["width"] == 0.25


def test_the_head_option_names_the_registered_heads():
    result = vggtk("train", "--help")
    assert "Task head: classification, " in " ".join(result.output.split()) and "pcr" in result.output
