"""``tiny_random``: a 2-layer Llama with random weights and a locally trained tokenizer, for fast tests."""

from __future__ import annotations

from pathlib import Path

from lettingo.llm.cache import materialize

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Words the tokenizer learns merges for: prompt boilerplate, movie titles and genres, profile prose.
CORPUS = """
The user rated these movies, oldest first. Rating 5 of 5, 4 of 5, 3 of 5, 2 of 5, 1 of 5.
Toy Story (1995) Animation Children's Comedy. Star Wars (1977) Action Adventure Sci-Fi War.
The Godfather (1972) Crime Drama. Fargo (1996) Crime Drama Thriller. Titanic (1997) Drama Romance.
Pulp Fiction (1994) Crime Drama. Casablanca (1942) Drama Romance War. Alien (1979) Horror Sci-Fi.
Jurassic Park (1993) Action Adventure Sci-Fi. The Matrix (1999) Action Sci-Fi Thriller.
Books, restaurants, reviews, stars, categories, genres, documentary, musical, western, mystery.
User profile: this user likes dramas and thrillers, dislikes horror, rates comedies as neutral.
They enjoy classic films, strong characters and clever plots; they give high ratings to crime
movies and low ratings to children's films. Mean rating 3.6, most frequent rating 4.
Write a profile of the user that helps predict whether they will like a new item.
"""


def tiny_random_dir(cache_dir: str | Path, seed: int = 0) -> Path:
    """Folder of the ``tiny_random`` model for ``seed`` under ``cache_dir``, built on first use."""
    return materialize(Path(cache_dir) / f"tiny_random-{seed}", lambda tmp: _build(tmp, seed))


def _build(folder: Path, seed: int) -> None:
    """Write the tokenizer and the seeded random model into ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        # Wide initial weights make the logits far apart, so greedy decoding is not decided by
        # rounding noise and comes out the same at every batch size.
        initializer_range=0.5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _make_tokenizer():
    """A byte-level BPE tokenizer trained on :data:`CORPUS` (any text encodes; no unknown tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )
