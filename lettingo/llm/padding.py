"""Token-id sequences of different lengths as one padded batch with its attention mask."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch


def pad_sequences(
    sequences: Sequence[Sequence[int] | torch.Tensor],
    pad_id: int,
    side: Literal["left", "right"] = "left",
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` of shape (len(sequences), longest), both int64, padded on ``side`` with ``pad_id``.

    ``mask`` is 1 on the tokens and 0 on the padding. Prompts are padded on the left, so that every
    row's last token sits in the last column; completions on the right. The batch is built on
    ``device`` (the CPU when None); sequences that are already tensors there are copied in place.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if not sequences:
        raise ValueError("cannot pad an empty list of sequences")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(sequences), width), dtype=torch.long, device=device)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.as_tensor(seq, dtype=torch.long, device=device)
        mask[row, span] = 1
    return ids, mask
