"""Registers ``vggtk distance``: LPIPS-VGG or the distance at one tap of any VGG, between two images or
the images of two folders paired by name. The losses themselves are the public API (``vt.LPIPS``,
``vt.VGGFeatures``, ``vt.perceptual_loss``, ``vt.style_loss``)."""

from vgg_toolkit import hookimpl, with_plugin_options

from .command import distance_command


@hookimpl
def vggtk_register_commands(app):
    app.command(name="distance")(with_plugin_options("distance")(distance_command))
