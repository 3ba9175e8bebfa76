"""Registers ``vggtk compare``: networks side by side, a chart of accuracy against operations, and the
paper's arithmetic for stacks of 3x3 layers. Built on the public API alone, like any third-party command."""

from vgg_toolkit import hookimpl

from .command import compare


@hookimpl
def vggtk_register_commands(app):
    app.command(name="compare")(compare)
