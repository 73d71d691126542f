"""Fitting the training of a large causal LM with a LoRA adapter in memory: activation (gradient)
checkpointing of its decoder layers, and the FSDP wrap policy and mixed precision that shard them.

Both find the decoder layers the same way, as transformers' ``GradientCheckpointingLayer`` (the base
class of every decoder layer that supports checkpointing), so they work for any Hub causal LM
without naming its layer class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch.distributed.fsdp import MixedPrecision
    from torch.distributed.fsdp.wrap import CustomPolicy
    from transformers import PreTrainedModel

#: What the checkpointed forward is called with. Non-reentrant is what torch and transformers recommend;
#: it needs no input that requires grad, so a frozen base with a LoRA adapter gets its gradients.
CHECKPOINT_KWARGS = {"use_reentrant": False}


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute every decoder layer's activations in the backward pass instead of keeping them.

    ``model`` is the base model under a PEFT wrapper (``peft_model.get_base_model()``) or any causal LM.
    Its KV cache is switched off (a checkpointed layer cannot fill one: transformers drops it in
    training) and its input embeddings are made to require grad, as PEFT does for adapters, so the
    checkpointed segments see an input with a gradient path even though the base is frozen.
    """
    model.config.use_cache = False
    # transformers 5 renamed gradient_checkpointing_enable (deprecated, removed in v6).
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
    else:  # pragma: no cover  (transformers before the rename)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
    # Enabling may already have hooked the embeddings (transformers does for input_ids models, PEFT for
    # adapters): replace those hooks with one, so calling this twice stacks nothing.
    model.disable_input_require_grads()
    model.enable_input_require_grads()


def is_checkpointing(model: torch.nn.Module) -> bool:
    """Whether any decoder layer of ``model`` recomputes its activations in the backward pass."""
    return any(is_decoder_layer(m) and bool(getattr(m, "gradient_checkpointing", False)) for m in model.modules())


def is_decoder_layer(module: torch.nn.Module) -> bool:
    """Whether ``module`` is one repeated block of a transformers model (a ``GradientCheckpointingLayer``)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return isinstance(module, GradientCheckpointingLayer)


def is_trainable_leaf(module: torch.nn.Module) -> bool:
    """Whether ``module`` has no children and a trainable weight: a LoRA ``lora_A``/``lora_B`` projection."""
    import torch

    weight = getattr(module, "weight", None)
    leaf = next(module.children(), None) is None
    return leaf and isinstance(weight, torch.nn.Parameter) and weight.requires_grad


def own_fsdp_unit(module: torch.nn.Module) -> bool:
    """Whether :func:`fsdp_wrap_policy` makes ``module`` an FSDP unit of its own."""
    return is_decoder_layer(module) or is_trainable_leaf(module)


def fsdp_wrap_policy() -> CustomPolicy:
    """FSDP's auto-wrap policy for a causal LM with a LoRA adapter: one unit per decoder layer, and one
    per trainable leaf (the adapter's projections), as PEFT's ``fsdp_auto_wrap_policy`` does.

    FSDP flattens a unit's parameters into one tensor, which needs one dtype and one ``requires_grad``:
    the adapter (trainable, float32) is therefore kept out of the units of the frozen (bfloat16) base.
    Use as ``FSDPStrategy(auto_wrap_policy=fsdp_wrap_policy())`` (`trainer=fsdp`).
    """
    from torch.distributed.fsdp.wrap import CustomPolicy

    return CustomPolicy(own_fsdp_unit)


def fsdp_mixed_precision(param_dtype: str = "bfloat16", reduce_dtype: str = "float32") -> MixedPrecision:
    """FSDP's mixed precision for a LoRA fit: weights gathered in ``param_dtype``, gradients reduced in
    ``reduce_dtype``, buffers left as loaded, and every unit's inputs cast to ``param_dtype``.

    Against the one Lightning derives from ``bf16-mixed``: the rotary frequencies (a float32 buffer)
    are not rounded to bfloat16; the adapter's gradients, the only ones, are summed in float32 at
    little cost; and an adapter projection, which PEFT feeds in its own (float32) dtype, gets its
    input cast to the gathered weights' dtype without relying on CUDA autocast.
    """
    import torch
    from torch.distributed.fsdp import MixedPrecision

    return MixedPrecision(param_dtype=getattr(torch, param_dtype), reduce_dtype=getattr(torch, reduce_dtype),
                          buffer_dtype=None, cast_forward_inputs=True)
