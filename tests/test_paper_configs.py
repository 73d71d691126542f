"""The paper's experiments as configs: generators are Hub ids and API backbones, N = 10 at T = 1.0, H = 70,
f_Rec is LLaMA-3-8B-Instruct zero-shot, DPO with LLaMA-Factory's LoRA recipe; ML-1M's split sizes as stated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig, OmegaConf

from lettingo import CONFIG_DIR
from lettingo.data.splits import scaled_sizes
from lettingo.llm.hub import parse_hub_id
from lettingo.schemas import config_object, validate_config
from lettingo.stages.data import sample_spec

EXPERIMENTS = ["paper_ml1m", "paper_ml10m", "paper_amazon_books", "paper_yelp"]
EXTERNAL = {"paper_ml10m", "paper_amazon_books", "paper_yelp"}  # read the files dataset.path points at
LLAMA3 = "meta-llama/Meta-Llama-3-8B-Instruct"
VLLM = "lettingo.llm.vllm_backend.VLLMBackend"
OPENAI = "lettingo.llm.openai_http.OpenAIBackend"
#: name -> (backend, model) of the paper's generators, in exploration order (the aligned one first).
GENERATORS = {
    "llama3_8b_instruct": (VLLM, LLAMA3),
    "llama2_13b_chat": (VLLM, "meta-llama/Llama-2-13b-chat-hf"),
    "gpt4o_mini": (OPENAI, "gpt-4o-mini"),
    "claude_3_5_haiku": (OPENAI, "claude-3-5-haiku"),
}
#: ML-1M users with >= H + K + 1 = 81 ratings (H = 70, K = 10), measured with load_ml1m() (see the slow test).
ML1M_ELIGIBLE_H70 = 3335
#: The override experiment/paper_ml1m.yaml documents for the paper's 2,000 test users.
ML1M_2000 = ["dataset.histories=[70]", "dataset.splits.rec_train=335"]


def paper_cfg(compose_cfg, experiment: str, *extra: str) -> DictConfig:
    data = ["dataset.path=/data/not-read-here"] if experiment in EXTERNAL else []
    return compose_cfg([f"experiment={experiment}", *data, *extra])


def check_paper_values(cfg: DictConfig) -> None:
    """The key values of the paper's protocol, on a composed (or printed) config."""
    assert (cfg.history.length, cfg.history.recent) == (70, 10)
    assert (cfg.sampling.n, cfg.sampling.temperature, cfg.sampling.max_users) == (10, 1.0, None)
    backbones = {b.name: b for b in cfg.sampling.backbones.values()}
    assert {name: (b._target_, b.model) for name, b in backbones.items()} == GENERATORS
    assert list(backbones) == list(GENERATORS) and cfg.sampling.backbones.primary.name == cfg.backbone.name
    for name, backbone in backbones.items():
        if backbone._target_ == VLLM:  # loaded here: a Hub id, never a bundled toy model
            assert parse_hub_id(str(backbone.model)) is not None, name
            assert backbone.dtype == "bfloat16" and backbone.enable_lora is True, name
            # explore hands a backend users_per_chunk x n sequences per call: one vLLM call of thousands
            assert 2000 <= cfg.sampling.users_per_chunk * cfg.sampling.n <= backbone.sequences_per_call, name
    gpt = backbones["gpt4o_mini"]
    assert (gpt.base_url, gpt.api_key_env) == ("https://api.openai.com/v1", "OPENAI_API_KEY")
    assert (gpt.price_per_million_input, gpt.price_per_million_output) == (0.15, 0.60)
    assert backbones["claude_3_5_haiku"].api_key_env == "CLAUDE_GATEWAY_API_KEY"
    assert cfg.backbone.model == LLAMA3  # the generator DPO aligns
    rec = cfg.recommender
    assert (rec.name, rec.trainable) == ("llm_zero_shot", False)
    assert rec.model._target_ == "lettingo.recommender.llm.ZeroShotLLM"
    assert (rec.model.model, rec.model.dtype, rec.model.device) == (LLAMA3, "bfloat16", "auto")
    align = cfg.align
    assert list(align.methods) == ["dpo", "sft"] and align.dtype == "bfloat16" and align.epochs == 3
    assert (align.batch.global_size, align.batch.micro_size) == (8, 2)  # LLaMA-Factory: 1 x 8 accumulation
    assert (align.method.dpo.module.optimizer.lr, align.method.dpo.module.beta) == (5.0e-6, 0.1)
    assert align.method.sft.module.optimizer.lr == 1.0e-4
    assert (cfg.trainer.accelerator, cfg.trainer.precision) == ("gpu", "bf16-mixed")
    assert cfg.test.max_users is None and cfg.test.users_per_chunk == 2000 and cfg.stage == "pipeline"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_paper_experiment_has_the_papers_setting(compose_cfg, experiment: str) -> None:
    cfg = paper_cfg(compose_cfg, experiment)
    validate_config(cfg)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    check_paper_values(cfg)
    assert cfg.dataset.name == experiment.removeprefix("paper_") and cfg.experiment_name == experiment


def test_the_gateway_url_comes_from_the_environment(compose_cfg, monkeypatch) -> None:
    monkeypatch.setenv("CLAUDE_GATEWAY_URL", "https://gateway.example/v1")
    cfg = paper_cfg(compose_cfg, "paper_ml1m")
    assert cfg.sampling.backbones.claude_gateway.base_url == "https://gateway.example/v1"
    monkeypatch.delenv("CLAUDE_GATEWAY_URL")
    assert paper_cfg(compose_cfg, "paper_ml1m").sampling.backbones.claude_gateway.base_url.startswith("http://")


def test_history_length_stays_sweepable(compose_cfg) -> None:
    cfg = paper_cfg(compose_cfg, "paper_ml1m", "history=h30")
    assert cfg.history.length == 30 and list(cfg.sampling.splits) == ["profile_train_h30"]


def test_the_printed_job_config_of_paper_ml1m(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("CLAUDE_GATEWAY_URL", None)
    done = subprocess.run([sys.executable, "-m", "lettingo", "experiment=paper_ml1m",
                           f"paths.output_root={tmp_path / 'outputs'}", "--cfg", "job", "--resolve"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = OmegaConf.create(yaml.safe_load(done.stdout))
    check_paper_values(cfg)
    assert cfg.dataset.name == "ml1m" and not (tmp_path / "outputs").exists()  # printed, nothing run


def ml1m_split_sizes(cfg: DictConfig) -> dict[str, int]:
    """The split sizes the data stage carves from ML-1M's eligible users under ``cfg``."""
    return scaled_sizes(sample_spec(config_object(cfg)).split_sizes, ML1M_ELIGIBLE_H70)


def test_ml1m_yields_the_test_users_its_header_states(compose_cfg) -> None:
    sizes = ml1m_split_sizes(paper_cfg(compose_cfg, "paper_ml1m"))
    assert sizes == {"test": 1111, "rec_train": 555, "profile_train_h30": 555, "profile_train_h50": 555,
                     "profile_train_h70": 555}
    header = (Path(CONFIG_DIR) / "experiment" / "paper_ml1m.yaml").read_text()
    assert "3,335 have" in header and "1,111 test users" in header and " ".join(ML1M_2000) in header


def test_the_documented_ml1m_change_gives_the_papers_2000_test_users(compose_cfg) -> None:
    cfg = paper_cfg(compose_cfg, "paper_ml1m", *ML1M_2000)
    validate_config(cfg)
    sizes = ml1m_split_sizes(cfg)
    assert sizes == {"test": 2000, "rec_train": 335, "profile_train_h70": 1000}
    assert sum(sizes.values()) <= ML1M_ELIGIBLE_H70


@pytest.mark.slow
def test_ml1m_eligible_users_and_split_sizes_on_the_real_data(compose_cfg) -> None:
    from lettingo.data.prepare import make_samples
    from lettingo.data.samples import eligible_users
    from lettingo.data.sources.recbole_movielens import load_ml1m

    interactions = load_ml1m()
    assert len(eligible_users(interactions, 70, 10)) == ML1M_ELIGIBLE_H70
    for extra, test_users in (([], 1111), (ML1M_2000, 2000)):
        samples = make_samples(interactions, sample_spec(config_object(paper_cfg(compose_cfg, "paper_ml1m", *extra))))
        assert int((samples["split"] == "test").sum()) == test_users, extra
