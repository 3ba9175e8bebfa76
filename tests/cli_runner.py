"""The real ``vggtk`` command line, run in-process."""

from typer.testing import CliRunner

from vgg_toolkit.cli import build_app


def vggtk(*args):
    return CliRunner().invoke(build_app(), [str(a) for a in args], env={"COLUMNS": "200"})


def input_error(result) -> str:
    """The message of a command that refused its input: exit status 2, one line on stderr starting
    ``vggtk: error:``, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    text = result.stderr.strip()
    assert "Traceback" not in result.output and text.startswith("vggtk: error: ") and len(text.splitlines()) == 1, \
        result.output
    return text
