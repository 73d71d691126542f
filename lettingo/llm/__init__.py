"""Generation backends: local transformers, OpenAI-compatible HTTP, vLLM; bundled models."""
