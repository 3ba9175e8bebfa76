"""Registers the six VGG configurations of Table 1, with their recipe for small images and the
options of their factory on the command line."""

from functools import partial

from vgg_toolkit import DataFacts, OptionSpec, hookimpl

from .identify import identify
from .net import INITS, VGG

# name: (config, lrn, aliases, description)
_VARIANTS = {
    "vgg-a": ("A", False, ["vgg11"], "config A, 11 weight layers"),
    "vgg-a-lrn": ("A", True, [], "config A with LRN after the first conv"),
    "vgg-b": ("B", False, ["vgg13"], "config B, 13 weight layers"),
    "vgg-c": ("C", False, [], "config C, 16 weight layers with three 1x1 convs"),
    "vgg-d": ("D", False, ["vgg16"], "config D, 16 weight layers"),
    "vgg-e": ("E", False, ["vgg19"], "config E, 19 weight layers"),
}


def training_defaults(facts: DataFacts) -> dict:
    """What `vggtk train` builds unless told otherwise. Photos: Glorot's init, which the paper found
    trains the deep configurations from scratch (Sec. 3.1, after submission); its own N(0, 0.01^2) needs
    the A -> deeper start for them (``--init paper --init-from``). Images under 64 px: a narrow net,
    He-initialised, since at that width neither the paper's init nor Glorot's moves a plain (no
    BatchNorm) 11-layer net off chance level within the demo's epochs."""
    if facts.small_images:
        return {"width": 0.25, "fc_dim": 256, "init": "kaiming"}
    return {"init": "glorot"}


@hookimpl
def vggtk_register_architectures(register):
    for name, (config, lrn, aliases, description) in _VARIANTS.items():
        register(name, partial(VGG, config, lrn=lrn), aliases=aliases, description=description,
                 input_size=224, defaults=training_defaults)


@hookimpl
def vggtk_register_options(register):
    for spec in (
        OptionSpec("width", float, 1.0, "Channel multiplier of the conv layers [default: 1, or 0.25 below 64 px].",
                   target="model"),
        OptionSpec("fc_dim", int, 4096, "Width of FC6/FC7 [default: 4096, or 256 below 64 px].", target="model"),
        OptionSpec("batch_norm", bool, False, "BatchNorm after each conv (not in the paper).", target="model"),
        OptionSpec("init", str, "glorot", "paper (N(0, 0.01^2)) | glorot | kaiming [default: glorot, or kaiming "
                   "below 64 px].",
                   choices=INITS, target="model"),
        OptionSpec("dropout", float, 0.5, "Dropout probability on FC6 and FC7.", target="model"),
    ):
        register(spec)


@hookimpl
def vggtk_identify_weights(shapes):
    return identify(shapes)
