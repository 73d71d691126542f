"""The align fit under a sharding strategy (Lightning's FSDPStrategy, `trainer=fsdp`).

FSDP keeps each rank's shard of the parameters and gathers a unit's full parameters only inside that
unit's forward, so three things differ from one process or DDP: work outside a training or
validation step must run inside the forward of the strategy's wrapper (:func:`call_in_forward`);
every rank must run as many forwards (each is a collective); and the adapter's weights must be
gathered before rank 0 writes them (:func:`gather_adapter`). Parameter names seen through the
wrapped modules carry FSDP's and the checkpoint wrapper's prefixes (:func:`clean_name`,
:func:`without_wrappers`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import lightning as L
    import torch

T = TypeVar("T")

#: What torch's FSDP and activation-checkpoint wrappers insert into the names of the modules they wrap.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def is_sharded(strategy: Any) -> bool:
    """Whether ``strategy`` shards the parameters over the ranks (Lightning's FSDPStrategy or a subclass)."""
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy)


def clean_name(name: str) -> str:
    """``name`` of a parameter as the unwrapped model names it (and a full FSDP state dict keys it)."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _wrapped(module: torch.nn.Module) -> torch.nn.Module | None:
    """The module an FSDP unit or checkpoint wrapper wraps; None for any other module."""
    for attribute in (prefix.rstrip(".") for prefix in WRAPPER_PREFIXES):
        inner = module._modules.get(attribute)
        if inner is not None:
            return inner
    return None


@contextmanager
def without_wrappers(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` with every FSDP unit and checkpoint wrapper inside it replaced by the module it wraps,
    so its module names are the unwrapped model's; the wrappers are put back on exit.

    For code that walks the module tree by name, such as PEFT's ``save_pretrained`` with the gathered
    weights given (it derives the adapter's keys from the module names). Nothing may run the model
    meanwhile: its parameters are still the rank's shards.
    """
    swaps = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            inner = _wrapped(child)
            if inner is None:
                continue
            while (deeper := _wrapped(inner)) is not None:
                inner = deeper
            swaps.append((parent, name, child, inner))
    for parent, name, _, inner in swaps:
        parent._modules[name] = inner
    try:
        yield model
    finally:
        for parent, name, child, _ in reversed(swaps):
            parent._modules[name] = child


def trainable_names(model: torch.nn.Module) -> set[str]:
    """The clean names of the trainable (adapter) parameters of ``model``."""
    return {clean_name(name) for name, p in model.named_parameters() if p.requires_grad}


def call_in_forward(module: L.LightningModule, method: Callable[[], T]) -> T:
    """``method()``, run inside the forward of the sharding strategy's wrapper of ``module`` (else directly).

    FSDP's root unit (embeddings, final norm, LM head) gathers its parameters and casts them to the
    mixed-precision dtype only in its own forward; Lightning routes training and validation steps the
    same way, so what ``method`` computes equals what a step computes.
    """
    strategy = module.trainer.strategy
    wrapper = strategy.model
    if not is_sharded(strategy) or wrapper is None or wrapper is module:
        return method()

    def forward(*args: Any, **kwargs: Any) -> T:
        del module.forward  # back to the class's forward before ``method`` runs the model
        return method()

    module.forward = forward  # an instance attribute shadows the class's forward for one call
    try:
        return wrapper()
    finally:
        module.__dict__.pop("forward", None)


def gather_adapter(trainer: L.Trainer, module: L.LightningModule) -> dict[str, torch.Tensor]:
    """The full adapter weights of ``module.model``, keyed as its own ``state_dict`` keys them, on rank 0
    (empty on the other ranks). A collective: every rank calls it.

    Uses the strategy's full state dict (gathered unit by unit to rank 0's CPU), which Lightning's
    checkpoints use too; the frozen base is dropped from it.
    """
    state = trainer.strategy.lightning_module_state_dict()
    names = trainable_names(module.model)
    adapter = {}
    for key, value in state.items():
        name = clean_name(key).removeprefix("model.")
        if name in names:
            adapter[name] = value
    return adapter
