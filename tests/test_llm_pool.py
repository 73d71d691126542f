"""The backend pool keeps each backbone's usage (requests, tokens, cost) when it closes it."""

from __future__ import annotations

from lettingo.llm.pool import BackendPool


class MeteredBackend:
    """Stands for an API backend: every instance has spent one request and 0.5 USD."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def usage(self) -> dict[str, float]:
        return {"requests": 1.0, "cost_usd": 0.5}

    def close(self) -> None:
        self.closed = True


def test_usage_survives_switching_and_adds_up_over_reopenings() -> None:
    target = f"{__name__}.MeteredBackend"
    pool = BackendPool({"a": {"_target_": target, "name": "a"}, "b": {"_target_": target, "name": "b"}})
    with pool:
        first = pool["a"]
        pool["b"]
        pool["a"]
    assert first.closed
    assert pool.usage == {"a": {"requests": 2.0, "cost_usd": 1.0}, "b": {"requests": 1.0, "cost_usd": 0.5}}
