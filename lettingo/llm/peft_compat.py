"""PEFT on transformers 5: wrap or load an adapter without the deprecation PEFT itself triggers.

PEFT's `PeftModel.__init__` reads `model.is_gradient_checkpointing`, which transformers 5 deprecated
(for `is_activation_checkpointing`); the FutureWarning is about PEFT's code, not ours, and would print
once per adapter in every run log. Only that one message is silenced, only around PEFT's calls.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

PEFT_DEPRECATION = r"`is_gradient_checkpointing` is deprecated"


@contextmanager
def peft_calls() -> Iterator[None]:
    """A block in which PEFT's own use of transformers' deprecated attribute does not warn."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PEFT_DEPRECATION, category=FutureWarning)
        yield
