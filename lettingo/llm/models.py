"""Load a causal LM and its tokenizer by name: bundled, ``tiny_random``, a local HF folder or a Hub id."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lettingo.llm.bundled import BUNDLED_GGUF, bundled_model_dir
from lettingo.llm.hub import resolve_pretrained
from lettingo.llm.tiny import tiny_random_dir
from lettingo.run_folders import cpu_has_native_bfloat16

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

BUNDLED_PREFIX = "bundled:"
TINY_RANDOM = "tiny_random"
#: ``random_init:<folder>``: a model folder with a ``config.json`` and a tokenizer but no weights, built with random
#: weights where it runs (benchmarks/gpu_smoke.py times the real shapes this way: weights cannot travel there).
RANDOM_INIT = "random_init:"


def resolve_model_path(model: str, cache_dir: str | Path) -> Path:
    """HF model folder for ``model``, converting or building it under ``cache_dir`` on first use.

    ``model`` is ``bundled:<name>`` (``smollm2_135m``, ``gemma3_270m``), ``tiny_random`` or
    ``tiny_random:<seed>``, ``random_init:<folder>`` (see :data:`RANDOM_INIT`), the path of a local folder that
    ``from_pretrained`` can read, or a
    Hugging Face Hub id ``org/name[@revision]`` found in (or, online, fetched into) the HF cache
    (see :func:`lettingo.llm.hub.resolve_pretrained`; ``cache_dir`` is not used for it).
    """
    if model.startswith(BUNDLED_PREFIX):
        name = model.removeprefix(BUNDLED_PREFIX)
        if name not in BUNDLED_GGUF:
            raise ValueError(f"unknown bundled model {model!r}; known: {[BUNDLED_PREFIX + k for k in BUNDLED_GGUF]}")
        return bundled_model_dir(name, cache_dir)
    if model == TINY_RANDOM or model.startswith(TINY_RANDOM + ":"):
        seed = model.partition(":")[2] or "0"
        if not seed.isdigit():
            raise ValueError(f"tiny_random seed must be a non-negative integer, got {model!r}")
        return tiny_random_dir(cache_dir, int(seed))
    if model.startswith(RANDOM_INIT):
        folder = Path(model.removeprefix(RANDOM_INIT))
        if not (folder / "config.json").is_file():
            raise ValueError(f"{folder / 'config.json'} not found: {model!r} needs a folder with a model config")
        return folder
    return resolve_pretrained(model, "model", f"{BUNDLED_PREFIX}<name>, {TINY_RANDOM}[:seed], ")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def training_device(accelerator: str) -> torch.device:
    """The device Lightning trains on for ``trainer.accelerator``: CUDA for ``gpu``, ``cuda`` or ``auto``
    when a GPU is visible, else the CPU."""
    import torch

    on_gpu = str(accelerator) in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    return torch.device("cuda" if on_gpu else "cpu")


def _native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` does bfloat16 arithmetic natively: CUDA, or a CPU with AVX512-BF16 or AMX."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bfloat16())


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The torch dtype that ``dtype`` names on ``device``; the one meaning of ``auto`` in lettingo.

    ``auto`` is bfloat16 where ``device`` has native bfloat16 arithmetic (CUDA; CPUs with AVX512-BF16
    or AMX, where matrix products measured 4-6x faster than in float32), else float32. Anything
    else is a torch dtype or its name, such as ``float16``.
    """
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if _native_bfloat16(device) else torch.float32
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return resolved


def load_causal_lm(
    model: str, cache_dir: str | Path, dtype: str | torch.dtype = "auto", device: str = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``model`` (see :func:`resolve_model_path`) as a trainable causal LM and its tokenizer.

    The model is on ``device`` in ``dtype`` (see :func:`resolve_dtype`: ``auto`` is bfloat16 where
    the device computes it natively, else float32), in eval mode; the tokenizer pads on the left
    and has a pad token (the EOS token if it had none).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model, cache_dir)  # always a local folder: nothing below contacts a hub
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if model.startswith(RANDOM_INIT):
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        with torch_device:  # initialised where it runs: an 8B model's weights never pass through the host
            lm = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    else:
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True,
                                                  trust_remote_code=False)
    lm.to(torch_device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return lm, tokenizer
