"""The training loop's promises: DDP equals one process, a killed run resumes exactly, a
diverging run stops naming the step. All on real Fashion-MNIST images, on the CPU."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vgg_toolkit as vt
from tiny_training import NET, tiny_run
from vgg_toolkit import VggtkError
from vgg_toolkit.train.batches import InMemorySource
from vgg_toolkit.train.checkpoint import complete_checkpoints, latest_checkpoint
from vgg_toolkit.train.config import parse_config
from vgg_toolkit.train.loop import NonFiniteError, train
from vgg_toolkit.train.plan import plan_run

JOB = Path(__file__).parent / "jobs" / "train_job.py"


def run_job(run_dir, *args, launcher=(), timeout=300):
    cmd = [sys.executable, *launcher, str(JOB), str(run_dir), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def weights(ckpt):
    return load_file(str(Path(ckpt) / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted single-process run: 2 epochs of 8 steps, a checkpoint every 2 steps."""
    run = tmp_path_factory.mktemp("reference")
    run_job(run, "--checkpoint-every", "2")
    return run


def test_ddp_on_two_gloo_processes_equals_one_process(reference, tmp_path):
    free_port = str(29400 + os.getpid() % 500)
    events = run_job(tmp_path, "--checkpoint-every", "2",
                     launcher=("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port))
    assert [e["event"] for e in events] == ["end", "end"]  # both ranks finished
    single, ddp = weights(reference / "ckpt-000000016"), weights(tmp_path / "ckpt-000000016")
    moved = max((single[k] - weights(reference / "ckpt-000000002")[k]).abs().max().item() for k in single)
    assert moved > 1e-3  # the weights really changed, so agreement means something
    # Same global batches, gradients averaged over ranks: equal up to float summation order.
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=0, atol=1e-6)


def slow_job_past(run_dir, every, step):
    """A slowed-down job, returned once it has written the checkpoint of ``step``."""
    cmd = [sys.executable, str(JOB), str(run_dir), "--checkpoint-every", str(every), "--slow", "0.25"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / f"ckpt-{step:09d}").exists():
        time.sleep(0.05)
    return proc


def assert_same_final_weights(run_dir, reference):
    resumed, straight = weights(run_dir / "ckpt-000000016"), weights(reference / "ckpt-000000016")
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k


def test_killed_mid_epoch_and_resumed_ends_with_the_same_weights(reference, tmp_path):
    proc = slow_job_past(tmp_path, every=2, step=6)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    last = latest_checkpoint(tmp_path)
    state = json.loads((last / "state.json").read_text())
    assert state["epoch"] == 0 and 0 < state["batch_in_epoch"] < 8  # really mid-epoch
    events = run_job(tmp_path, "--checkpoint-every", "2")
    assert events[0]["event"] == "resumed" and events[0]["step"] == state["step"]
    assert_same_final_weights(tmp_path, reference)


def test_ctrl_c_saves_where_it_stopped_and_the_run_resumes_exactly(reference, tmp_path):
    proc = slow_job_past(tmp_path, every=4, step=4)
    time.sleep(0.4)  # into a step that no periodic checkpoint covers
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    saved = json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())
    assert saved["step"] % 4 != 0  # written by the interrupt, not by the periodic save
    run_job(tmp_path, "--checkpoint-every", "4")
    assert_same_final_weights(tmp_path, reference)


def test_gradient_accumulation_matches_the_full_batch(reference, tmp_path):
    run_job(tmp_path, "--accum-steps", "4")
    straight, accumulated = weights(reference / "ckpt-000000016"), weights(tmp_path / "ckpt-000000016")
    for k in straight:
        torch.testing.assert_close(accumulated[k], straight[k], rtol=0, atol=1e-6)


def test_non_finite_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    plan, source = tiny_run(epochs=3, batch_size=32, lr=1e9, log_every=1)
    with pytest.raises(NonFiniteError, match=r"non-finite loss or gradient at step \d+") as err:
        train(plan, source, tmp_path)
    assert "no checkpoint was written yet" in str(err.value)
    assert complete_checkpoints(tmp_path) == []


class PoisonedSource(InMemorySource):
    """Real data whose normalised batch turns infinite at one chosen training call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.poison_at = 0, None

    def normalize(self, images):
        out = super().normalize(images)
        if images.shape[0] == 32:  # training micro-batches; validation batches are larger
            self.calls += 1
            if self.calls == self.poison_at:
                out = out * float("inf")
        return out


def test_divergence_after_a_checkpoint_names_the_step_and_keeps_that_checkpoint(tmp_path):
    plan, source = tiny_run(source_class=PoisonedSource, epochs=2, batch_size=32, log_every=1, checkpoint_every=2)
    source.poison_at = 5
    with pytest.raises(NonFiniteError, match=r"at step 5: training stopped; last good checkpoint: .*ckpt-000000004"):
        train(plan, source, tmp_path)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["ckpt-000000002", "ckpt-000000004"]


class _NanBackward(torch.autograd.Function):
    """The identity forward, NaN backward: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


def test_a_non_finite_gradient_under_a_finite_loss_stops_the_run_too(tmp_path):
    plan, source = tiny_run(epochs=2, batch_size=32, log_every=1, checkpoint_every=2)
    calls = []

    def poison(module, inputs, output):  # the logits of the 5th training step
        if module.training and isinstance(module, torch.nn.Linear) and tuple(output.shape) == (32, 10):
            calls.append(1)
            if len(calls) == 5:
                return _NanBackward.apply(output)

    handle = torch.nn.modules.module.register_module_forward_hook(poison)
    try:
        with pytest.raises(NonFiniteError, match=r"at step 5: training stopped; last good checkpoint: .*ckpt-000000004"):
            train(plan, source, tmp_path)
    finally:
        handle.remove()


def test_bad_batch_split_is_a_clear_error(tmp_path):
    plan, source = tiny_run(batch_size=30, accum_steps=4)
    with pytest.raises(VggtkError, match="--batch-size 30 does not split into 1 rank.*--accum-steps"):
        train(plan, source, tmp_path)


def test_init_from_a_copies_the_first_four_convs_and_the_fcs_into_d(tmp_path):
    from vgg_toolkit import create_model, initialise_from, save_weights

    kw = dict(num_classes=10, **NET, input_size=32)
    torch.manual_seed(1)
    a = create_model("vgg-a", **kw)
    save_weights(a, tmp_path / "a.safetensors")
    torch.manual_seed(2)
    d = create_model("vgg-d", **kw)
    before = {k: v.clone() for k, v in d.state_dict().items()}
    copied = initialise_from(d, tmp_path / "a.safetensors")
    expected = ["classifier.fc6", "classifier.fc7", "classifier.fc8", "features.block1.conv1",
                "features.block2.conv1", "features.block3.conv1", "features.block3.conv2"]
    assert copied == expected
    for key, value in d.state_dict().items():
        layer = key.rsplit(".", 1)[0]
        if layer in expected:
            assert torch.equal(value, a.state_dict()[key]), key
        else:
            assert torch.equal(value, before[key]), key  # the rest keeps its random init
    with pytest.raises(VggtkError, match="cannot initialise vgg-d from vgg-a"):
        initialise_from(create_model("vgg-d", **{**kw, "width": 1 / 4}), tmp_path / "a.safetensors")


def test_a_fresh_run_refuses_a_directory_holding_another_runs_checkpoints(tmp_path):
    plan, source = tiny_run(128, 32, epochs=1, batch_size=32, log_every=1)
    train(plan, source, tmp_path)
    with pytest.raises(VggtkError, match="already holds checkpoints, and --resume none starts afresh"):
        train(plan, source, tmp_path, resume=None)


def test_resuming_with_other_options_is_refused_but_more_epochs_are_fine(tmp_path):
    plan, source = tiny_run(128, 32, epochs=1, batch_size=32, log_every=1)
    train(plan, source, tmp_path)
    changed, _ = tiny_run(128, 32, epochs=1, batch_size=32, log_every=1, lr=0.5)
    with pytest.raises(VggtkError, match=r"trained with other options \(lr: 0.01 -> 0.5\)"):
        train(changed, source, tmp_path)
    longer, _ = tiny_run(128, 32, epochs=2, batch_size=32, log_every=1)
    assert train(longer, source, tmp_path)["epoch"] == 2


def dead_pid() -> int:
    """The id of a process that has ended (its number is free, as a killed run's would be)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_what_a_killed_run_left_is_removed_by_the_next_and_nothing_else(tmp_path):
    plan, source = tiny_run(128, 32, epochs=1, batch_size=32, log_every=1)
    train(plan, source, tmp_path)
    gone = dead_pid()
    debris = [tmp_path / f".ckpt-000000099.vggtk-tmp-{gone}", tmp_path / f".best.vggtk-tmp-old-{gone}"]
    for path in debris:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"half a file")
    alive = tmp_path / f".ckpt-000000098.vggtk-tmp-{os.getpid()}"  # a process still running: not debris
    alive.mkdir()
    (tmp_path / "notes.txt").write_text("the user's")
    longer, _ = tiny_run(128, 32, epochs=2, batch_size=32, log_every=1)
    train(longer, source, tmp_path)
    assert not any(p.exists() for p in debris) and alive.is_dir()
    assert (tmp_path / "notes.txt").read_text() == "the user's"


def test_an_interrupted_checkpoint_write_leaves_the_last_checkpoint_whole(tmp_path, monkeypatch):
    from vgg_toolkit.train import checkpoint as checkpoint_module

    plan, source = tiny_run(epochs=1, batch_size=32, log_every=1, checkpoint_every=2)
    real, calls = checkpoint_module.save_file, []

    def dies_on_the_second_save(tensors, filename, *args, **kwargs):
        calls.append(filename)
        real(tensors, filename, *args, **kwargs)
        if len(calls) == 2:
            Path(filename).write_bytes(b"cut short")
            raise KeyboardInterrupt  # as if the process were stopped while the bytes went out

    monkeypatch.setattr(checkpoint_module, "save_file", dies_on_the_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(plan, source, tmp_path)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["ckpt-000000002"]
    assert not [p for p in tmp_path.iterdir() if "vggtk-tmp" in p.name]  # no half checkpoint anywhere
    monkeypatch.undo()
    resumed, _ = tiny_run(epochs=1, batch_size=32, log_every=1, checkpoint_every=2)
    assert train(resumed, source, tmp_path)["step"] == 8  # the run continues from step 2


class _AuxNet(torch.nn.Module):
    """A trunk with the main classifier and one auxiliary classifier, which only the auxiliary loss reaches."""

    def __init__(self, num_classes: int = 10, *, in_chans: int = 1, input_size: int = 32, aux_weight: float = 0.3):
        super().__init__()
        self.trunk = torch.nn.Sequential(torch.nn.Conv2d(in_chans, 4, 3, stride=4), torch.nn.ReLU(),
                                         torch.nn.Flatten())
        width = 4 * ((input_size - 3) // 4 + 1) ** 2
        self.main, self.aux = torch.nn.Linear(width, num_classes), torch.nn.Linear(width, num_classes)
        self.aux_weight = aux_weight

    def forward(self, x):
        features = self.trunk(x)
        if not self.training:
            return self.main(features)
        return vt.AuxiliaryOutputs(self.main(features), (self.aux(features),), (self.aux_weight,))


def test_auxiliary_outputs_train_through_the_heads_loss_and_validation_sees_the_main_one(host, tmp_path):
    class Plugin:
        @vt.hookimpl
        def vggtk_register_architectures(self, register):
            register("auxnet", _AuxNet, input_size=32)

    host.register(Plugin(), "auxnet")
    _, source = tiny_run()
    facts = vt.DataFacts(tuple(f"class{i}" for i in range(10)), 1, (72.0,) * 3, 32, vt.TrainScale(32, 32))
    runs = {}
    for aux_weight in (0.0, 0.3):  # same seed, same start; no weight decay, so a weight moves only by its loss
        plan = plan_run(parse_config({"arch": "auxnet", "epochs": 1, "batch_size": 32, "weight_decay": 0,
                                      "model": {"aux_weight": aux_weight}}), facts)
        summary = train(plan, source, tmp_path / str(aux_weight))
        assert summary["best_val"]["val_top1_err"] < 90  # validated on the main output: a tuple would fail
        runs[aux_weight] = weights(summary["checkpoint"])
    assert not torch.equal(runs[0.3]["aux.weight"], runs[0.0]["aux.weight"])  # the weighted auxiliary loss
    assert not torch.equal(runs[0.3]["trunk.0.weight"], runs[0.0]["trunk.0.weight"])  # reached the trunk too


@pytest.mark.parametrize("what", ["a file in a folder without state.json", "a file under the name"])
def test_a_checkpoint_name_holding_a_users_file_is_refused_before_any_work(tmp_path, what):
    """A save replaces whatever holds ckpt-<step>, and pruning deletes old checkpoints whole: a user's file
    there, in a folder that is no complete checkpoint (no state.json) or as the name itself, is said, not
    deleted."""
    from vgg_toolkit.train.checkpoint import check_run_dir

    run = tmp_path / "run"
    if what == "a file under the name":
        run.mkdir()
        (run / "ckpt-000000007").write_text("mine")
        mine = run / "ckpt-000000007"
    else:
        (run / "ckpt-000000007").mkdir(parents=True)
        mine = run / "ckpt-000000007" / "x"
        mine.write_text("mine")
    with pytest.raises(VggtkError, match=f"{mine}: was not written by vggtk train"):
        check_run_dir(run)
    assert mine.read_text() == "mine"
