"""Passing a KV cache to a model's forward under the keyword its transformers version takes.

transformers renamed the forward argument ``past_key_values`` to ``cache``; the old name still
works but warns (a ``FutureWarning``) on every call, so that a decode loop printed one per step.
Older releases know only ``past_key_values``. The keyword is read from the model's signature.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

import torch

NEW_NAME, OLD_NAME = "cache", "past_key_values"


@cache
def _keyword(model_class: type) -> str:
    parameters = inspect.signature(model_class.forward).parameters  # follows the deprecation wrapper
    return NEW_NAME if NEW_NAME in parameters else OLD_NAME


def cache_kwargs(model: torch.nn.Module, kv_cache: Any) -> dict[str, Any]:
    """``{keyword: kv_cache}`` to unpack into ``model(...)``, the keyword being ``cache`` where the model
    takes it, else ``past_key_values``. A PEFT wrapper passes keywords on to the model it wraps, whose
    signature decides."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {_keyword(type(base)): kv_cache}
