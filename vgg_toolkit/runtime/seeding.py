"""Seeds derived from names, so randomness depends on (seed, epoch, sample, step), not on history."""

import hashlib


def derived_seed(*parts) -> int:
    """A 63-bit seed from any parts, stable across processes, platforms and Python versions."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
