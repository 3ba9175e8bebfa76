"""``vggtk train``: the paper's recipe on shards, every choice an option, a TOML file for a whole run."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Optional

import typer

from ..errors import VggtkError

BUNDLED = Path(__file__).resolve().parent.parent / "shards"
DEFAULT_DATA = BUNDLED / "fashion-mnist"


def resolve_data(data: Optional[Path]) -> Path:
    path = data or DEFAULT_DATA
    if not path.exists():
        hint = " (the bundled shards ship with a source checkout; pass --data)" if data is None else ""
        raise VggtkError(f"{path}: no such shard directory or manifest{hint}")
    return path


def _options_from_toml(path: Optional[Path]) -> dict:
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise VggtkError(f"{path}: cannot read the run configuration ({exc})") from None


def train_command(
    data: Optional[Path] = typer.Option(None, help="Shard directory or manifest.json \\[default: the bundled Fashion-MNIST shards]."),
    run_dir: Path = typer.Option(Path("runs/train"), help="Where checkpoints, metrics.jsonl and metrics.png go."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file of options (command-line options win)."),
    arch: Optional[str] = typer.Option(None, help="Architecture name (vggtk models) \\[default: vgg-a]."),
    width: Optional[float] = typer.Option(None, help="Channel multiplier of the conv layers \\[default: 1, or 0.25 below 64 px]."),
    fc_dim: Optional[int] = typer.Option(None, help="Width of FC6/FC7 \\[default: 4096, or 256 below 64 px]."),
    batch_norm: Optional[bool] = typer.Option(None, "--batch-norm/--no-batch-norm", help="BatchNorm after each conv (not in the paper)."),
    init: Optional[str] = typer.Option(None, help="paper | glorot | kaiming \\[default: paper, or kaiming below 64 px]."),
    scale: Optional[int] = typer.Option(None, help="Fixed training scale S (smallest side) \\[default: jittered, the data's recipe: [256, 512], or [32, 40] for small images]."),
    scale_min: Optional[int] = typer.Option(None, help="Scale jittering: S drawn per image from \\[scale-min, scale-max]."),
    scale_max: Optional[int] = typer.Option(None, help="Upper end of scale jittering."),
    epochs: Optional[int] = typer.Option(None, help="At most this many epochs \\[default: 74; the lr schedule may stop sooner]."),
    batch_size: Optional[int] = typer.Option(None, help="Global batch size \\[default: 256]."),
    accum_steps: Optional[int] = typer.Option(None, help="Gradient accumulation steps per global batch \\[default: 1]."),
    lr: Optional[float] = typer.Option(None, help="Initial learning rate \\[default: 0.01]."),
    momentum: Optional[float] = typer.Option(None, help="SGD momentum \\[default: 0.9]."),
    weight_decay: Optional[float] = typer.Option(None, help="L2 penalty on weights \\[default: 5e-4]."),
    lr_patience: Optional[int] = typer.Option(None, help="Epochs without a better val accuracy before lr / 10 \\[default: 2]."),
    seed: Optional[int] = typer.Option(None, help="Seed of every random choice \\[default: 0]."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Also checkpoint every N steps \\[default: epoch ends only]."),
    keep_last: Optional[int] = typer.Option(None, help="Newest checkpoints to keep besides best; 0 keeps all \\[default: 2]."),
    log_every: Optional[int] = typer.Option(None, help="Steps between log lines / host syncs \\[default: 20]."),
    init_from: Optional[Path] = typer.Option(None, help="Checkpoint or weights to start from (fine-tune, or A -> deeper)."),
    resume: str = typer.Option("auto", help="auto: continue from the newest complete checkpoint in --run-dir, if any; none: start fresh (refused where checkpoints exist); or a checkpoint directory."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N \\[default: auto]."),
    conv_backend: Optional[str] = typer.Option(None, help="torch | triton | auto \\[default: auto]."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
    workers: int = typer.Option(0, help="Decoding worker processes while loading the shards."),
    on_error: str = typer.Option("fail", help="Corrupt samples: fail | skip (skipped ones are counted)."),
):
    """Train a network with the paper's recipe: SGD, lr / 10 on plateaus, scale jittering, checkpoints.

    Launch on several GPUs or processes with `torchrun --nproc_per_node N -m vgg_toolkit train ...`.
    """
    from ..train.run import run_training

    cli = {k: v for k, v in locals().items() if v is not None and k not in ("config", "data", "run_dir", "resume",
                                                                              "workers", "on_error", "run_training")}
    options = {**_options_from_toml(config), **cli}
    if "init_from" in options:
        options["init_from"] = str(options["init_from"])
    run_training(options, resolve_data(data), run_dir, resume=resume, workers=workers, on_error=on_error)

