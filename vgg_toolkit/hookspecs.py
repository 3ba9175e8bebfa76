"""The whole plugin contract of vggtk: one hook specification per function, nothing else."""

import pluggy

hookspec = pluggy.HookspecMarker("vggtk")


@hookspec
def vggtk_register_architectures(register):
    """Add network architectures.

    Call ``register(name, factory, **info)`` once per architecture. ``factory(num_classes: int = 1000,
    **kwargs) -> torch.nn.Module`` builds the network. ``info`` is free-form metadata shown by
    ``vggtk models`` (``aliases=[...]`` adds alternative names; ``description=`` a one-line summary).
    """


@hookspec
def vggtk_register_augmentations(register):
    """Add data augmentations.

    Call ``register(name, factory, **info)``. ``factory(**options)`` returns a callable
    ``transform(sample: dict, generator: torch.Generator) -> dict`` acting on one decoded sample
    (keys ``image``, ``label`` and optionally ``boxes``); all randomness must come from ``generator``.
    """


@hookspec
def vggtk_register_evaluators(register):
    """Add evaluation protocols.

    Call ``register(name, factory, **info)``. ``factory(**options)`` returns an evaluator: a callable
    ``evaluator(model, images) -> posteriors`` giving class posteriors for one image or a same-size batch.
    """


@hookspec
def vggtk_register_heads(register):
    """Add task heads (the last layers of a task with their loss and output decoding).

    Call ``register(name, factory, **info)``. ``factory(in_features: int, **options)`` returns an
    ``nn.Module`` with ``loss(outputs, targets)`` and ``decode(outputs)`` methods.
    """


@hookspec
def vggtk_register_commands(app):
    """Add sub-commands to the ``vggtk`` command line. ``app`` is the root ``typer.Typer``."""


@hookspec
def vggtk_prepare_model(model, device):
    """Adapt a built model to the device it will run on, in place (for example swap in fused kernels).

    Called after the model is moved to ``device``; ``model.vggtk_options`` (when present) carries the
    user's choices, such as ``conv_backend``. Changes must keep the model's state_dict keys and values.
    """


@hookspec
def vggtk_on_train_event(event, state):
    """Observe the training loop (for loggers), on rank 0. ``event`` is one of ``"start"``, ``"resumed"``,
    ``"initialised"``, ``"step"`` (every ``log_every`` steps), ``"epoch"``, ``"checkpoint"``,
    ``"interrupted"``, ``"end"``; ``state`` is a copy of that moment's metrics and counters."""
