"""Registers the classification head: the paper's task (Sec. 3.1), softmax cross-entropy on one label
per image, with top-1 and top-5 error reported per epoch."""

from vgg_toolkit import hookimpl

from .head import ClassificationHead


@hookimpl
def vggtk_register_heads(register):
    register("classification", ClassificationHead, aliases=["cls"],
             description="one class per image: cross-entropy loss, top-1 / top-5 error")
