"""Generation backends: local transformers, OpenAI-compatible HTTP, vLLM; bundled models.

- ``base``: :class:`~lettingo.llm.base.GenerationBackend` (``render``, ``count_tokens``,
  ``generate``, ``close``), :class:`~lettingo.llm.base.Generation`, per-sample seeds.
- ``models``: :func:`~lettingo.llm.models.load_causal_lm` / ``resolve_model_path`` for
  ``bundled:smollm2_135m``, ``bundled:gemma3_270m``, ``tiny_random[:seed]``, a local HF folder or a Hub
  id (``hub``: resolved through the Hugging Face cache, honouring ``HF_HUB_OFFLINE``);
  ``resolve_dtype`` (the one meaning of ``dtype: auto``) and ``training_device``.
- ``padding`` / ``kv_cache``: token sequences as one padded batch; a KV cache passed to a model's
  forward under the keyword its transformers version takes.
- ``bundled`` / ``tiny`` / ``cache``: the GGUF conversion, the tiny random model, the locked
  build-once folder cache behind them.
- ``local`` (+ ``decoding``, ``fast_decode``, ``prompting``): batched CPU/GPU generation.
- ``openai_http``: any OpenAI-compatible server; ``vllm_backend``: vLLM's offline engine.
- ``pool``: backbones built on demand, one open at a time, and their identity.

Backbones are built from ``lettingo/conf/backbone/*.yaml`` with ``hydra.utils.instantiate``.
"""
