"""Generation with vLLM's offline engine (GPU machines): one engine per model per process, LoRA adapters per request.

A ``vllm.LLM`` takes minutes to start and most of the GPU's memory, so it is built once and shared:
:class:`EngineRegistry` holds the engines of this process keyed by (model folder, engine settings), and
every :class:`VLLMBackend` is a cheap view over one of them (the base model, or the base model with one
LoRA adapter passed to ``generate`` as a ``vllm.lora.request.LoRARequest``). The base backbone, each of its
adapters and every fixed-format prompt through it therefore share one engine.

Keys are compared after resolving them as vLLM would (:meth:`EngineSettings.resolved`): ``dtype: auto`` becomes
the dtype vLLM picks for the model folder on this GPU, so ``auto`` and ``bfloat16`` on a bfloat16 checkpoint name
one engine. The f_Rec (:mod:`lettingo.recommender.vllm_scorer`) asks with ``share=True``: it runs on a live
engine of the same model and dtype whatever that engine's capacity settings (a generator's context length, LoRA
slots, memory share), so it takes the backbone's engine when both name the same model.

Lifetime: closing a view never touches the engine. Because every engine reserves
``gpu_memory_utilization`` of the same GPU, at most one lives at a time: asking for an engine of another
key shuts the live one down first (so a loop over backbones should visit the views of one model together,
see :func:`lettingo.llm.pool.shared_engine_order`), then frees what else the process holds on the GPU
(:func:`lettingo.runtime.release_accelerator_memory`). :func:`close_engines` shuts every engine down and frees
its GPU memory; :class:`lettingo.llm.pool.BackendPool` calls it when its ``with`` block ends (the end of a
stage's generation, before f_Rec or a trainer needs the GPU), ``release_accelerator_memory`` calls it (the end
of each stage), and an ``atexit`` hook calls it for anything left at the end of the process.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lettingo.llm.base import Generation, GenerationBackend, Progress, sample_seed, validate_request
from lettingo.llm.models import resolve_model_path
from lettingo.llm.prompting import TokenizerPrompts
from lettingo.runtime import free_accelerator_cache, on_release, release_accelerator_memory

log = logging.getLogger(__name__)

MISSING_VLLM = (
    "backbone=vllm needs the `vllm` package, which runs on GPU machines (`pip install vllm`); "
    "on this machine use backbone=smollm2_135m (local transformers) or backbone=openai"
)

#: vLLM's dtype names and what each means (vllm/config/model.py:2384-2390, ``_STR_DTYPE_TO_TORCH_DTYPE``, v0.33.0).
VLLM_DTYPES = {"half": "float16", "float16": "float16", "float": "float32", "float32": "float32",
               "bfloat16": "bfloat16"}

#: A CUDA compute capability, (major, minor); None where there is no CUDA GPU.
Capability = tuple[int, int] | None


def cuda_capability() -> Capability:
    """The compute capability of this process's CUDA GPU, or None without one (torch is imported only here)."""
    import torch

    return tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None


def supported_dtypes(capability: Capability) -> tuple[str, ...]:
    """The dtypes vLLM runs on a GPU of ``capability``, its fallback first (vllm/platforms/cuda.py:257-266:
    bfloat16 from Ampere on, float16 from Pascal on); without CUDA, its CPU platform's (vllm/platforms/cpu.py:137)."""
    if capability is None or capability >= (8, 0):
        return ("bfloat16", "float16", "float32")
    return ("float16", "float32") if capability >= (6, 0) else ("float32",)


def checkpoint_dtype(path: str | Path) -> str:
    """The dtype the model folder's ``config.json`` names (``dtype``, else ``torch_dtype``, else its
    ``text_config``'s), float32 where it names none, as vLLM reads it (ModelArchConfigConvertorBase.get_torch_dtype,
    vllm/transformers_utils/model_arch_config_convertor.py:201-239; vLLM also reads the dtype of safetensors
    weights where the config names none, which no model folder lettingo builds or names lacks)."""
    file = Path(path) / "config.json"
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{file}: cannot read the model's config ({error})") from None
    for node in (config, config.get("text_config") or {}):
        named = node.get("dtype") or node.get("torch_dtype")
        if named:
            return VLLM_DTYPES.get(str(named).removeprefix("torch."), str(named))
    return "float32"


def engine_dtype(dtype: str, path: str | Path, capability: Capability) -> str:
    """The dtype a vLLM engine started with ``dtype`` over the model folder ``path`` computes in.

    vLLM's rule for ``auto`` (``_resolve_auto_dtype``, vllm/config/model.py:2423-2464): the checkpoint's dtype,
    a float32 checkpoint downcast to the GPU's first supported dtype, and an unsupported one replaced by it.
    """
    name = str(dtype).lower()
    if name != "auto":
        if name not in VLLM_DTYPES:
            raise ValueError(f"dtype: unknown vLLM dtype {dtype!r}; known: auto, {', '.join(VLLM_DTYPES)}")
        return VLLM_DTYPES[name]
    supported = supported_dtypes(capability)
    found = checkpoint_dtype(path)
    return found if found in supported and found != "float32" else supported[0]


@dataclass(frozen=True)
class EngineSettings:
    """The ``vllm.LLM`` arguments that make two engines different (besides the model folder)."""

    dtype: str = "auto"
    gpu_memory_utilization: float = 0.85
    max_model_len: int = 4096
    tensor_parallel_size: int = 1
    enable_lora: bool = True
    max_loras: int = 2
    max_lora_rank: int = 64
    max_num_seqs: int | None = None

    @classmethod
    def from_values(cls, **values: Any) -> EngineSettings:
        """Settings from config values, each cast to its field's type, so that equal values from two configs
        (a backbone's and an f_Rec's) name one engine; unknown names raise ``TypeError``."""
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown vLLM engine settings {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        casts: dict[str, Callable[[Any], Any]] = {"dtype": str, "gpu_memory_utilization": float, "enable_lora": bool}
        return cls(**{key: None if key == "max_num_seqs" and value is None else casts.get(key, int)(value)
                      for key, value in values.items()})

    def resolved(self, path: str | Path, capability: Capability) -> EngineSettings:
        """These settings as the engine over model folder ``path`` runs them (``auto`` -> the dtype, see
        :func:`engine_dtype`): two settings name one engine when their resolved forms are equal."""
        return replace(self, dtype=engine_dtype(self.dtype, path, capability))

    def covers(self, other: EngineSettings) -> bool:
        """Whether an engine of these (resolved) settings computes what one of ``other`` (resolved) would, with room
        for its requests: the same dtype and tensor parallelism and at least its context length. The rest (memory
        share, LoRA slots, sequences at once) changes what the engine can hold, not its log-probabilities."""
        return ((self.dtype, self.tensor_parallel_size) == (other.dtype, other.tensor_parallel_size)
                and self.max_model_len >= other.max_model_len)

    def llm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``vllm.LLM`` (``max_num_seqs`` only when set: vLLM's default otherwise)."""
        kwargs = asdict(self)
        if kwargs["max_num_seqs"] is None:
            del kwargs["max_num_seqs"]
        if not self.enable_lora:
            del kwargs["max_loras"], kwargs["max_lora_rank"]
        return kwargs


@dataclass
class Engine:
    """One live ``vllm.LLM``, its tokenizer and the LoRA ids it has handed out."""

    path: str
    settings: EngineSettings
    llm: Any
    tokenizer: Any
    lora_ids: dict[tuple[str, int], int] = field(default_factory=dict)

    def lora_request(self, name: str, adapter: str) -> Any:
        """The ``LoRARequest`` of ``adapter``: one integer id per adapter folder (and its weights' mtime, so
        an adapter retrained in the same process is loaded afresh rather than taken from vLLM's LoRA cache)."""
        from vllm.lora.request import LoRARequest

        if not self.settings.enable_lora:
            raise ValueError(
                f"{name}: adapter {adapter} needs an engine with LoRA support; set enable_lora: true in the backbone"
            )
        weights = Path(adapter) / "adapter_model.safetensors"
        key = (adapter, weights.stat().st_mtime_ns if weights.is_file() else 0)
        lora_id = self.lora_ids.setdefault(key, len(self.lora_ids) + 1)
        return LoRARequest(name, lora_id, adapter)


def default_factory(path: str, settings: EngineSettings) -> Any:
    """Start a ``vllm.LLM`` over the model folder ``path`` with prefix caching on."""
    try:
        from vllm import LLM
    except ImportError as error:
        raise ImportError(MISSING_VLLM) from error
    return LLM(model=path, tokenizer=path, trust_remote_code=False, enable_prefix_caching=True,
               **settings.llm_kwargs())


def shutdown_llm(llm: Any) -> None:
    """Stop ``llm`` and its distributed state, as far as the installed vLLM allows (best effort); the registry
    then frees the cached GPU memory (:func:`~lettingo.runtime.free_accelerator_cache`)."""
    for stop in (getattr(llm, "shutdown", None),
                 getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)):
        if callable(stop):
            with contextlib.suppress(Exception):
                stop()
            break
    with contextlib.suppress(Exception):
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()


class EngineRegistry:
    """The vLLM engines of this process, keyed by (model folder, resolved :class:`EngineSettings`); at most one alive.

    ``factory(path, settings)`` builds an engine (tests pass a fake); ``created`` counts the engines built;
    ``capability()`` is the GPU's compute capability that ``dtype: auto`` resolves against (tests pass one).
    """

    def __init__(self, factory: Callable[[str, EngineSettings], Any] = default_factory,
                 shutdown: Callable[[Any], None] = shutdown_llm,
                 capability: Callable[[], Capability] = cuda_capability) -> None:
        self.factory = factory
        self.shutdown = shutdown
        self.capability = capability
        self.engines: dict[tuple[str, EngineSettings], Engine] = {}
        self.created = 0
        self._hooked = False

    def acquire(self, path: str, settings: EngineSettings, share: bool = False) -> Engine:
        """The engine for ``(path, settings)`` (compared resolved), built on first use after shutting down a live
        engine of another key and freeing the GPU (:func:`~lettingo.runtime.release_accelerator_memory`).

        ``share``: a live engine of the same model whose settings :meth:`~EngineSettings.covers` these serves too
        (the f_Rec on its generator's engine).
        """
        settings = settings.resolved(path, self.capability())
        key = (path, settings)
        if key in self.engines:
            return self.engines[key]
        if share:
            for (live_path, live), engine in self.engines.items():
                if live_path == path and live.covers(settings):
                    return engine
        self.close_all()  # every engine reserves a share of the same GPU: one at a time
        release_accelerator_memory()  # and vLLM refuses to start below that share free
        log.info("starting vLLM engine for %s (%s)", path, settings)
        began = time.perf_counter()
        llm = self.factory(path, settings)
        self.created += 1
        if not self._hooked:
            atexit.register(self.close_all)
            self._hooked = True
        engine = Engine(path, settings, llm, llm.get_tokenizer())
        self.engines[key] = engine
        log.info("vLLM engine ready in %.0f s", time.perf_counter() - began)
        return engine

    def close_all(self) -> None:
        """Shut every engine down and free its GPU memory; views over them must not be used afterwards."""
        if not self.engines:
            return
        while self.engines:
            _, engine = self.engines.popitem()
            log.info("shutting down vLLM engine for %s", engine.path)
            llm, engine.llm = engine.llm, None
            self.shutdown(llm)
            del llm
        free_accelerator_cache()


#: The engines of this process (every :class:`VLLMBackend` built without an explicit registry uses it).
ENGINES = EngineRegistry()


def close_engines() -> None:
    """Shut down every vLLM engine of this process (end of a stage's generation; also run at exit)."""
    ENGINES.close_all()


on_release(close_engines)  # release_accelerator_memory (each stage's end) shuts the engines down too


def open_engine(model: str, cache_dir: str | Path, settings: EngineSettings,
                registry: EngineRegistry | None = None, share: bool = False) -> tuple[EngineRegistry, str, Engine]:
    """The shared engine of ``model`` (a bundled name, Hub id or local folder, see
    :func:`lettingo.llm.models.resolve_model_path`) under ``settings``, started on first use: the registry
    it lives in (:data:`ENGINES` unless given), the model's local folder and the engine (``share``: see
    :meth:`EngineRegistry.acquire`).

    Raises ``ImportError`` with instructions where vLLM is not installed (before resolving or converting
    the model), unless ``registry`` builds its engines with a factory of its own (tests).
    """
    registry = ENGINES if registry is None else registry
    if registry.factory is default_factory:
        try:
            import vllm  # noqa: F401
        except ImportError as error:
            raise ImportError(MISSING_VLLM) from error
    path = str(resolve_model_path(model, cache_dir))  # a local folder, also for a Hub id
    return registry, path, registry.acquire(path, settings, share)


def engine_identity(model: str, cache_dir: str | Path, settings: EngineSettings) -> tuple[str, EngineSettings]:
    """The model folder and resolved settings that name the engine ``model`` runs on under ``settings`` in
    :data:`ENGINES` (equal for two configs exactly when they share one engine)."""
    path = str(resolve_model_path(model, cache_dir))
    return path, settings.resolved(path, ENGINES.capability())


class VLLMBackend(TokenizerPrompts, GenerationBackend):
    """A view over the process's shared ``vllm.LLM`` for ``model`` (a bundled name, Hub id or local folder,
    resolved as for the local backend by :func:`lettingo.llm.models.resolve_model_path`), optionally through
    the LoRA ``adapter``.

    Views of the same model and engine settings share one engine (see the module docstring); the base model
    sends no LoRA request, a view with an adapter sends its own ``LoRARequest``. Every sample is its own
    request with its own seed (:func:`sample_seed`), so results match the contract of the other backends;
    prefix caching shares a prompt's prefill among its ``n`` samples. At most ``sequences_per_call``
    sequences (prompt x sample) go to the engine per ``generate`` call of vLLM, ``progress`` after each.
    """

    def __init__(
        self,
        name: str,
        model: str,
        cache_dir: str | Path,
        lead_in: str = "",
        adapter: str | Path | None = None,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int = 4096,
        tensor_parallel_size: int = 1,
        enable_lora: bool = True,
        max_loras: int = 2,
        max_lora_rank: int = 64,
        max_num_seqs: int | None = None,
        sequences_per_call: int = 4096,
        registry: EngineRegistry | None = None,
    ) -> None:
        """Get (or start) the shared engine; raises ``ImportError`` with instructions where vLLM is not installed."""
        if sequences_per_call < 1:
            raise ValueError(f"sequences_per_call must be at least 1, got {sequences_per_call}")
        self.name = name
        self.lead_in = lead_in
        self.sequences_per_call = sequences_per_call
        self.adapter = None if adapter is None else str(adapter)
        settings = EngineSettings.from_values(
            dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size, enable_lora=enable_lora, max_loras=max_loras,
            max_lora_rank=max_lora_rank, max_num_seqs=max_num_seqs,
        )
        self.engine: Engine | None = open_engine(model, cache_dir, settings, registry)[2]
        self.tokenizer = self.engine.tokenizer
        self.lora = None if self.adapter is None else self.engine.lora_request(name, self.adapter)

    def generate(
        self,
        prompts: Sequence[str],
        n: int = 1,
        temperature: float = 1.0,
        max_new_tokens: int = 128,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> list[list[Generation]]:
        """See :meth:`GenerationBackend.generate`."""
        from vllm import SamplingParams

        validate_request(n, temperature, max_new_tokens)
        if self.engine is None or self.engine.llm is None:
            raise RuntimeError(f"{self.name}: its vLLM engine was shut down (close_engines); build the backend again")
        llm = self.engine.llm
        jobs = [(i, j) for i in range(len(prompts)) for j in range(n)]
        results: list[list[Generation]] = [[] for _ in prompts]
        encoded: dict[int, list[int]] = {}
        for start in range(0, len(jobs), self.sequences_per_call):
            chunk = jobs[start : start + self.sequences_per_call]
            inputs = [{"prompt_token_ids": encoded.setdefault(i, self.encode(prompts[i]))} for i, _ in chunk]
            params = [
                SamplingParams(n=1, temperature=temperature, max_tokens=max_new_tokens,
                               seed=sample_seed(seed, prompts[i], j))
                for i, j in chunk
            ]
            began = time.perf_counter()
            outputs = llm.generate(inputs, params, lora_request=self.lora, use_tqdm=False)
            seconds = (time.perf_counter() - began) / len(chunk)
            for (i, _), output in zip(chunk, outputs, strict=True):
                completion = output.outputs[0]
                results[i].append(
                    Generation(completion.text, len(output.prompt_token_ids), len(completion.token_ids), seconds)
                )
            if progress is not None:
                progress(len(chunk), sum(len(o.outputs[0].token_ids) for o in outputs))
        return results

    def close(self) -> None:
        """Drop this view; the shared engine stays up for the next view (see :func:`close_engines`)."""
        self.engine = None
