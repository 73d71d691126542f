"""Structured-config schemas of every config node, and the checks of a composed config.

Each dataclass mirrors one config node: its field types are what OmegaConf checks when the node is
merged onto it, and its ``__post_init__`` checks the values (as TRL's ``DPOConfig`` does), so a bad
value fails before any model is loaded, with one line naming the key: ``<key>=<value>: <allowed>``.
Nodes that Hydra instantiates (backbones, modules, optimizers, the trainer: they hold ``_target_``) are
``Any``.

:class:`LettingoConfig` is the whole config. It is stored in Hydra's ConfigStore as ``config_schema``,
the first entry of conf/config.yaml's defaults list, so composition itself checks every type and refuses
every unknown key (``--cfg job`` included). :func:`validate_config` then checks the values, and
:func:`config_object` hands a stage the config as one typed object. :func:`compose_config` composes a
command line and checks it, writing nothing (what the console script does before Hydra starts a run).

A leaf module: it imports only the standard library, omegaconf and hydra.
"""

import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

__all__ = [
    "MAX_NEW_TOKENS", "AlignMethodSchema", "AlignSchema", "BootstrapSchema", "ConfigError", "DatasetSchema",
    "EvaluateSchema", "HistorySchema", "LettingoConfig", "PairsSchema", "PromptSchema", "RecTrainingSchema",
    "RecommenderSchema", "SamplingSchema", "TestSchema", "check_global_batch", "check_model_spec", "check_overrides",
    "compose_config",
    "compose_with_methods",
    "config_object", "configured_processes", "validate_config",
]

#: The longest profile a generator may be asked for, in tokens. The shipped generators' contexts are 4,096
#: (vLLM's default max_model_len) to 8,192 tokens and an H = 70 prompt takes ~2,500 of them; the paper's
#: profiles fit in 256. A larger cap cannot fit beside a prompt and would only reserve KV cache for nothing.
MAX_NEW_TOKENS = 4096


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
    """Refuse ``value`` below ``low``."""
    require(value >= low, key, value, f"must be >= {low:g}")


def optional_at_least(key: str, value: Any, low: float) -> None:
    """Refuse ``value`` below ``low``; null is allowed."""
    require(value is None or value >= low, key, value, f"must be null or >= {low:g}")


def one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Refuse ``value`` outside ``allowed``."""
    require(value in allowed, key, value, "must be one of " + ", ".join(allowed))


def token_cap(key: str, value: int) -> None:
    """Refuse a profile length outside [1, :data:`MAX_NEW_TOKENS`]."""
    require(1 <= value <= MAX_NEW_TOKENS, key, value,
            f"must be in [1, {MAX_NEW_TOKENS}] (a profile longer than that cannot fit beside its prompt)")


# --- the nodes -------------------------------------------------------------------------------------------


@dataclass
class PathsSchema:
    """`paths`: the project root, the run folders and the converted-model cache (conf/paths/)."""

    root_dir: str
    output_root: str
    experiment_dir: str
    run_dir: str | None  # None only in `--cfg job --resolve`: Hydra shows the config before it picks a folder
    model_cache: str


@dataclass
class LabelsSchema:
    """`dataset.labels`: the rating thresholds of the three sentiment labels."""

    like_min: float
    dislike_max: float

    def __post_init__(self) -> None:
        require(self.dislike_max < self.like_min, "dislike_max", self.dislike_max,
                f"must be below dataset.labels.like_min ({self.like_min:g})")


@dataclass
class ItemTextSchema:
    """`dataset.item_text`: how an item is clipped in prompts."""

    max_chars: int
    review_chars: int

    def __post_init__(self) -> None:
        at_least("max_chars", self.max_chars, 1)
        at_least("review_chars", self.review_chars, 0)


@dataclass
class DatasetSchema:
    """`dataset`: where the interactions come from, how ratings become labels and how users are split."""

    name: str
    attribute_label: str
    loader: Any  # instantiated (`_target_`): returns the common interaction schema
    labels: LabelsSchema
    histories: list[int]
    splits: dict[str, int]
    split_seed: int
    item_text: ItemTextSchema
    path: str | None = None  # folder of the published files (datasets no package ships)

    def __post_init__(self) -> None:
        # A `???` in the YAML cannot mark it required: merged onto this field's default it changes nothing.
        reads_files = isinstance(self.loader, Mapping) and "path" in self.loader
        require(self.path is not None or not reads_files, "path", self.path,
                f"dataset {self.name} is read from its published files: set dataset.path=<folder>")
        require(len(self.histories) > 0, "histories", self.histories, "must name at least one H")
        for i, h in enumerate(self.histories):
            at_least(f"histories[{i}]", h, 1)
        for split, size in self.splits.items():
            at_least(f"splits.{split}", size, 0)


@dataclass
class FactsSchema:
    """`prompt.facts`: the user facts computed from the older history."""

    rating_stats: bool
    genre_preferences: bool
    attribute_label: str
    min_support: int
    top_k: int

    def __post_init__(self) -> None:
        at_least("min_support", self.min_support, 1)
        at_least("top_k", self.top_k, 1)


@dataclass
class PromptSchema:
    """`prompt` (and each `test.fixed_formats.<name>`): the generator's prompt."""

    name: str
    facts: FactsSchema
    listed_items: int | None
    item_attributes: bool
    template: str
    request: str

    def __post_init__(self) -> None:
        optional_at_least("listed_items", self.listed_items, 0)


@dataclass
class RecPromptSchema:
    """`recommender.prompt`: the prompt of an LLM f_Rec (head before the profile, tail from it on)."""

    head: str
    tail: str
    empty_profile: str
    lead_in: str


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
        token_cap("max_new_tokens", self.max_new_tokens)
        at_least("users_per_chunk", self.users_per_chunk, 1)


PAIR_RULES = ("all", "margin")
GATE_MODES = ("report", "require", "off")


@dataclass
class PairsSchema:
    """`pairs`: which preference pairs stage evaluate writes from the rewards, and the reliability gate."""

    rule: str
    max_pairs_per_user: int | None
    min_margin: Any  # a number >= 0, or "auto" (OmegaConf 2.3 has no float | str)
    top_k: int
    gate: str
    gate_min_replication: float
    replicate_target: float

    def __post_init__(self) -> None:
        one_of("rule", self.rule, PAIR_RULES)
        optional_at_least("max_pairs_per_user", self.max_pairs_per_user, 1)
        number = isinstance(self.min_margin, int | float) and not isinstance(self.min_margin, bool)
        require(self.min_margin == "auto" or (number and self.min_margin >= 0), "min_margin", self.min_margin,
                "must be a number >= 0 or auto")
        at_least("top_k", self.top_k, 0)
        one_of("gate", self.gate, GATE_MODES)
        for key in ("gate_min_replication", "replicate_target"):
            require(0 <= getattr(self, key) <= 1, key, getattr(self, key), "must be in [0, 1] (a share of pairs)")


@dataclass
class SensitivitySchema:
    """`evaluate.sensitivity`: when f_Rec reads the profiles too little to train on its verdicts."""

    min_effect: float

    def __post_init__(self) -> None:
        at_least("min_effect", self.min_effect, 0)


@dataclass
class TestSchema:
    """`test`: every method writes one profile per held-out user; f_Rec scores them."""

    __test__ = False  # not a pytest test class

    split: str
    max_users: int | None
    temperature: float
    max_new_tokens: int
    users_per_chunk: int
    fixed_formats: dict[str, PromptSchema] = field(default_factory=dict)  # name -> prompt (none: no such rows)

    def __post_init__(self) -> None:
        require(bool(self.split), "split", self.split, "must name a split")
        optional_at_least("max_users", self.max_users, 1)
        at_least("temperature", self.temperature, 0)
        token_cap("max_new_tokens", self.max_new_tokens)
        at_least("users_per_chunk", self.users_per_chunk, 1)


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
        check_global_batch(self.global_size, self.micro_size, 1, key="global_size")


def check_global_batch(global_size: int, micro_size: int, processes: int, key: str = "align.batch.global_size") -> None:
    """Refuse a global batch that ``processes`` processes of ``micro_size`` pairs each cannot make up exactly."""
    per_pass = micro_size * processes
    where = f"align.batch.micro_size ({micro_size})" if processes == 1 else \
        f"align.batch.micro_size x trainer.devices x trainer.num_nodes ({micro_size} x {processes} = {per_pass})"
    require(global_size >= per_pass and global_size % per_pass == 0, key, global_size,
            f"must be a positive multiple of {where}: each process runs micro_size pairs per forward")


EXAMPLE_KINDS = ("preference", "positive", "group")


@dataclass
class AlignMethodSchema:
    """`align.method.<name>`: the examples a method trains on and its LightningModule."""

    examples: str
    module: Any  # instantiated with `_partial_: true`; the stage passes the model
    rounds: int | None = None  # this method's on-policy rounds (None: `align.rounds`)
    seeds: int = 1  # training seeds of the last round (>= 2: replicas from the same examples and previous adapter)
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])  # a preference method's TRL DPO loss_type

    def __post_init__(self) -> None:
        one_of("examples", self.examples, EXAMPLE_KINDS)
        if self.rounds is not None:
            at_least("rounds", self.rounds, 1)
        at_least("seeds", self.seeds, 1)
        require(isinstance(self.module, Mapping) and "_target_" in self.module, "module", self.module,
                "must be a module config (with _target_)")
        require(len(self.loss_type) > 0, "loss_type", self.loss_type, "must name at least one of TRL's DPO losses")
        if self.examples == "preference":
            sft_term = bool(self.module.get("sft_weight"))
            require(("sft" in self.loss_type) == sft_term, "loss_type", self.loss_type,
                    f"must list 'sft' exactly when module.sft_weight > 0 (it is {self.module.get('sft_weight', 0)})")

    def lightning_trains_it(self) -> bool:
        """Whether this method's own module computes its loss: a module of its own does; the project's DPO module
        computes sigmoid DPO, with the SFT term or without."""
        return self.module["_target_"] != DPO_MODULE or self.loss_type in (["sigmoid"], ["sigmoid", "sft"])


ENGINES = ("lightning", "trl")
#: The project's DPO LightningModule (sigmoid loss, optional SFT term).
DPO_MODULE = "lettingo.align.dpo.DpoModule"
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
    rounds: int = 1

    def __post_init__(self) -> None:
        require(len(self.methods) > 0, "methods", self.methods, "must name at least one method")
        at_least("rounds", self.rounds, 1)
        require(len(set(self.methods)) == len(self.methods), "methods", self.methods, "must not repeat a method")
        for name in self.methods:
            require(name in self.method, "methods", self.methods,
                    f"{name!r} has no align.method.{name} node (defined: {', '.join(self.method) or 'none'})")
        one_of("engine", self.engine, ENGINES)
        if self.engine == "lightning":
            for name in self.methods:
                method = self.method[name]
                require(method.examples != "preference" or method.lightning_trains_it(), f"method.{name}.loss_type",
                        method.loss_type, "engine=lightning trains sigmoid DPO (+ 'sft' with module.sft_weight); "
                        "align.engine=trl trains any of TRL's DPO loss types")
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
        preference method with its ``loss_type``; the other methods still train with Lightning)."""
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


@dataclass
class RecommenderSchema:
    """`recommender` (and `evaluate.tabular.plain` / `.oracle`): the f_Rec and, when trainable, its training."""

    name: str
    trainable: bool
    model: Any  # instantiated (`_target_`): the f_Rec itself
    prompt: RecPromptSchema | None = None  # the LLM f_Rec's prompt (none for the others)
    training: RecTrainingSchema | None = None  # how stage train_rec trains it (a trainable f_Rec only)

    def __post_init__(self) -> None:
        require(isinstance(self.model, Mapping) and "_target_" in self.model, "model", self.model,
                "must be an f_Rec config (with _target_)")
        require(not self.trainable or self.training is not None, "training", None,
                "a trainable f_Rec needs a training node (conf/recommender/shared/training.yaml)")


@dataclass
class TabularSchema:
    """`evaluate.tabular`: the non-LLM f_Rec rows of both tables (fitted on the non-held-out users)."""

    enabled: bool
    plain: RecommenderSchema
    oracle: RecommenderSchema


#: The rewards of a profile (`evaluate.reward`): f_Rec right or wrong (the paper's), its probability of the true
#: label, that probability's log, the log's gain over no profile, and the stated-mean rule (no f_Rec).
REWARD_NAMES: tuple[str, ...] = ("correct", "p_true", "log_p_true", "log_p_gain", "stated_mean")


@dataclass
class EvaluateSchema:
    """`evaluate`: rewards of the explored profiles, pairs, and the baselines table."""

    split: str
    raw_histories: list[int]
    users_per_chunk: int
    sensitivity: SensitivitySchema
    tabular: TabularSchema
    reward: str = "correct"
    targets_per_user: int = 1

    def __post_init__(self) -> None:
        require(bool(self.split), "split", self.split, "must name a split")
        for i, h in enumerate(self.raw_histories):
            at_least(f"raw_histories[{i}]", h, 1)
        at_least("users_per_chunk", self.users_per_chunk, 1)
        one_of("reward", self.reward, REWARD_NAMES)
        at_least("targets_per_user", self.targets_per_user, 1)


@dataclass
class DistributedSchema:
    """`distributed`: how the ranks of a multi-process run wait for each other."""

    timeout_s: float
    stage_wait_s: float
    monitor_interval_s: float
    shutdown_timeout_s: int

    def __post_init__(self) -> None:
        for key in ("timeout_s", "stage_wait_s", "monitor_interval_s"):
            require(getattr(self, key) > 0, key, getattr(self, key), "must be > 0 (seconds)")
        at_least("shutdown_timeout_s", self.shutdown_timeout_s, 0)


def configured_processes(trainer: Mapping[str, Any]) -> int | None:
    """Processes a fit of ``trainer`` (a `trainer` node) runs on, devices x nodes, as far as the config says:
    None where only the machine knows (``devices: -1`` or ``auto`` off the CPU: every visible GPU)."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        count = len(devices)
    elif str(devices) in ("-1", "auto"):
        if str(trainer.get("accelerator", "cpu")) != "cpu":
            return None
        count = 1
    else:
        count = int(devices)
    return count * int(trainer.get("num_nodes", 1))


@dataclass
class LettingoConfig:
    """The whole composed config (conf/config.yaml and its groups): what a stage receives, one typed object."""

    stage: str
    stop_after: str | None
    experiment_name: str
    debug_setup: str | None
    debug_models: dict[str, str] | None  # a debug setup's stand-in models (`llm`: what every LLM f_Rec loads)
    run_dir: str | None
    seed: int
    num_threads: int | None
    tags: list[str]
    paths: PathsSchema
    dataset: DatasetSchema
    history: HistorySchema
    backbone: Any  # instantiated (`_target_`): the generator that is aligned
    sampling: SamplingSchema
    prompt: PromptSchema
    recommender: RecommenderSchema
    evaluate: EvaluateSchema
    pairs: PairsSchema
    align: AlignSchema
    test: TestSchema
    trainer: Any  # instantiated (`_target_`): the Lightning Trainer
    logger: Any  # instantiated (`_target_`): the tracker
    bootstrap: BootstrapSchema
    distributed: DistributedSchema

    def __post_init__(self) -> None:
        at_least("seed", self.seed, 0)
        optional_at_least("num_threads", self.num_threads, 1)
        processes = configured_processes(self.trainer)
        if processes is not None:  # else align checks it once the GPUs are counted
            check_global_batch(self.align.batch.global_size, self.align.batch.micro_size, processes)


#: The name of :class:`LettingoConfig` in Hydra's ConfigStore: the first entry of conf/config.yaml's defaults.
CONFIG_SCHEMA = "config_schema"
ConfigStore.instance().store(name=CONFIG_SCHEMA, node=LettingoConfig)


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
    if isinstance(error, ConfigKeyError | ConfigAttributeError):
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
            _build(child, f"{path}.{key}" if path else str(key))
    if dataclasses.is_dataclass(OmegaConf.get_type(node)):
        try:
            OmegaConf.to_object(node)
        except ConfigError as error:
            raise error.under(path) from None


#: What validation puts in place of ``paths.run_dir``: Hydra picks the folder only when a run starts, and no
#: check reads it.
RUN_DIR_UNKNOWN = "<run folder>"


def _plain(cfg: DictConfig, run_dir: str | None = None) -> dict[str, Any]:
    """``cfg`` as an unresolved plain container to build the schema from: without Hydra's node, with
    ``paths.run_dir`` set to ``run_dir`` when given, and without the `training` node of a zero-shot f_Rec
    (an experiment's training settings stay there, unread, when another f_Rec is picked)."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    if not isinstance(plain, dict):
        raise ConfigError("", plain, "the config must be a mapping")
    plain.pop("hydra", None)
    if run_dir is not None and isinstance(plain.get("paths"), dict):
        plain["paths"]["run_dir"] = run_dir
    recommender = plain.get("recommender")
    if isinstance(recommender, dict) and recommender.get("trainable") is not True:
        recommender["training"] = None
    return plain


def _structured(plain: dict[str, Any]) -> DictConfig:
    """``plain`` merged onto :class:`LettingoConfig` (types and keys checked); one-line :class:`ConfigError`."""
    try:
        return OmegaConf.merge(OmegaConf.structured(LettingoConfig), plain)
    except OmegaConfBaseException as error:
        raise _from_omegaconf("", error, plain) from None


def validate_config(cfg: DictConfig) -> None:
    """Check every node against its schema (types, unknown keys, values) and every model spec, loading nothing.

    Raises :class:`ConfigError` (a ``ValueError``) whose message is one line ``<key>=<value>: <allowed>``.
    """
    _check(_structured(_plain(cfg, run_dir=RUN_DIR_UNKNOWN)))
    for key, spec in model_specs(cfg):
        check_model_spec(key, spec)


def config_object(cfg: DictConfig) -> LettingoConfig:
    """The composed config as one typed object, every node checked by its schema (what a stage reads).

    Nodes Hydra instantiates stay plain dicts (``hydra.utils.instantiate`` takes them as they are).
    """
    merged = _structured(_plain(cfg))
    try:
        return OmegaConf.to_object(merged)
    except (ConfigError, OmegaConfBaseException):
        _check(merged)  # node by node, so that the error names the whole key
        raise


def _check(merged: DictConfig) -> None:
    """Build every schema of ``merged`` deepest first; the first failure as a one-line :class:`ConfigError`."""
    try:
        _build(merged, "")
    except ConfigError:
        raise
    except OmegaConfBaseException as error:
        raise _from_omegaconf("", error, None) from None


def check_overrides(overrides: Sequence[str], cfg: DictConfig) -> None:
    """Refuse a command-line override that Hydra would apply as a no-op: ``key={}`` on a mapping that has
    entries (Hydra merges a mapping override into the mapping there, so ``sampling.backbones={}`` kept the
    default backbone)."""
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.type != OverrideType.CHANGE or override.is_sweep_override():
            continue
        key, value = override.key_or_group, override.value()
        current = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value == {} and isinstance(current, DictConfig) and len(current) > 0:
            raise ConfigError(key, value, f"Hydra merges a mapping into {key}, so {{}} leaves its entries "
                                          f"{', '.join(map(str, current))} as they were; drop one with ~{key}.<name>")


def composition_error(error: HydraException, overrides: Sequence[str]) -> ValueError:
    """A Hydra composition error as one line: the :class:`ConfigError` of the OmegaConf error behind it (with
    the value ``overrides`` gave its key), or Hydra's own message up to its config search path."""
    if not isinstance(error.__cause__, OmegaConfBaseException):
        return ValueError(one_line(str(error).split("Config search path")[0], limit=300))
    given = dict(line.lstrip("~+").split("=", 1) for line in overrides if "=" in line)
    found = _from_omegaconf("", error.__cause__, None)
    return ConfigError(found.key, given[found.key], found.allowed) if found.key in given else found


#: The config group of the alignment methods: a YAML there is found by its name in `align.methods`.
METHOD_GROUP = "align/method"


def method_node_overrides(cfg: DictConfig, config_dir: str) -> list[str]:
    """The overrides that add the node of every method named in `align.methods` that has no `align.method.<name>`
    node but has a YAML in the method group (``+align/method@align.method.<name>=<name>``): a new method is one
    YAML and one module, with no line to add to `align/default.yaml`."""
    methods = OmegaConf.select(cfg, "align.methods", default=None) or []
    defined = OmegaConf.select(cfg, "align.method", default=None) or {}
    return [f"+{METHOD_GROUP}@align.method.{name}={name}" for name in methods
            if name not in defined and (Path(config_dir) / METHOD_GROUP / f"{name}.yaml").is_file()]


def compose_with_methods(overrides: Sequence[str], config_dir: str,
                         config_name: str = "config") -> tuple[DictConfig, list[str]]:
    """Compose ``config_name`` of ``config_dir`` with command-line ``overrides`` (plus :func:`method_node_overrides`,
    returned as the second value) and check it, writing nothing.

    Raises a ``ValueError`` whose message is one line (a :class:`ConfigError` where a key is at fault).
    """
    from hydra import compose, initialize_config_dir

    def composed(lines: list[str]) -> DictConfig:
        try:
            with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
                return compose(config_name=config_name, overrides=lines)
        except HydraException as error:
            raise composition_error(error, overrides) from None
        except OmegaConfBaseException as error:
            raise _from_omegaconf("", error, None) from None

    cfg = composed(list(overrides))
    added = method_node_overrides(cfg, config_dir)
    if added:
        cfg = composed([*overrides, *added])
    check_overrides(overrides, cfg)
    validate_config(cfg)
    return cfg, added


def compose_config(overrides: Sequence[str], config_dir: str, config_name: str = "config") -> DictConfig:
    """The config :func:`compose_with_methods` composes and checks."""
    return compose_with_methods(overrides, config_dir, config_name)[0]
