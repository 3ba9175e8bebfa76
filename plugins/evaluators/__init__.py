"""Registers the paper's test protocols (Sec. 3.2) as evaluators; the implementations are in
``eval_protocols``."""

from vgg_toolkit import hookimpl

from .protocols import CenterCrop, Combined, Dense, MultiCrop


@hookimpl
def vggtk_register_evaluators(register):
    register("center", CenterCrop, aliases=["centre", "single-crop"],
             description="rescale to Q, one centre crop (the Linear classifier)")
    register("dense", Dense, description="fully-convolutional net on the whole image, score map averaged, "
                                         "+ horizontal flip")
    register("multicrop", MultiCrop, aliases=["multi-crop"],
             description="5x5 grid of crops x 2 flips per scale (50 per scale, 150 over 3 scales)")
    register("combined", Combined, aliases=["dense+multicrop"],
             description="average of the dense and multi-crop posteriors")
