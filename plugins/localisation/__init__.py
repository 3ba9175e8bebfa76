"""Registers the paper's localisation (Appendix A): the heads ``scr`` (one box) and ``pcr`` (a box per
class), trained with ``vggtk train --head scr|pcr --init-from CLASSIFIER``; the ``localisation`` task of
``vggtk eval`` (protocols 1 and 2, a centre-box baseline); and ``vggtk predict`` for a user's photos."""

from functools import partial

from vgg_toolkit import OptionSpec, hookimpl, with_plugin_options

from .evaluate import localisation_task
from .heads import RegressionHead
from .predict import predict_command


EVAL_ONLY = ("classifier", "merge", "merge_score", "merge_iou", "wide_scales", "boxes_png")


@hookimpl
def vggtk_register_heads(register):
    register("scr", partial(RegressionHead, per_class=False), task="localisation",
             description="single-class regression: one box (4 outputs), Euclidean loss")
    register("pcr", partial(RegressionHead, per_class=True), task="localisation",
             description="per-class regression: a box per class (4 x classes), loss on the true class's box")


@hookimpl
def vggtk_register_tasks(register):
    register("localisation", localisation_task, aliases=["localization"],
             description="the paper's localisation protocols and a centre-box baseline (vggtk eval --task)")


@hookimpl
def vggtk_register_options(register):
    register(OptionSpec("classifier", str, None, "Localisation protocol 2: the classification checkpoint whose "
                        "top-5 classes the boxes are for.", commands=("eval",)))
    register(OptionSpec("merge", str, "overfeat", "Localisation protocol 2's merge: overfeat (the best-rated "
                        "merged box, rated by the classifier's window scores) | support (the most-supported "
                        "cluster, the earlier rule).", commands=("eval",), choices=("overfeat", "support")))
    register(OptionSpec("merge_score", float, None, "Localisation protocol 2, --merge overfeat: the match score "
                        "(centre distance in mean sides + 1 - IoU) below which boxes merge [default: picked on "
                        "the val split].", commands=("eval",), bounds=(0.0, 100.0)))
    register(OptionSpec("merge_iou", float, None, "Localisation protocol 2, --merge support: the IoU at which "
                        "boxes merge [default: picked on the val split].", commands=("eval",), bounds=(0.0, 1.0)))
    register(OptionSpec("wide_scales", bool, False, "Localisation protocol 2 with --multi-scale: {S-32, S, S+32} "
                        "instead of the paper's {S-32, S}.", commands=("eval",)))
    register(OptionSpec("boxes_png", str, None, "Localisation: draw the first 16 images with their true and "
                        "predicted boxes (one colour per method) into this PNG.", commands=("eval",)))


@hookimpl
def vggtk_register_commands(app):
    # predict runs nets as eval does (backend options and all) but has no protocol 2 and draws its own pictures
    app.command(name="predict")(with_plugin_options("eval", exclude=EVAL_ONLY)(predict_command))
