"""The whole plugin contract of vggtk: one hook specification per function, nothing else.

The typed objects the hooks exchange live in ``vgg_toolkit.contract``: ``ModelInfo`` and the model
capabilities, ``DataFacts``, ``Head``, ``OptionSpec``, ``TrainScale``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import pluggy

hookspec = pluggy.HookspecMarker("vggtk")


@hookspec
def vggtk_register_architectures(register: Callable[..., None]) -> None:
    """Add network architectures.

    Call ``register(name, factory, *, aliases=(), description="", input_size=224, defaults=None)`` once
    per architecture. ``factory(num_classes: int, *, in_chans: int, input_size: int, **options) -> nn.Module``
    builds the network: ``num_classes`` is the width of its last layer (the head decides it),
    ``in_chans`` and ``input_size`` come from the data, ``options`` from the user, checked against the
    factory's signature (names and annotated types) before anything is built. ``input_size`` is the
    default square input. ``defaults(facts: DataFacts) -> dict`` gives factory options suited to the
    data (e.g. a narrower net for tiny images); the user's options win. What a network can do besides
    ``forward`` it declares by the Protocols of ``vgg_toolkit.contract.model`` (``FullyConvolutional``,
    ``FeatureTaps``, ``WeightLayouts``, ``WarmStart``, ``ReceptiveField``). A network with auxiliary
    classifiers returns ``vgg_toolkit.AuxiliaryOutputs(main, auxiliary, weights)`` while training and
    ``main`` alone in eval mode; the loop adds their weighted head losses (``vgg_toolkit.task_loss``).
    """


@hookspec
def vggtk_identify_weights(shapes: Mapping[str, tuple]) -> Mapping[str, Any] | None:
    """Recognise weights written elsewhere (torchvision, timm, a Caffe release) by their tensor names and
    shapes alone, so that they load without ``--arch``.

    Return ``{"arch": name, "options": {...}, "layout": name}`` when ``shapes`` (tensor name -> shape)
    are the state_dict of one of your architectures: ``options`` are its factory's keyword arguments,
    ``num_classes``, ``in_chans`` and ``input_size`` included, and ``layout`` one that its
    ``WeightLayouts.import_state_dict`` reads. Return ``{"unfit": why}`` when the names are in one of your
    layouts but fit none of your architectures (``why`` is said to the user), and None otherwise.
    """


@hookspec
def vggtk_register_augmentations(register: Callable[..., None]) -> None:
    """Add data augmentations.

    Call ``register(name, factory, *, aliases=(), description="", geometric=False)``. ``factory(**options)``
    returns a callable ``transform(sample: dict, generator: torch.Generator) -> dict`` acting on one
    decoded sample (keys ``image``, a uint8 (C, H, W) tensor, ``label``, ``key`` and optionally
    ``boxes``); all randomness must come from ``generator`` (the sample's own, seeded from (seed, epoch,
    key)). A transform may draw its numbers as ``vgg_toolkit.uniforms(generator.initial_seed(),
    self.draw_stream, n)``: a pipeline gives each op with a ``draw_stream`` attribute a stream of its
    own, and an op that also has ``batch(geometry: vgg_toolkit.BatchGeometry)`` (drawing the same numbers
    through ``geometry.uniforms``, recording its geometry for a whole batch; False declines) lets an
    in-memory training batch be augmented at once. Ops at the end of a pipeline that only mirror or
    shift colours may say ``device_ok = True``: streamed training then runs them on the training
    device, a batch at once, after the workers' decode.
    """


@hookspec
def vggtk_register_evaluators(register: Callable[..., None]) -> None:
    """Add evaluation protocols.

    Call ``register(name, factory, *, aliases=(), description="")``. ``factory(**options)`` returns an
    evaluator: a callable ``evaluator(model, images) -> posteriors`` giving class posteriors (N, classes)
    for a same-size batch (N, C, H, W) of normalised images, or for a list of (C, H, W) images of any
    sizes when it has ``accepts_lists = True``. The options the runner passes: ``scales`` (test scales Q
    or None), ``multi_scale`` (bool).
    """


@hookspec
def vggtk_register_heads(register: Callable[..., None]) -> None:
    """Add task heads.

    Call ``register(name, factory, *, description="", task="classification")``. ``factory(**options)``
    returns a ``vgg_toolkit.contract.task.Head``: the width of the network's last layer, the loss, and the
    error counts per-epoch validation reports. ``vggtk train --head NAME`` trains with it; ``task`` names
    the evaluation task (``vggtk_register_tasks``) that tests a trained net of this head.
    """


@hookspec
def vggtk_register_tasks(register: Callable[..., None]) -> None:
    """Add evaluation tasks besides classification (``vggtk eval --task NAME``).

    Call ``register(name, evaluate, *, description="")``. ``evaluate(request: EvalRequest) -> dict`` runs
    the task's protocols on the request's models and split, prints its table on ``request.console`` and
    returns its results as JSON-ready data, which ``vggtk eval`` writes to ``--out``.
    """


@hookspec
def vggtk_register_options(register: Callable[..., None]) -> None:
    """Declare command-line / TOML options of this plugin.

    Call ``register(OptionSpec(...))`` once per option (``vgg_toolkit.contract.options.OptionSpec``).
    Runtime options reach ``vggtk_prepare_model``; model options are keyword arguments of an
    architecture factory. A name two plugins declare is an error naming both.
    """


@hookspec
def vggtk_register_commands(app: Any) -> None:
    """Add sub-commands to the ``vggtk`` command line. ``app`` is the root ``typer.Typer``."""


@hookspec
def vggtk_prepare_model(model: Any, device: Any, options: Mapping[str, Any]) -> None:
    """Adapt a built model to the device it will run on, in place (for example swap in fused kernels).

    Called after the model is moved to ``device`` (a ``torch.device``). ``options`` holds the value of
    every runtime option plugins declared (their defaults filled in). Changes must keep the model's
    state_dict keys and values.
    """


@hookspec
def vggtk_on_train_event(event: str, state: dict) -> None:
    """Observe the training loop (for loggers), on rank 0. ``event`` is one of ``"start"``, ``"resumed"``,
    ``"initialised"``, ``"step"`` (every ``log_every`` steps), ``"epoch"``, ``"checkpoint"``,
    ``"interrupted"``, ``"end"``; ``state`` is a copy of that moment's metrics and counters."""
