"""LettinGo's GPU paths timed on random-weight models of the paper's shapes: profiles/s, f_Rec cases/s, DPO s/pair.

Weights cannot travel to a borrowed GPU machine (64 MiB carried in all, offline), so each model is built with random
weights on the GPU from its real config (:data:`SHAPES`: SmolLM2-135M-Instruct's and Meta-Llama-3-8B-Instruct's),
through the ``random_init:<folder>`` model spec, with a word-level tokenizer of the model's vocabulary size beside
it (one token per word of the synthetic texts). Speed depends on the shapes and the token counts, not on the
weights. Per model, each measured after a warm-up call:

- profiles/s: ``LocalBackend.generate`` (the transformers generation path), prompts of the paper's H = 70 length,
  N = 10 samples per prompt at T = 1.0, up to 256 new tokens (the new tokens per profile are printed beside it: a
  random model seldom stops early);
- f_Rec cases/s: ``ZeroShotLLM`` (label-word scoring, each user's prefix shared by its 10 profiles) on cases of
  K = 10 recent items and a 256-token profile;
- DPO s/pair: one epoch of the Lightning ``DpoModule``, LoRA r = 8 on the attention projections, bf16 weights
  under bf16-mixed precision, gradient checkpointing, one GPU, prompts of 2,048 tokens and completions of 256,
  micro-batches of 2 pairs (the reference log-probs' precomputation counted in).

``--cpu`` runs the same code paths on tiny shapes in seconds (the fast test's rehearsal). Printed last: one JSON
line per model. Run: python benchmarks/gpu_shapes.py [--models smollm2_135m,llama3_8b_instruct] [--cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

#: The architecture of each model (the ``config.json`` of its Hub repository: HuggingFaceTB/SmolLM2-135M-Instruct,
#: meta-llama/Meta-Llama-3-8B-Instruct); both are Llama models.
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2_135m": {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192,
                     "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True},
    "llama3_8b_instruct": {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
                           "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                           "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
                           "tie_word_embeddings": False},
}
#: What ``--cpu`` shrinks every shape to (the vocabulary too: the output layer dominates a tiny model).
TINY = {"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2}
SPECIAL = ("<pad>", "<s>", "</s>", "<unk>")
LABEL_WORDS = {"like": "like", "neutral": "neutral", "dislike": "dislike"}
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


@dataclass(frozen=True)
class Workload:
    """How much each path runs, at which token counts."""

    prompts: int  # explore: prompts (users), each sampled n times
    prompt_tokens: int  # explore prompt length (paper, H = 70: ~2,500)
    n: int  # samples per prompt (paper: 10)
    new_tokens: int  # profile length limit (paper: 256)
    gen_batch: int  # sequences per generate forward
    frec_users: int  # f_Rec: users, each with profiles_per_user cases
    profiles_per_user: int
    recent: int  # K recent items per case (paper: 10)
    profile_tokens: int
    frec_batch: int
    pairs: int  # DPO pairs (two per user, sharing its prompt)
    dpo_prompt_tokens: int  # align.data.max_prompt_tokens of the paper config: 2,048
    dpo_completion_tokens: int  # ... max_completion_tokens: 256
    micro_batch: int  # pairs per forward/backward (paper config: 2)


PAPER = Workload(prompts=4, prompt_tokens=2500, n=10, new_tokens=256, gen_batch=40, frec_users=20,
                 profiles_per_user=10, recent=10, profile_tokens=256, frec_batch=32, pairs=8,
                 dpo_prompt_tokens=2048, dpo_completion_tokens=256, micro_batch=2)
REHEARSAL = Workload(prompts=2, prompt_tokens=40, n=2, new_tokens=4, gen_batch=4, frec_users=2, profiles_per_user=2,
                     recent=3, profile_tokens=12, frec_batch=4, pairs=2, dpo_prompt_tokens=32,
                     dpo_completion_tokens=8, micro_batch=2)


def write_model_folder(folder: Path, shape: dict[str, Any]) -> Path:
    """A ``random_init`` folder: the Llama config of ``shape`` and a word-level tokenizer of its vocabulary
    (special tokens, the label words, then ``w<i>``), with the chat template of ``tiny_random``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    from lettingo.llm.tiny import CHAT_TEMPLATE

    words = [*SPECIAL, *LABEL_WORDS.values()]
    vocab = {word: i for i, word in enumerate([*words, *(f"w{i}" for i in range(shape["vocab_size"] - len(words)))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", padding_side="left", chat_template=CHAT_TEMPLATE)
    tokenizer.save_pretrained(folder)
    LlamaConfig(**shape, bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"],
                dtype="bfloat16").save_pretrained(folder)
    return folder


def words(rng: Any, count: int, vocab_size: int) -> str:
    """``count`` random vocabulary words (one token each)."""
    return " ".join(f"w{i}" for i in rng.integers(0, vocab_size - 16, size=count))


def time_generation(spec: str, work: Workload, vocab_size: int, device: str, rng: Any) -> dict[str, float]:
    """Profiles/s of the transformers generation path at the explore shape (after a one-token warm-up)."""
    from lettingo.llm.local import LocalBackend

    backend = LocalBackend("smoke", spec, "", batch_size=work.gen_batch, dtype="auto", device=device)
    try:
        prompts = [backend.render(words(rng, work.prompt_tokens, vocab_size)) for _ in range(work.prompts)]
        backend.generate(prompts[:1], n=1, max_new_tokens=1)
        began = time.perf_counter()
        out = backend.generate(prompts, n=work.n, temperature=1.0, max_new_tokens=work.new_tokens, seed=0)
        seconds = time.perf_counter() - began
    finally:
        backend.close()
    rows = [g for samples in out for g in samples]
    return {"profiles_per_s": len(rows) / seconds, "new_tokens_per_profile": sum(g.completion_tokens for g in rows)
            / len(rows), "tokens_per_prompt": sum(g.prompt_tokens for g in rows) / len(rows)}


def frec_cases(work: Workload, vocab_size: int, rng: Any) -> list[Any]:
    """Cases of ``work``'s shape: each user's recent items and target, one case per profile."""
    from lettingo.recommender.cases import RecCase

    def item(i: int) -> dict[str, Any]:
        return {"item_id": str(i), "title": words(rng, 6, vocab_size), "attributes": ["Drama", "Crime"],
                "rating": 4.0, "label": "like", "text": ""}

    cases = []
    for user in range(work.frec_users):
        recent, target = tuple(item(user * 100 + k) for k in range(work.recent)), item(user * 100 + 99)
        cases += [RecCase(f"u{user}", words(rng, work.profile_tokens, vocab_size), recent, target)
                  for _ in range(work.profiles_per_user)]
    return cases


def time_frec(spec: str, work: Workload, vocab_size: int, device: str, rng: Any) -> dict[str, float]:
    """Cases/s of the zero-shot label-word f_Rec (after a warm-up on one user's cases)."""
    import yaml

    from lettingo import CONFIG_DIR
    from lettingo.recommender.llm import ZeroShotLLM

    prompt = yaml.safe_load((Path(CONFIG_DIR) / "recommender" / "shared" / "llm_prompt.yaml").read_text())
    frec = ZeroShotLLM("smoke", spec, "", prompt, LABEL_WORDS, {"max_chars": 120, "review_chars": 0},
                       batch_size=work.frec_batch, dtype="auto", device=device)
    cases = frec_cases(work, vocab_size, rng)
    frec.predict(cases[: work.profiles_per_user])
    began = time.perf_counter()
    frec.predict(cases)
    seconds = time.perf_counter() - began
    tokens = sum(len(p.ids) for p in frec.scorer.encode(cases)) / len(cases)
    del frec
    return {"frec_cases_per_s": len(cases) / seconds, "frec_tokens_per_case": tokens}


def time_dpo(spec: str, work: Workload, vocab_size: int, device: str, rng: Any) -> dict[str, float | None]:
    """Seconds per pair of one DPO epoch through Lightning (LoRA, gradient checkpointing; bf16-mixed on CUDA)."""
    import lightning as L
    import pandas as pd
    import torch

    from lettingo.align.adapters import attach_lora
    from lettingo.align.data import AlignDataModule, preference_examples
    from lettingo.align.dpo import DpoModule
    from lettingo.align.training import checkpoint_activations
    from lettingo.llm.models import load_causal_lm

    model, tokenizer = load_causal_lm(spec, "", dtype="auto", device=device)
    pairs = pd.DataFrame([{"user_id": f"u{i // 2}", "prompt": words(rng, work.dpo_prompt_tokens, vocab_size),
                           "chosen": words(rng, work.dpo_completion_tokens, vocab_size),
                           "rejected": words(rng, work.dpo_completion_tokens, vocab_size)} for i in range(work.pairs)])
    examples, _ = preference_examples(pairs, tokenizer, work.dpo_prompt_tokens + 8, work.dpo_completion_tokens + 8)
    module = DpoModule(attach_lora(model, LORA), partial(torch.optim.AdamW, lr=5e-6), share_prompt=False)
    checkpoint_activations(module)
    on_gpu = device == "cuda"
    trainer = L.Trainer(accelerator="gpu" if on_gpu else "cpu", devices=1, precision="bf16-mixed" if on_gpu else
                        "32-true", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, gradient_clip_val=1.0)
    began = time.perf_counter()
    trainer.fit(module, datamodule=AlignDataModule(examples, [], work.micro_batch, tokenizer.pad_token_id))
    seconds = time.perf_counter() - began
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None
    del trainer, module, model
    return {"dpo_seconds_per_pair": seconds / len(pairs), "dpo_peak_gib": peak}


def measure(name: str, work: Workload, device: str, folder: Path) -> dict[str, Any]:
    """Every path of model ``name`` (tiny on the CPU), the accelerator's memory given back after each."""
    import numpy as np

    from lettingo.runtime import release_accelerator_memory

    shape = SHAPES[name] if device == "cuda" else {**SHAPES[name], **TINY}
    spec = f"random_init:{write_model_folder(folder / name, shape)}"
    result: dict[str, Any] = {"model": name, "device": device, **asdict(work)}
    for timer in (time_generation, time_frec, time_dpo):
        result |= timer(spec, work, shape["vocab_size"], device, np.random.default_rng(0))
        release_accelerator_memory()
    return result


def report_line(result: dict[str, Any]) -> str:
    """One human-readable line of a model's numbers."""
    return (f"{result['model']} ({result['device']}): profiles/s {result['profiles_per_s']:.3g} "
            f"({result['new_tokens_per_profile']:.0f} new tokens each after {result['tokens_per_prompt']:.0f}), "
            f"f_Rec cases/s {result['frec_cases_per_s']:.3g} ({result['frec_tokens_per_case']:.0f} tokens each), "
            f"DPO s/pair {result['dpo_seconds_per_pair']:.3g}"
            + ("" if result["dpo_peak_gib"] is None else f" (peak {result['dpo_peak_gib']:.1f} GiB allocated)"))


def main(argv: list[str] | None = None) -> int:
    """Measure each model of ``--models`` and print its line, then its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SHAPES), help=f"comma-separated, from {list(SHAPES)}")
    parser.add_argument("--cpu", action="store_true", help="rehearse on the CPU with tiny shapes and workloads")
    args = parser.parse_args(argv)
    import torch

    from lettingo.runtime import quiet_third_party_deprecations

    quiet_third_party_deprecations()
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_shapes: torch sees no CUDA GPU (use --cpu to rehearse on the CPU)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="lettingo_shapes_") as tmp:
        for name in args.models.split(","):
            result = measure(name, REHEARSAL if args.cpu else PAPER, "cpu" if args.cpu else "cuda", Path(tmp))
            print(report_line(result), flush=True)
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
