"""On CPU, the training loop keeps freed blocks in the process: a step's activations, freed and asked for
again, do not fault their pages in anew (measured in minor page faults, in a fresh process)."""

import subprocess
import sys

import pytest

SCRIPT = r"""
import resource, sys, torch
from vgg_toolkit.runtime.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(8 << 20).sum()  # 32 MB: allocated and freed once first
before = faults()
for _ in range(20):
    torch.ones(8 << 20).sum()
print(faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_activations_are_reused_without_page_faults():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.strip().splitlines()[-1])

    default, kept = faults("default"), faults("keep")
    # 20 blocks of 8,192 pages: glibc's default unmaps each one and faults it back in; kept, the pages
    # are faulted in once at most and then serve every block.
    assert default > 15 * 8192 and kept < 2 * 8192, (default, kept)
