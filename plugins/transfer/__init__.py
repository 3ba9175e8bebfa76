"""Registers ``vggtk extract-features`` (the paper's transfer descriptors for every image of some splits
of the shards, one safetensors file per split) and ``vggtk linear-probe`` (the linear SVM the paper trains
on them)."""

from vgg_toolkit import hookimpl

from .commands import extract_features_command, linear_probe_command


@hookimpl
def vggtk_register_commands(app):
    app.command(name="extract-features")(extract_features_command())
    app.command(name="linear-probe")(linear_probe_command)
