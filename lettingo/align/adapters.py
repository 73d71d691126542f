"""LoRA adapters: attach one to a causal LM, save it in PEFT format, load it back, generate with it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from lettingo.align.sharding import without_wrappers
from lettingo.artifacts import DIR_MODE, FILE_MODE, writing
from lettingo.llm.base import GenerationBackend
from lettingo.llm.peft_compat import peft_calls

if TYPE_CHECKING:
    import torch


def lora_config(r: int, alpha: float, dropout: float, target_modules: Sequence[str]) -> LoraConfig:
    """A causal-LM LoRA config (rank ``r``, scale ``alpha / r``, dropout on the adapter input)."""
    if r < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {r}")
    return LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=list(target_modules), bias="none")


def attach_lora(model: PreTrainedModel, lora: Mapping[str, Any]) -> PeftModel:
    """Wrap ``model`` with a fresh LoRA adapter from a config mapping (r, alpha, dropout, target_modules).

    Only the adapter is trainable; the base weights are frozen. The adapter starts as the identity
    (LoRA's B is zero), so the wrapped model first computes exactly what the base computes.
    """
    config = lora_config(int(lora["r"]), float(lora["alpha"]), float(lora["dropout"]), list(lora["target_modules"]))
    with peft_calls():
        return get_peft_model(model, config)


def save_adapter(model: PeftModel, folder: str | Path, weights: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Save the adapter in PEFT format (``adapter_config.json`` + ``adapter_model.safetensors``) atomically.

    ``weights`` (keyed as ``model.state_dict()`` keys them) replace the model's own, which a sharding
    strategy leaves split over the ranks (see :func:`lettingo.align.sharding.gather_adapter`).
    The files are written into a temporary folder beside ``folder`` and moved into place only when
    complete, so a crash never leaves a half-written adapter; the folder and its files are readable by
    the group (0755, 0644), whatever the umask. A full disk or a read-only folder fails in one line
    naming ``folder`` (:class:`lettingo.artifacts.WriteFailed`).
    """
    folder = Path(folder)
    tmp: Path | None = None
    try:
        with writing(folder):
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
            if weights is None:
                model.save_pretrained(tmp)
            else:
                with without_wrappers(model):  # PEFT names the adapter's keys after the modules
                    model.save_pretrained(tmp, state_dict=dict(weights))
            for path in tmp.rglob("*"):
                path.chmod(DIR_MODE if path.is_dir() else FILE_MODE)
            tmp.chmod(DIR_MODE)  # mkdtemp makes it 0700
            if folder.exists():
                shutil.rmtree(folder)
            os.rename(tmp, folder)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_adapter(model: PreTrainedModel, folder: str | Path, trainable: bool = False) -> PeftModel:
    """Load a saved adapter onto ``model`` (frozen unless ``trainable``)."""
    if not (Path(folder) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no PEFT adapter in {folder} (adapter_config.json is missing)")
    with peft_calls():
        return PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)


def adapter_backend(backbone: DictConfig, adapter: str | Path, **overrides: Any) -> GenerationBackend:
    """A generation backend for ``backbone`` with the adapter applied.

    Every backend that can serve an adapter takes it as ``adapter``: the local backend merges it into
    the base weights; vLLM serves it as a LoRA request from the same folder.
    """
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no PEFT adapter in {adapter} (adapter_config.json is missing)")
    return instantiate(backbone, adapter=str(adapter), **overrides)
