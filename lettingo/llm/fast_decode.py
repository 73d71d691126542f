"""Two measured fixes for batched decoding on a CPU (SmolLM2 and Gemma 3, bfloat16, one thread).

1. A KV cache written in place. transformers' ``DynamicCache`` grows by ``torch.cat`` of every
   layer's keys and values at every step, copying the whole cache each time; writing into a
   buffer sized for prompt + new tokens made a batch-32 decode step about 10% cheaper.
2. ``sdpa`` with its mask always built. When a batch has no padding, transformers leaves the mask
   out and relies on ``is_causal``; torch's CPU kernel for that case took 3x longer per decode
   step (SmolLM2, batch 32: 303 ms against 106 ms) and up to 1.4x longer per prefill.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, PretrainedConfig
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

MASKED_SDPA = "lettingo_masked_sdpa"  # attn_implementation name registered at the end of this module


class PreallocatedLayer(DynamicLayer):
    """A cache layer that writes new keys/values into a buffer with room for ``capacity`` tokens.

    ``keys`` / ``values`` are views of the filled part, so everything written against
    ``DynamicLayer`` (mask sizes, batch selection) keeps working. It keeps every token, also for
    sliding-window layers: the sliding-window mask, built from the model config, hides what lies
    outside the window.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write the new states after the filled part."""
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"KV cache full: {end} tokens exceed its capacity of {self.capacity}")
        if not self.is_initialized:
            self.dtype, self.device = key_states.dtype, key_states.device
            self._keys = key_states.new_empty(*key_states.shape[:2], self.capacity, key_states.shape[-1])
            self._values = value_states.new_empty(*value_states.shape[:2], self.capacity, value_states.shape[-1])
            self.is_initialized = True
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def _expose(self) -> None:
        self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

    def get_seq_length(self) -> int:
        """Number of tokens written so far."""
        return self.length

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row ``repeats`` times (the ``n`` samples of a prompt share its prefill)."""
        self._keys = self._keys.repeat_interleave(repeats, dim=0)
        self._values = self._values.repeat_interleave(repeats, dim=0)
        self._expose()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows ``indices`` (finished sequences leave the batch)."""
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._expose()


def preallocated_cache(config: PretrainedConfig, capacity: int) -> Cache:
    """A cache of :class:`PreallocatedLayer` for every layer of a decoder with ``config``."""
    layers = config.get_text_config(decoder=True).num_hidden_layers
    return Cache(layers=[PreallocatedLayer(capacity) for _ in range(layers)])


def _always_materialized_mask(*args, **kwargs) -> torch.Tensor | None:
    """``sdpa``'s boolean mask, never left to ``is_causal``."""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(MASKED_SDPA, sdpa_attention_forward)
AttentionMaskInterface.register(MASKED_SDPA, _always_materialized_mask)
