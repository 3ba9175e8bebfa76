"""Process memory. Keeping freed memory in the process on CPU: glibc hands large freed blocks (a step's
activations) back to the operating system, and the next step faults every page of them back in, one by
one; on a 2-core CPU that cost a tenth of a small net's training step. And telling the allocator's
refusal, a request too large, from other errors."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

# mallopt parameters of glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

_KEEP = 1 << 30  # blocks up to 1 GiB come from the heap, and up to 1 GiB of free heap stays mapped
_PAD = 64 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to serve large blocks from its heap and not to trim the heap's free top: the pages
    a training step frees are reused by the next. Once per process; False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, _KEEP), (_M_TRIM_THRESHOLD, _KEEP), (_M_TOP_PAD, _PAD)))


def is_out_of_memory(exc: BaseException) -> bool:
    """The allocator's refusal (CPU or GPU): a request too large, which is the user's to change."""
    import torch

    text = str(exc)
    # "Storage size calculation overflowed": a tensor larger than any address space, asked before the
    # allocator is (a width of 1e9): the same request too large
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text or \
        "Storage size calculation overflowed" in text
