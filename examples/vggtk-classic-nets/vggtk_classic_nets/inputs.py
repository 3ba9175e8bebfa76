"""What a built net refuses at run time: taps it does not have, images its classifier cannot take."""

from __future__ import annotations

from typing import Iterable

import vgg_toolkit as vt


class InputError(vt.VggtkError, ValueError):
    """A VggtkError, so vggtk's commands print it as one line; a ValueError, as a script would expect."""


def check_taps(taps: Iterable[str], known: tuple[str, ...]) -> frozenset[str]:
    wanted = frozenset([taps] if isinstance(taps, str) else taps)
    unknown = sorted(wanted - set(known))
    if unknown:
        raise InputError(f"unknown feature tap(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return wanted
