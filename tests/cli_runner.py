"""The real ``vggtk`` command line, run in-process."""

from typer.testing import CliRunner

from vgg_toolkit.cli import build_app


def vggtk(*args):
    return CliRunner().invoke(build_app(), [str(a) for a in args], env={"COLUMNS": "200"})
