"""Models by Hugging Face Hub id in every slot: tiny models placed in a test-local HF cache load offline by id
(generator, vLLM path, zero-shot and LoRA f_Rec, DPO policy, cross-encoder); a missing id fails in one line."""

from __future__ import annotations

import shutil
import sys
import types
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_encoders import build_tiny_bert
from omegaconf import OmegaConf

from lettingo import CONFIG_DIR
from lettingo.llm import hub
from lettingo.llm.bundled import BUNDLED_GGUF
from lettingo.llm.hub import ModelNotCachedError, hub_cache_dir, parse_hub_id, resolve_pretrained
from lettingo.llm.local import LocalBackend
from lettingo.llm.models import load_causal_lm, resolve_model_path
from lettingo.llm.tiny import tiny_random_dir
from lettingo.recommender.cases import RecCase
from lettingo.recommender.cross_encoder import BUNDLED_MINILM, CrossEncoderModule, encoder_path
from lettingo.recommender.llm import LoraLLMModule, ZeroShotLLM
from lettingo.schemas import BUNDLED_MODELS, ConfigError, check_model_spec

LLAMA, BERT = "tiny-org/tiny-llama", "tiny-org/tiny-bert"
REV = "0123456789abcdef0123456789abcdef01234567"  # the commit hash of both snapshots
TAG_REV = "89abcdef0123456789abcdef0123456789abcdef"  # the commit that tag v1 of tiny-llama points at
ITEM_TEXT = {"max_chars": 120, "review_chars": 0}
LABEL_WORDS = {"like": "like", "neutral": "neutral", "dislike": "dislike"}
def put_in_hub_cache(cache: Path, repo_id: str, source: Path, commit: str = REV, ref: str = "main") -> Path:
    """Copy ``source`` into the layout huggingface_hub reads: ``models--org--name/snapshots/<commit>/`` with
    ``refs/<ref>`` holding ``<commit>`` (no newline: file_download reads the file as it is)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    if not snapshot.exists():
        shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ``HF_HOME`` whose hub cache holds tiny-org/tiny-llama (= tiny_random:0, also at tag v1) and tiny-bert."""
    home = tmp_path_factory.mktemp("hf_home")
    llama = tiny_random_dir(tmp_path_factory.mktemp("build"), 0)
    put_in_hub_cache(home / "hub", LLAMA, llama)
    put_in_hub_cache(home / "hub", LLAMA, llama, commit=TAG_REV, ref="v1")
    put_in_hub_cache(home / "hub", BERT, build_tiny_bert(tmp_path_factory.mktemp("bert")))
    return home


@pytest.fixture
def offline_hub(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the environment at ``hf_home`` (HF_HOME only, so the hub cache is ``HF_HOME/hub``), offline."""
    monkeypatch.setenv("HF_HOME", str(hf_home))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hf_home / "hub"


def cases() -> list[RecCase]:
    def item(i: int, rating: float) -> dict:
        label = "like" if rating >= 4 else "dislike" if rating <= 2 else "neutral"
        return {"item_id": str(i), "title": f"Movie {i} (1995)", "attributes": ["Drama"], "rating": float(rating),
                "label": label, "text": ""}

    recent = tuple(item(10 + j, 1 + j % 5) for j in range(3))
    return [RecCase("1", "profile likes drama", recent, item(99, 5)), RecCase("2", "", recent[:1], item(98, 1))]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- the resolver -------------------------------------------------------------------------------------------


def test_the_hub_cache_is_read_from_the_environment_at_call_time(offline_hub: Path, monkeypatch, tmp_path) -> None:
    assert hub_cache_dir() == offline_hub
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub_cache_dir() == tmp_path / "elsewhere"


@pytest.mark.parametrize(("spec", "parsed"), [
    (LLAMA, (LLAMA, None)), (f"{LLAMA}@v1", (LLAMA, "v1")), ("org/name@refs/pr/1", ("org/name", "refs/pr/1")),
    ("meta-llama/Meta-Llama-3-8B-Instruct", ("meta-llama/Meta-Llama-3-8B-Instruct", None)),
    ("a/b/c", None), ("./org/name", None), ("/abs/path", None), ("org/", None), ("tiny_random", None),
])
def test_hub_ids_are_org_slash_name_with_an_optional_revision(spec: str, parsed) -> None:
    assert parse_hub_id(spec) == parsed


@pytest.mark.parametrize("revision", [None, "main", REV])
def test_a_hub_id_resolves_to_its_cached_snapshot(offline_hub: Path, revision: str | None) -> None:
    spec = LLAMA if revision is None else f"{LLAMA}@{revision}"
    path = resolve_model_path(spec, "/unused")
    assert path == offline_hub / "models--tiny-org--tiny-llama" / "snapshots" / REV and (path / "config.json").is_file()


def test_a_tag_revision_resolves_through_its_ref(offline_hub: Path) -> None:
    assert resolve_model_path(f"{LLAMA}@v1", "/unused").name == TAG_REV


def test_hf_hub_cache_overrides_hf_home(offline_hub: Path, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(offline_hub))
    assert resolve_model_path(LLAMA, "/unused").parent.parent.parent == offline_hub


def test_an_existing_folder_wins_over_a_hub_id_of_the_same_spelling(offline_hub, monkeypatch, tmp_path) -> None:
    folder = tmp_path / "tiny-org" / "tiny-llama"
    shutil.copytree(offline_hub / "models--tiny-org--tiny-llama" / "snapshots" / REV, folder)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path(LLAMA, "/unused") == Path(LLAMA)


@pytest.mark.parametrize("spec", ["meta-llama/Meta-Llama-3-8B-Instruct", "tiny-org/tiny-llama@v2"])
def test_an_uncached_hub_id_offline_fails_in_one_line_saying_how_to_fetch_it(offline_hub: Path, spec: str) -> None:
    repo_id, revision = parse_hub_id(spec)
    with pytest.raises(ModelNotCachedError) as error:
        load_causal_lm(spec, "/unused")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"model {spec} is not in the Hugging Face cache ({offline_hub}) and HF_HUB_OFFLINE=1")
    flag = "" if revision is None else f" --revision {revision}"
    assert f"`huggingface-cli download {repo_id}{flag}`" in message and f"`hf download {repo_id}{flag}`" in message
    assert error.value.__cause__ is None and error.value.__suppress_context__  # no chained traceback to read


def test_every_slot_reports_the_same_line_for_an_uncached_id(offline_hub: Path) -> None:
    with pytest.raises(ModelNotCachedError, match=r"^model org/missing is not in the Hugging Face cache .*"
                                                  r"huggingface-cli download org/missing"):
        encoder_path("org/missing")


@pytest.mark.parametrize("spec", ["a/b/c", "/no/such/folder"])
def test_what_is_neither_a_folder_nor_a_hub_id_names_what_is_accepted(offline_hub, spec: str) -> None:
    with pytest.raises(FileNotFoundError, match="bundled:<name>, tiny_random.*config.json.*Hub id org/name"):
        resolve_model_path(spec, "/unused")
    with pytest.raises(FileNotFoundError, match=f"{BUNDLED_MINILM}, a folder with a config.json nor a Hub id"):
        encoder_path(spec)


def test_online_the_snapshot_is_fetched_into_the_cache_the_environment_names(monkeypatch, tmp_path) -> None:
    import huggingface_hub

    calls = []
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    (snapshot / "config.json").write_text("{}")

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert resolve_pretrained("org/name@v3") == snapshot
    ((repo_id, kwargs),) = calls
    assert repo_id == "org/name" and kwargs["revision"] == "v3" and kwargs["local_files_only"] is False
    assert kwargs["cache_dir"] == tmp_path / "home" / "hub" and "original/*" in kwargs["ignore_patterns"]


def test_a_snapshot_fetched_in_part_is_used_when_it_has_a_config(monkeypatch, tmp_path, caplog) -> None:
    import huggingface_hub
    from huggingface_hub.errors import IncompleteSnapshotError

    (tmp_path / "config.json").write_text("{}")

    def incomplete(repo_id, **kwargs):
        raise IncompleteSnapshotError("some files are missing", snapshot_path=str(tmp_path))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", incomplete)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_snapshot("org/name") == tmp_path
    assert "lacks some files" in caplog.text


# --- every slot loads by id, offline --------------------------------------------------------------------------


def test_the_local_generator_loads_by_id_and_matches_tiny_random(offline_hub: Path, tiny_backend) -> None:  # noqa: F811
    backend = LocalBackend("hub", LLAMA, "/unused", batch_size=2, dtype="float32")
    prompt = backend.render("The user rated Toy Story (1995) 5/5 and Fargo (1996) 2/5.")
    result = backend.generate([prompt], n=2, max_new_tokens=4, seed=0)
    assert all(1 <= g.completion_tokens <= 4 for g in result[0])
    same = tiny_backend.generate([prompt], n=2, max_new_tokens=4, seed=0)  # the snapshot is tiny_random:0
    assert [g.text for g in result[0]] == [g.text for g in same[0]]


def test_the_vllm_backend_gets_the_resolved_snapshot_folder(offline_hub: Path, monkeypatch) -> None:
    seen = {}

    class FakeLLM:
        def __init__(self, **kwargs) -> None:
            seen.update(kwargs)

        def get_tokenizer(self):
            return None

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM))
    from lettingo.llm.vllm_backend import VLLMBackend

    VLLMBackend("hub", f"{LLAMA}@{REV}", "/unused")
    snapshot = offline_hub / "models--tiny-org--tiny-llama" / "snapshots" / REV
    assert seen["model"] == seen["tokenizer"] == str(snapshot) and seen["trust_remote_code"] is False


def test_the_zero_shot_f_rec_predicts_by_id(offline_hub: Path) -> None:
    prompt = OmegaConf.load(f"{CONFIG_DIR}/recommender/shared/llm_prompt.yaml")
    model = ZeroShotLLM("llm_zero_shot", LLAMA, "/unused", prompt, LABEL_WORDS, ITEM_TEXT, dtype="float32",
                        device="cpu")
    probabilities = model.predict(cases())
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(1), 1.0)


def test_the_lora_f_rec_loads_by_id(offline_hub: Path) -> None:
    prompt = OmegaConf.load(f"{CONFIG_DIR}/recommender/shared/llm_prompt.yaml")
    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    module = LoraLLMModule("llm_lora", f"{LLAMA}@v1", "/unused", partial(torch.optim.AdamW, lr=1e-2), lora, prompt,
                           LABEL_WORDS, ITEM_TEXT)
    assert module.logits(module.collate(cases())).shape == (2, 3)
    assert module.predict(cases()).shape == (2, 3)


def test_the_dpo_policy_loads_by_id_as_tiny_random(offline_hub: Path, tmp_path: Path) -> None:
    policy, tokenizer = load_causal_lm(LLAMA, tmp_path, dtype="float32", device="cpu")
    reference, _ = load_causal_lm("tiny_random", tmp_path, dtype="float32", device="cpu")
    a, b = weights(policy), weights(reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    assert Path(policy.config._name_or_path).is_relative_to(offline_hub)  # PEFT sees a local base model


def test_the_cross_encoder_loads_by_id(offline_hub: Path) -> None:
    cfg = OmegaConf.load(f"{CONFIG_DIR}/recommender/cross_encoder.yaml").model
    module = CrossEncoderModule(
        name="cross_encoder", model=BERT, optimizer=partial(torch.optim.AdamW, lr=1e-2), context=cfg.context,
        profile=cfg.profile, empty_profile=cfg.empty_profile, item_text=ITEM_TEXT, max_length=64, dropout=0.0,
    )
    assert module.encoder.config.hidden_size == 16
    assert module.logits(module.collate(cases())).shape == (2, 3)


# --- cheap compose-time validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["meta-llama/Meta-Llama-3-8B-Instruct", f"{LLAMA}@v1", f"{LLAMA}@{REV}",
                                  "org/name@refs/pr/1"])
def test_hub_ids_pass_the_cheap_model_spec_check(spec: str) -> None:
    check_model_spec("backbone.model", spec)
    assert parse_hub_id(spec) is not None  # the loader reads them the same way


def test_an_unknown_bundled_name_fails_in_one_line_listing_the_bundled_models() -> None:
    with pytest.raises(ConfigError) as error:
        check_model_spec("backbone.model", "bundled:llama3")
    message = str(error.value)
    assert "\n" not in message and message.startswith("backbone.model=bundled:llama3: unknown bundled model; known: ")
    assert all(f"bundled:{name}" in message for name in BUNDLED_MODELS)


def test_the_schema_copy_of_the_bundled_names_matches_the_loaders() -> None:
    assert set(BUNDLED_MODELS) == set(BUNDLED_GGUF) | {BUNDLED_MINILM.removeprefix("bundled:")}
