"""Stable seeds derived from a run's seed and the names of what they seed (a backbone, a user, a prompt).

A leaf module: it imports nothing of lettingo, so every layer may use it.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object, bits: int = 63) -> int:
    """A ``bits``-bit seed from ``parts``: BLAKE2b-64 of their ``str`` forms joined by NUL, top bits kept.

    Unlike ``hash()`` it is the same in every process and Python version, so a seed derived from
    (run seed, user) or (run seed, sample, prompt) reproduces across runs and machines. The default
    63 bits fit a signed 64-bit integer (torch, vLLM and OpenAI seeds).
    """
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be between 1 and 64, got {bits}")
    digest = hashlib.blake2b("\x00".join(str(part) for part in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - bits)
