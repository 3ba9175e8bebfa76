"""Registers the paper's localisation heads (Appendix A): ``scr`` (one box) and ``pcr`` (a box per
class), trained with ``vggtk train --head scr|pcr --init-from CLASSIFIER``."""

from functools import partial

from vgg_toolkit import hookimpl

from .heads import RegressionHead


@hookimpl
def vggtk_register_heads(register):
    register("scr", partial(RegressionHead, per_class=False),
             description="single-class regression: one box (4 outputs), Euclidean loss")
    register("pcr", partial(RegressionHead, per_class=True),
             description="per-class regression: a box per class (4 x classes), loss on the true class's box")
