"""Registers ``vggtk export``: a trained or pretrained net to ONNX or a torch.export program, in its
classifier, dense (any size), features or localisation-boxes form, checked before it is kept."""

from vgg_toolkit import hookimpl

from .command import export_command


@hookimpl
def vggtk_register_commands(app):
    app.command(name="export")(export_command)
