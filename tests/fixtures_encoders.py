"""Fixtures for the encoder f_Rec: a tiny BERT with a WordPiece tokenizer trained on the words cases use."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

#: The vocabulary the tiny tokenizer is trained on: enough for the cases' and prompts' words.
WORDS = ("movie drama comedy action thriller horror romance user profile likes dislikes rated like neutral dislike "
         "item to predict recent ratings newest first no the a of and with is high low").split()


def build_tiny_bert(folder: Path) -> Path:
    """A 2-layer hidden-16 BERT with a WordPiece tokenizer trained here on :data:`WORDS`, saved in ``folder``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.train_from_iterator([" ".join(WORDS)] * 3 + list("0123456789()|:.,"),
                                trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer = BertTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=256)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of :func:`build_tiny_bert`, built once per test session."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))
