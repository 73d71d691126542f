"""Structured-config schemas of the nodes the stages read, and one check of a composed config.

Each dataclass mirrors one config node: its field types are what OmegaConf checks when the node is
merged onto it, and its ``__post_init__`` checks the values (as TRL's ``DPOConfig`` does), so a bad
value fails before any model is loaded, with one line naming the key: ``<key>=<value>: <allowed>``.
Nodes that Hydra instantiates (backbones, modules, optimizers: they hold ``_target_``) are ``Any``.

The schemas are registered in Hydra's ConfigStore, group ``schema``, one name per node
(``schema/sampling``, ...). :func:`validate_config` checks a whole composed config.

A leaf module: it imports only the standard library, omegaconf and hydra.
"""

import dataclasses
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

__all__ = [
    "SCHEMAS", "AlignMethodSchema", "AlignSchema", "BootstrapSchema", "ConfigError", "EvaluateSchema",
    "HistorySchema", "PairsSchema", "RecTrainingSchema", "SamplingSchema", "TestSchema", "check_model_spec",
    "validate_config",
]


class ConfigError(ValueError):
    """A config value that is not allowed; the message is one line: ``<key>=<value>: <what is allowed>``."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={show(value)}: {one_line(allowed)}")

    def under(self, prefix: str) -> "ConfigError":
        """The same error with its key inside node ``prefix``."""
        key = self.key if not prefix else prefix if not self.key else f"{prefix}.{self.key}"
        return ConfigError(key.replace(".[", "["), self.value, self.allowed)


def one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def show(value: Any) -> str:
    """A value as it would be written on the command line (``null``, ``true``, ``[a,b]``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, list | tuple):
        return "[" + ",".join(show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{show(v)}" for k, v in value.items()) + "}"
    return one_line(str(value), 80)


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` for ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(key, value, allowed)


def at_least(key: str, value: Any, low: float) -> None:
    require(value >= low, key, value, f"must be >= {low:g}")


def optional_at_least(key: str, value: Any, low: float) -> None:
    require(value is None or value >= low, key, value, f"must be null or >= {low:g}")


def one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    require(value in allowed, key, value, "must be one of " + ", ".join(allowed))


# --- the nodes -------------------------------------------------------------------------------------------


@dataclass
class BootstrapSchema:
    """`bootstrap`: intervals over users (stages evaluate and test)."""

    n_resamples: int
    confidence: float

    def __post_init__(self) -> None:
        at_least("n_resamples", self.n_resamples, 1)
        require(0.0 < self.confidence < 1.0, "confidence", self.confidence, "must be in (0, 1)")


@dataclass
class HistorySchema:
    """`history`: H older interactions for the generator, K recent ones for f_Rec."""

    length: int
    recent: int

    def __post_init__(self) -> None:
        at_least("length", self.length, 1)
        at_least("recent", self.recent, 1)


@dataclass
class SamplingSchema:
    """`sampling`: the explore stage (profiles per user from every backbone)."""

    backbones: dict[str, Any]  # slot -> backbone config (instantiated: `_target_`)
    splits: list[str]
    max_users: int | None
    n: int
    temperature: float
    max_new_tokens: int
    users_per_chunk: int

    def __post_init__(self) -> None:
        require(len(self.backbones) > 0, "backbones", self.backbones, "must name at least one backbone")
        seen: dict[str, str] = {}
        for slot, backbone in self.backbones.items():
            require(isinstance(backbone, Mapping) and "_target_" in backbone, f"backbones.{slot}", backbone,
                    "must be a backbone config (with _target_)")
            name = str(backbone.get("name"))
            require(name not in seen, f"backbones.{slot}.name", name,
                    f"must differ from the name of sampling.backbones.{seen.get(name)} (names tag the profiles)")
            seen[name] = slot
        require(len(self.splits) > 0, "splits", self.splits, "must name at least one split")
        optional_at_least("max_users", self.max_users, 0)  # 0: nobody is explored (the reference tables)
        at_least("n", self.n, 1)
        at_least("temperature", self.temperature, 0)
        at_least("max_new_tokens", self.max_new_tokens, 1)
        at_least("users_per_chunk", self.users_per_chunk, 1)


PAIR_RULES = ("all", "margin")


@dataclass
class PairsSchema:
    """`pairs`: which preference pairs stage evaluate writes from the rewards."""

    rule: str
    max_pairs_per_user: int | None
    min_margin: float

    def __post_init__(self) -> None:
        one_of("rule", self.rule, PAIR_RULES)
        optional_at_least("max_pairs_per_user", self.max_pairs_per_user, 1)
        at_least("min_margin", self.min_margin, 0)


@dataclass
class SensitivitySchema:
    """`evaluate.sensitivity`: when f_Rec reads the profiles too little to train on its verdicts."""

    min_effect: float

    def __post_init__(self) -> None:
        at_least("min_effect", self.min_effect, 0)


@dataclass
class TabularSchema:
    """`evaluate.tabular`: the non-LLM f_Rec rows of both tables (fitted on the non-held-out users)."""

    enabled: bool
    plain: Any
    oracle: Any


@dataclass
class EvaluateSchema:
    """`evaluate`: rewards of the explored profiles, pairs, and the baselines table."""

    split: str
    raw_histories: list[int]
    users_per_chunk: int
    sensitivity: SensitivitySchema
    tabular: TabularSchema

    def __post_init__(self) -> None:
        require(bool(self.split), "split", self.split, "must name a split")
        for i, h in enumerate(self.raw_histories):
            at_least(f"raw_histories[{i}]", h, 1)
        at_least("users_per_chunk", self.users_per_chunk, 1)


@dataclass
class TestSchema:
    """`test`: every method writes one profile per held-out user; f_Rec scores them."""

    __test__ = False  # not a pytest test class

    split: str
    max_users: int | None
    temperature: float
    max_new_tokens: int
    users_per_chunk: int
    fixed_formats: dict[str, Any] = field(default_factory=dict)  # name -> prompt config (none: no such rows)

    def __post_init__(self) -> None:
        require(bool(self.split), "split", self.split, "must name a split")
        optional_at_least("max_users", self.max_users, 1)
        at_least("temperature", self.temperature, 0)
        at_least("max_new_tokens", self.max_new_tokens, 1)
        at_least("users_per_chunk", self.users_per_chunk, 1)
        for name, prompt in self.fixed_formats.items():
            require(isinstance(prompt, Mapping) and "template" in prompt and "request" in prompt,
                    f"fixed_formats.{name}", prompt, "must be a prompt config (with template and request)")


@dataclass
class LoraSchema:
    """`align.lora`: the generator's adapter."""

    r: int
    alpha: float
    dropout: float
    target_modules: list[str]

    def __post_init__(self) -> None:
        at_least("r", self.r, 1)
        require(self.alpha > 0, "alpha", self.alpha, "must be > 0")
        require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "must be in [0, 1)")
        require(len(self.target_modules) > 0, "target_modules", self.target_modules, "must name at least one module")


@dataclass
class AlignDataSchema:
    """`align.data`: which pairs are trained on and how long their token sequences may be."""

    max_pairs: int | None
    val_fraction: float
    max_prompt_tokens: int
    max_completion_tokens: int

    def __post_init__(self) -> None:
        optional_at_least("max_pairs", self.max_pairs, 1)
        require(0.0 <= self.val_fraction < 1.0, "val_fraction", self.val_fraction, "must be in [0, 1)")
        at_least("max_prompt_tokens", self.max_prompt_tokens, 1)
        at_least("max_completion_tokens", self.max_completion_tokens, 1)


@dataclass
class BatchSchema:
    """`align.batch`: pairs per optimizer step and per forward."""

    global_size: int
    micro_size: int

    def __post_init__(self) -> None:
        at_least("micro_size", self.micro_size, 1)
        at_least("global_size", self.global_size, 1)
        require(self.global_size % self.micro_size == 0, "global_size", self.global_size,
                f"must be a multiple of align.batch.micro_size ({self.micro_size})")


EXAMPLE_KINDS = ("preference", "positive")


@dataclass
class AlignMethodSchema:
    """`align.method.<name>`: the examples a method trains on and its LightningModule."""

    examples: str
    module: Any  # instantiated with `_partial_: true`; the stage passes the model

    def __post_init__(self) -> None:
        one_of("examples", self.examples, EXAMPLE_KINDS)
        require(isinstance(self.module, Mapping) and "_target_" in self.module, "module", self.module,
                "must be a module config (with _target_)")


ENGINES = ("lightning", "trl")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class AlignSchema:
    """`align`: the adapters trained on the pairs, one per method of `methods`."""

    methods: list[str]
    method: dict[str, AlignMethodSchema]
    engine: str
    lora: LoraSchema
    data: AlignDataSchema
    batch: BatchSchema
    epochs: int
    max_steps: int
    val_checks_per_epoch: int
    share_prompt: bool
    dtype: str
    precision: str | None
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        require(len(self.methods) > 0, "methods", self.methods, "must name at least one method")
        require(len(set(self.methods)) == len(self.methods), "methods", self.methods, "must not repeat a method")
        for name in self.methods:
            require(name in self.method, "methods", self.methods,
                    f"{name!r} has no align.method.{name} node (defined: {', '.join(self.method) or 'none'})")
        one_of("engine", self.engine, ENGINES)
        at_least("epochs", self.epochs, 1)
        require(self.max_steps == -1 or self.max_steps >= 1, "max_steps", self.max_steps, "must be -1 or >= 1")
        at_least("val_checks_per_epoch", self.val_checks_per_epoch, 1)
        one_of("dtype", self.dtype, DTYPES)
        require(not (self.gradient_checkpointing and self.share_prompt), "gradient_checkpointing",
                self.gradient_checkpointing, "needs align.share_prompt=false (a checkpointed layer keeps no KV cache)")
        if self.engine == "trl":
            self._check_trl()

    def _check_trl(self) -> None:
        """Refuse the Lightning-only settings TRL's DPOTrainer would silently ignore (it trains every
        preference method; the other methods still train with Lightning)."""
        trained = [name for name in self.methods if self.method[name].examples == "preference"]
        if not trained:
            return
        needs = f"engine=trl ({','.join(trained)} by TRL's DPOTrainer) needs share_prompt=false, " \
                "val_checks_per_epoch=1, precision=null"
        require(not self.share_prompt, "share_prompt", self.share_prompt,
                f"TRL has no shared-prompt forward; {needs}")
        require(self.val_checks_per_epoch == 1, "val_checks_per_epoch", self.val_checks_per_epoch,
                f"TRL validates once per epoch; {needs}")
        require(self.precision is None, "precision", self.precision,
                f"TRL trains in bf16 on CUDA, float32 on CPU; {needs}")


#: How a trainable f_Rec's training loss treats the label classes (``recommender.training.balance``).
BALANCE_MODES = ("none", "class_weights", "sampler")
#: What the checkpoint choice and early stopping can follow (``recommender.training.select_by``): the
#: validation metric and whether higher ("max") or lower ("min") is better.
SELECT_BY = {"macro_f1": "max", "accuracy": "max", "loss": "min"}


def _rate(key: str, value: float) -> None:
    require(0.0 <= value <= 1.0, key, value, "must be in [0, 1]")


@dataclass
class RecTrainingSchema:
    """`recommender.training`: how stage train_rec trains a trainable f_Rec (a zero-shot one has no node)."""

    profiles_per_user: int
    max_users: int | None
    n_targets: int
    empty_profile_rate: float
    oracle_profile_rate: float
    empty_recent_rate: float
    val_fraction: float
    batch_size: int
    balance: str
    select_by: str
    patience: int
    trainer: dict[str, Any]  # overrides of the `trainer` config for this fit

    def __post_init__(self) -> None:
        at_least("profiles_per_user", self.profiles_per_user, 0)  # 0: oracle-fact and empty profiles only
        optional_at_least("max_users", self.max_users, 1)
        at_least("n_targets", self.n_targets, 1)
        _rate("empty_profile_rate", self.empty_profile_rate)
        _rate("oracle_profile_rate", self.oracle_profile_rate)
        _rate("empty_recent_rate", self.empty_recent_rate)
        require(self.empty_profile_rate + self.oracle_profile_rate <= 1.0, "oracle_profile_rate",
                self.oracle_profile_rate, f"must be at most 1 - empty_profile_rate ({self.empty_profile_rate:g})")
        profiled = self.oracle_profile_rate > 0 or (self.profiles_per_user > 0 and
                                                    self.empty_profile_rate + self.oracle_profile_rate < 1.0)
        require(self.empty_recent_rate == 0 or profiled, "empty_recent_rate", self.empty_recent_rate,
                "must be 0 when no training case has a profile (it drops the recent items of cases with one: "
                "set oracle_profile_rate > 0, or profiles_per_user > 0 with empty_profile_rate < 1)")
        require(0.0 < self.val_fraction < 1.0, "val_fraction", self.val_fraction, "must be in (0, 1)")
        at_least("batch_size", self.batch_size, 1)
        one_of("balance", self.balance, BALANCE_MODES)
        one_of("select_by", self.select_by, tuple(SELECT_BY))
        at_least("patience", self.patience, 0)


#: Config node -> its schema, in the order :func:`validate_config` checks them.
SCHEMAS: dict[str, type] = {
    "history": HistorySchema,
    "sampling": SamplingSchema,
    "evaluate": EvaluateSchema,
    "pairs": PairsSchema,
    "align": AlignSchema,
    "test": TestSchema,
    "bootstrap": BootstrapSchema,
    "recommender.training": RecTrainingSchema,
}
#: Node -> the key that must be true for it to be checked: only a trainable f_Rec is trained (a zero-shot one
#: may still carry an experiment's training settings, unread).
CHECKED_WHEN = {"recommender.training": "recommender.trainable"}


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore as ``schema/<node>``."""
    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        store.store(group="schema", name=name, node=schema)


register_schemas()


# --- model specs -----------------------------------------------------------------------------------------

BUNDLED_PREFIX = "bundled:"
#: The bundled models of every slot: lettingo.llm.bundled.BUNDLED_GGUF (generators, LLM f_Rec, DPO policy)
#: and lettingo.recommender.cross_encoder.BUNDLED_MINILM; a leaf cannot import them (tests/test_hub_models.py
#: checks the copy).
BUNDLED_MODELS = ("smollm2_135m", "gemma3_270m", "all_minilm_l6_v2")
TINY_RANDOM = re.compile(r"tiny_random(:\d+)?")
#: ``org/name`` with an optional ``@revision`` (branch, tag or commit), as lettingo.llm.hub.HUB_ID.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(@[^\s@]+)?")
#: Backends whose `model` is a name a server knows, not something loaded here.
REMOTE_BACKENDS = frozenset({"lettingo.llm.openai_http.OpenAIBackend"})
MODEL_SPECS = ("must be bundled:<name>, tiny_random[:seed], an existing local folder or a Hugging Face Hub id "
               "org/name[@revision]")


def check_model_spec(key: str, spec: Any) -> None:
    """Check a model spec without loading anything: bundled, tiny_random, a folder or a Hub id.

    A Hub id is only checked for its form: whether it is in the HF cache is seen when it is loaded.
    """
    text = str(spec)
    if text.startswith(BUNDLED_PREFIX):
        known = "unknown bundled model; known: " + ", ".join(BUNDLED_PREFIX + name for name in BUNDLED_MODELS)
        require(text.removeprefix(BUNDLED_PREFIX) in BUNDLED_MODELS, key, spec, known)
        return
    if TINY_RANDOM.fullmatch(text) or Path(text).expanduser().is_dir():
        return
    require(HUB_ID.fullmatch(text) is not None, key, spec, MODEL_SPECS)


def model_specs(cfg: DictConfig) -> Iterator[tuple[str, Any]]:
    """(key, spec) of every model the run loads locally: the generator, the explore backbones, f_Rec."""
    backbones = [("backbone", cfg.get("backbone"))]
    sampling = cfg.get("sampling")
    if isinstance(sampling, DictConfig) and isinstance(sampling.get("backbones"), DictConfig):
        backbones += [(f"sampling.backbones.{slot}", node) for slot, node in sampling.backbones.items()]
    for key, node in backbones:
        if isinstance(node, DictConfig) and "model" in node and node.get("_target_") not in REMOTE_BACKENDS:
            yield f"{key}.model", node.model
    recommender = cfg.get("recommender")
    if isinstance(recommender, DictConfig) and isinstance(recommender.get("model"), DictConfig):
        if "model" in recommender.model:
            yield "recommender.model.model", recommender.model.model


# --- validation ------------------------------------------------------------------------------------------

CONVERSIONS = {"Integer": "must be an integer", "Float": "must be a number", "Boolean": "must be true or false",
               "String": "must be a string"}


def _from_omegaconf(node: str, error: OmegaConfBaseException, plain: Any) -> ConfigError:
    """An OmegaConf error (wrong type, unknown or missing key) as a one-line :class:`ConfigError`."""
    key = str(error.full_key or error.key or "")
    text = str(error.msg or error or type(error).__name__)
    first = text.splitlines()[0] if text.strip() else type(error).__name__
    if isinstance(error, MissingMandatoryValue):
        return ConfigError(key, "???", "a value is required").under(node)
    if isinstance(error, ConfigKeyError):
        return ConfigError(key, _lookup(plain, key), "unknown key (" + first + ")").under(node)
    converted = re.search(r"could not be converted to (\w+)", first)
    allowed = CONVERSIONS.get(converted.group(1), first) if converted else first
    value = error.value if getattr(error, "value", None) is not None else _lookup(plain, key)
    return ConfigError(key, value, allowed).under(node)


def _lookup(plain: Any, key: str) -> Any:
    """The value at dotted ``key`` (``a.b[2]``) of a plain container, None when absent."""
    node = plain
    for part in re.findall(r"[^.\[\]]+", key):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _build(node: DictConfig, path: str) -> None:
    """Build the structured nodes under ``node`` deepest first, so an error names its exact key."""
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            _build(child, f"{path}.{key}")
    if dataclasses.is_dataclass(OmegaConf.get_type(node)):
        try:
            OmegaConf.to_object(node)
        except ConfigError as error:
            raise error.under(path) from None


def validate_node(cfg: DictConfig, name: str, schema: type) -> None:
    """Check node ``name`` of ``cfg`` against ``schema``; raise :class:`ConfigError` (one line)."""
    node = OmegaConf.select(cfg, name, throw_on_missing=False)
    if node is None:
        raise ConfigError(name, "???", f"the config has no {name} node (conf/{name.split('.')[0]}/ or config.yaml)")
    try:
        plain = OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as error:  # keys are already full here
        raise _from_omegaconf("", error, None) from None
    if not isinstance(plain, dict):
        fields = ", ".join(f.name for f in dataclasses.fields(schema))
        raise ConfigError(name, plain, f"must be a mapping with keys {fields}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), plain)
        _build(merged, name)
    except ConfigError:
        raise
    except OmegaConfBaseException as error:
        raise _from_omegaconf(name, error, plain) from None


def validate_config(cfg: DictConfig) -> None:
    """Check every node with a schema (:data:`SCHEMAS`) and every model spec, loading nothing.

    Raises :class:`ConfigError` (a ``ValueError``) whose message is one line ``<key>=<value>: <allowed>``.
    """
    for name, schema in SCHEMAS.items():
        if name not in CHECKED_WHEN or OmegaConf.select(cfg, CHECKED_WHEN[name], default=False) is True:
            validate_node(cfg, name, schema)
    for key, spec in model_specs(cfg):
        check_model_spec(key, spec)
