"""Rendering and tokenizing prompts for backends that hold a Hugging Face tokenizer."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class TokenizerPrompts:
    """``render`` / ``count_tokens`` shared by the local and vLLM backends.

    Expects ``self.tokenizer`` and ``self.lead_in``. A prompt from a chat template already holds
    its special tokens (BOS included), so it is encoded without adding any; a plain completion
    prompt gets the tokenizer's own (BOS), as the model saw in training.
    """

    tokenizer: PreTrainedTokenizerBase
    lead_in: str

    @property
    def chat(self) -> bool:
        """Whether prompts go through the tokenizer's chat template."""
        return bool(self.tokenizer.chat_template)

    def render(self, instruction: str) -> str:
        """Chat template with the generation prompt if the tokenizer has one, else ``instruction + lead_in``."""
        if self.chat:
            messages = [{"role": "user", "content": instruction}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return instruction + self.lead_in

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered prompt, exactly as the model is fed them."""
        return self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"]

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` as the model is fed it."""
        return len(self.encode(text))

    def stop_ids(self, configured: int | list[int] | None) -> list[int]:
        """Token ids that end a sequence: the tokenizer's EOS and those of the generation config."""
        ids = set(configured if isinstance(configured, list) else [] if configured is None else [configured])
        ids.add(self.tokenizer.eos_token_id)
        return sorted(i for i in ids if i is not None)
