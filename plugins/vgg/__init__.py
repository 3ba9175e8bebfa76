"""Registers the six VGG configurations of Table 1."""

from functools import partial

from vgg_toolkit.host.manager import hookimpl

from .net import VGG

# name: (config, lrn, aliases, description)
_VARIANTS = {
    "vgg-a": ("A", False, ["vgg11"], "config A, 11 weight layers"),
    "vgg-a-lrn": ("A", True, [], "config A with LRN after the first conv"),
    "vgg-b": ("B", False, ["vgg13"], "config B, 13 weight layers"),
    "vgg-c": ("C", False, [], "config C, 16 weight layers with three 1x1 convs"),
    "vgg-d": ("D", False, ["vgg16"], "config D, 16 weight layers"),
    "vgg-e": ("E", False, ["vgg19"], "config E, 19 weight layers"),
}


def _build(config: str, lrn: bool, num_classes: int = 1000, **kwargs) -> VGG:
    return VGG(config, num_classes=num_classes, lrn=lrn, **kwargs)


@hookimpl
def vggtk_register_architectures(register):
    for name, (config, lrn, aliases, description) in _VARIANTS.items():
        register(name, partial(_build, config, lrn), aliases=aliases, description=description,
                 family="vgg", input_size=224)
