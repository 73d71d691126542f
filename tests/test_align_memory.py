"""Training a large policy in memory: gradient checkpointing of the align policy (the same loss, gradients
and adapter, every decoder layer recomputed once), the FSDP wrap policy and `trainer=fsdp`, and an align
fit sharded over two CPU processes that trains the adapter DDP trains."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch
from fixtures_llm import free_port
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file
from test_align_stage import ALIGN, hand_made_pairs, write_pairs

from lettingo import CONFIG_DIR
from lettingo.align.adapters import attach_lora
from lettingo.align.data import collate, positive_examples, preference_examples
from lettingo.align.dpo import DpoModule
from lettingo.align.sft import SftModule
from lettingo.align.training import checkpoint_activations
from lettingo.artifacts import adapter_artifact
from lettingo.llm.memory import fsdp_wrap_policy, is_checkpointing, is_decoder_layer, own_fsdp_unit
from lettingo.llm.models import load_causal_lm
from lettingo.pipeline import run
from lettingo.schemas import ConfigError, validate_config

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
TITLES = ["Toy Story (1995)", "Alien (1979)", "Fargo (1996)", "Titanic (1997)", "Heat (1995)", "Up (2009)"]


def _pairs(tokenizer) -> pd.DataFrame:
    """One pair per title, each its own user; prompts rendered by the tiny model's chat template."""
    def render(text: str) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)

    return pd.DataFrame({"user_id": [str(i) for i in range(len(TITLES))],
                         "prompt": [render(f"{t} rated 4 of 5. Profile?") for t in TITLES],
                         "chosen": [f"Likes {t} and dramas." for t in TITLES],
                         "rejected": [f"Dislikes {t}." for t in TITLES]})


def _policy(cache: Path, dtype: str = "float32"):
    model, tokenizer = load_causal_lm("tiny_random", cache, dtype=dtype)
    torch.manual_seed(0)
    return attach_lora(model, LORA), tokenizer


def _module(method: str, model):
    sgd = lambda params: torch.optim.SGD(params, lr=0.5)  # noqa: E731
    if method == "dpo":
        return DpoModule(model, sgd, beta=0.1, share_prompt=False, precompute_reference=False)
    return SftModule(model, sgd, share_prompt=False)


# --- gradient checkpointing --------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dpo", "sft"])
def test_gradient_checkpointing_gives_the_same_loss_gradients_and_steps(tiny_model_cache: Path, method: str) -> None:
    runs = {}
    for checkpointing in (False, True):
        model, tokenizer = _policy(tiny_model_cache)
        module = _module(method, model)
        if checkpointing:
            checkpoint_activations(module)
        assert is_checkpointing(model) is checkpointing and model.get_base_model().config.use_cache is not checkpointing
        make = preference_examples if method == "dpo" else positive_examples
        examples, _ = make(_pairs(tokenizer).iloc[:3], tokenizer, 512, 64)
        batch = collate(examples, range(len(examples)), tokenizer.pad_token_id)
        calls: list[int] = []
        attention = next(m for m in model.modules() if is_decoder_layer(m)).self_attn
        attention.register_forward_hook(lambda *_, seen=calls: seen.append(1))
        frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        optimizer = module.configure_optimizers()
        model.train()
        losses, grads = [], {}
        for _ in range(2):  # LoRA's B starts at zero: A gets a gradient from the second step on
            optimizer.zero_grad()
            loss = module.step(batch)[0]
            loss.backward()
            losses.append(float(loss))
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
            optimizer.step()
        assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
        adapter = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        runs[checkpointing] = {"losses": losses, "grads": grads, "calls": len(calls), "adapter": adapter}
    off, on = runs[False], runs[True]
    assert on["losses"] == pytest.approx(off["losses"], abs=1e-6)
    for name, grad in off["grads"].items():
        torch.testing.assert_close(on["grads"][name], grad, atol=1e-6, rtol=1e-5)
    assert all(float(g.abs().sum()) > 0 for g in on["grads"].values())  # every LoRA matrix learns
    for name, weight in off["adapter"].items():
        torch.testing.assert_close(on["adapter"][name], weight, atol=1e-6, rtol=1e-5)
    assert on["calls"] == off["calls"] + 2  # the policy forward of each step ran a second time, in backward


def test_gradient_checkpointing_needs_an_unshared_prompt(tiny_model_cache: Path, compose_cfg) -> None:
    model, _ = _policy(tiny_model_cache)
    with pytest.raises(ValueError, match="share_prompt=false"):
        checkpoint_activations(DpoModule(model, torch.optim.SGD, share_prompt=True))
    with pytest.raises(ConfigError, match="align.gradient_checkpointing=true: needs align.share_prompt=false"):
        validate_config(compose_cfg(["align.gradient_checkpointing=true"]))
    validate_config(compose_cfg(["align.gradient_checkpointing=true", "align.share_prompt=false"]))


def test_align_stage_with_gradient_checkpointing_writes_the_same_adapter(compose_cfg, tiny_model_cache,
                                                                         tmp_path: Path) -> None:
    adapters = {}
    for checkpointing in ("false", "true"):
        run_dir = tmp_path / checkpointing
        cfg = compose_cfg(["debug=tiny", f"paths.model_cache={tiny_model_cache}", *ALIGN, "stage=align",
                           "align.methods=[dpo]", "align.share_prompt=false",
                           f"align.gradient_checkpointing={checkpointing}"], run_dir)
        write_pairs(cfg, hand_made_pairs(tiny_model_cache))
        assert run(cfg)["dpo"]["steps"] >= 1
        adapters[checkpointing] = load_file(run_dir / adapter_artifact("dpo") / "adapter_model.safetensors")
    assert sorted(adapters["true"]) == sorted(adapters["false"])
    for name, weight in adapters["false"].items():
        torch.testing.assert_close(adapters["true"][name], weight, atol=1e-5, rtol=1e-4)
    assert any(float(w.abs().max()) > 1e-3 for name, w in adapters["true"].items() if "lora_B" in name)


# --- FSDP: the wrap policy and the trainer config ---------------------------------------------------------------
def test_the_wrap_policy_makes_a_unit_of_every_decoder_layer_and_adapter_projection(tiny_model_cache: Path) -> None:
    model, _ = _policy(tiny_model_cache)
    units = sorted(name for name, module in model.named_modules() if own_fsdp_unit(module))
    layers = [f"base_model.model.model.layers.{i}" for i in range(2)]
    projections = [f"{layer}.self_attn.{proj}.lora_{ab}.default" for layer in layers for proj in ("q_proj", "v_proj")
                   for ab in "AB"]
    assert units == sorted(layers + projections)  # the frozen base (embeddings, base_layer, head) stays in its units
    assert type(fsdp_wrap_policy()).__name__ == "CustomPolicy"


def test_trainer_fsdp_composes_and_builds_its_strategy(compose_cfg) -> None:
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import CustomPolicy

    cfg = compose_cfg(["trainer=fsdp", "stage=align"])
    validate_config(cfg)
    OmegaConf.to_container(cfg.trainer, resolve=True, throw_on_missing=True)
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision) == ("gpu", -1, "bf16-mixed")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert isinstance(strategy.kwargs["auto_wrap_policy"], CustomPolicy)
    assert strategy.kwargs["use_orig_params"] is True  # Lightning's default: the optimizer sees the LoRA weights
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD and not strategy.cpu_offload.offload_params
    precision = strategy.mixed_precision_config  # what FSDP is given, in place of the one bf16-mixed implies
    assert (precision.param_dtype, precision.reduce_dtype, precision.buffer_dtype) == (torch.bfloat16, torch.float32,
                                                                                       None)
    assert precision.cast_forward_inputs


# --- FSDP on two CPU processes ---------------------------------------------------------------------------------
# Lightning's FSDPStrategy is GPU-only: it refuses the cpu accelerator, and passes FSDP no device, on which
# torch's FSDP finds no accelerator and stops. Torch's FSDP itself runs on the CPU over gloo when told
# device_id=cpu, so the test double below does that; it also gathers full state dicts without FSDP's CPU
# offload, which on tensors already on the CPU frees the storage it then copies (a segfault).
def _cpu_fsdp_strategy(**kwargs):
    from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel

    class CpuFSDPStrategy(FSDPStrategy):
        def _setup_model(self, model):
            wrapped = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                               mixed_precision=self.mixed_precision_config,
                                               sharding_strategy=self.sharding_strategy,
                                               device_id=torch.device("cpu"), **self.kwargs)
            _setup_activation_checkpointing(wrapped, self._activation_checkpointing_kwargs)
            return wrapped

    return CpuFSDPStrategy(**kwargs)


@contextmanager
def _full_state_dict_in_place(module, world_size, rank0_only=True):
    from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType
    from torch.distributed.fsdp.api import FullOptimStateDictConfig

    with FullyShardedDataParallel.state_dict_type(module, StateDictType.FULL_STATE_DICT,
                                                  FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
                                                  FullOptimStateDictConfig(offload_to_cpu=False,
                                                                           rank0_only=rank0_only)):
        yield


def _shipped_fsdp_kwargs(mixed_precision: bool) -> dict:
    """The FSDPStrategy arguments of `trainer=fsdp`, built; without its mixed precision unless asked."""
    node = OmegaConf.load(Path(CONFIG_DIR) / "trainer" / "fsdp.yaml").strategy
    kwargs = {k: instantiate(v) if isinstance(v, DictConfig) else v for k, v in node.items() if k != "_target_"}
    return kwargs if mixed_precision else {**kwargs, "mixed_precision": None}


#: The fits each of the two processes runs, in this order: name, strategy, gradient checkpointing, the dtype
#: of the frozen base and the trainer precision (float32 ones train exactly what DDP trains).
#: `fsdp_resumed` resumes from the last checkpoint of `fsdp` (a finished fit: it restores and trains nothing).
FITS = [("ddp", "ddp", False, "float32", "32-true"), ("fsdp", "fsdp", False, "float32", "32-true"),
        ("fsdp_resumed", "fsdp", False, "float32", "32-true"),
        ("fsdp_checkpointed", "fsdp", True, "float32", "32-true"),
        ("fsdp_bf16", "fsdp", False, "bfloat16", "bf16-mixed")]


def _fit(name: str, strategy_name: str, checkpointing: bool, dtype: str, precision: str, cache: Path,
         out: Path) -> None:
    """One DPO fit on 4 pairs (2 epochs, a step = 1 pair x 2 ranks) and 1 validation pair; rank 0 saves."""
    import lightning as L
    import torch.distributed as dist
    from lightning.pytorch.strategies import DDPStrategy

    from lettingo.align.adapters import save_adapter
    from lettingo.align.training import fit_lightning

    model, tokenizer = _policy(cache, dtype)
    pairs = _pairs(tokenizer)
    acfg = OmegaConf.create({"data": {"max_prompt_tokens": 512, "max_completion_tokens": 64},
                             "batch": {"micro_size": 1, "global_size": 2}, "epochs": 2, "max_steps": -1,
                             "val_checks_per_epoch": 1, "gradient_checkpointing": checkpointing})
    method = OmegaConf.create({"examples": "preference", "module": {
        "_target_": "lettingo.align.dpo.DpoModule", "_partial_": True, "beta": 0.1, "precompute_reference": True,
        "share_prompt": not checkpointing,
        "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.05, "weight_decay": 0.0}}})

    def make_trainer(**kwargs):
        strategy = (DDPStrategy(process_group_backend="gloo") if strategy_name == "ddp" else _cpu_fsdp_strategy(
            **_shipped_fsdp_kwargs(mixed_precision=dtype != "float32"), process_group_backend="gloo"))
        return L.Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, gradient_clip_val=1.0, precision=precision, **kwargs)

    folder = out / name
    resume = name.endswith("_resumed")
    if resume and dist.get_rank() == 0:
        folder.mkdir()
        shutil.copy(out / name.removesuffix("_resumed") / "last.ckpt", folder / "last.ckpt")
    dist.barrier()
    trained, summary, weights = fit_lightning(acfg, method, model, tokenizer, pairs.iloc[:4], pairs.iloc[4:5],
                                              make_trainer, folder, resume, 0, 2)
    if dist.get_rank() == 0:
        save_adapter(trained, folder / "adapter", weights)
        checkpoint = torch.load(folder / "last.ckpt", weights_only=False)
        (folder / "summary.json").write_text(json.dumps({
            "steps": summary["steps"], "resumed": summary["resumed"], "val_history": summary["val_history"],
            "gathered": weights is not None, "checkpoint_keys": sorted(checkpoint["state_dict"])}))
    dist.barrier()


def _worker(rank: int, port: int, cache: str, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "NODE_RANK": "0"})
    torch.set_num_threads(1)
    import lightning.pytorch.strategies.fsdp as lightning_fsdp
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=2)  # Lightning's strategies join this group

    lightning_fsdp._get_full_state_dict_context = _full_state_dict_in_place  # this process only (see above)
    for fit in FITS:
        _fit(*fit, Path(cache), Path(out))


@pytest.fixture(scope="module")
def sharded(tiny_model_cache: Path, tmp_path_factory) -> Path:
    """The folder of every fit of FITS, each run by the same two processes."""
    out = tmp_path_factory.mktemp("fsdp")
    _policy(tiny_model_cache)  # the tiny model is built here once, not by two processes at once
    torch.multiprocessing.spawn(_worker, args=(free_port(), str(tiny_model_cache), str(out)), nprocs=2, join=True)
    return out


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter" / "adapter_model.safetensors")


def test_fsdp_trains_the_adapter_ddp_trains(sharded: Path) -> None:
    ddp, fsdp = (json.loads((sharded / n / "summary.json").read_text()) for n in ("ddp", "fsdp"))
    assert fsdp["gathered"] and not ddp["gathered"]  # the sharded fit gathers its adapter for rank 0
    assert fsdp["steps"] == ddp["steps"] == 4
    # Checkpoints hold the adapter alone, under the unwrapped names (the resume path loads them by name).
    assert fsdp["checkpoint_keys"] == ddp["checkpoint_keys"] and all("lora_" in k for k in fsdp["checkpoint_keys"])
    assert len(fsdp["checkpoint_keys"]) == 8
    for one, two in zip(ddp["val_history"], fsdp["val_history"], strict=True):  # the reference too: margin 0 at first
        assert two == pytest.approx(one, abs=1e-5)
    a, b = _adapter(sharded / "ddp"), _adapter(sharded / "fsdp")
    assert sorted(a) == sorted(b) and len(a) == 8
    for name, weight in a.items():
        torch.testing.assert_close(b[name], weight, atol=1e-5, rtol=1e-4)
    assert any(float(w.abs().max()) > 1e-2 for name, w in b.items() if "lora_B" in name)  # it did train


def test_a_sharded_fit_resumes_from_its_adapter_only_checkpoint(sharded: Path) -> None:
    summary = json.loads((sharded / "fsdp_resumed" / "summary.json").read_text())
    assert summary["resumed"] and summary["steps"] == 4  # the optimizer step count came back with it
    trained, restored = _adapter(sharded / "fsdp"), _adapter(sharded / "fsdp_resumed")
    for name, weight in trained.items():  # a fresh adapter (B = 0) got the checkpoint's weights
        torch.testing.assert_close(restored[name], weight, atol=0, rtol=0)


def test_fsdp_with_gradient_checkpointing_trains_the_same_adapter(sharded: Path) -> None:
    plain, checkpointed = _adapter(sharded / "fsdp"), _adapter(sharded / "fsdp_checkpointed")
    for name, weight in plain.items():  # unshared prompts differ from shared ones by float rounding only
        torch.testing.assert_close(checkpointed[name], weight, atol=1e-4, rtol=1e-3)


def test_fsdp_trains_a_bfloat16_base_with_a_float32_adapter_in_the_shipped_mixed_precision(sharded: Path) -> None:
    summary = json.loads((sharded / "fsdp_bf16" / "summary.json").read_text())
    assert summary["checkpoint_keys"] == json.loads((sharded / "fsdp" / "summary.json").read_text())["checkpoint_keys"]
    margins = [row["align/val/rewards/margins"] for row in summary["val_history"]]
    assert 0 < margins[0] < margins[1]  # the held-out margin widens
    adapter = _adapter(sharded / "fsdp_bf16")
    assert {w.dtype for w in adapter.values()} == {torch.float32} and all(w.isfinite().all() for w in adapter.values())
