"""The interface every generation backend implements, and the per-sample seed they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lettingo.seeding import derive_seed

Progress = Callable[[int, int], None]
"""Called as ``progress(sequences_done, new_tokens)`` with the increments since the last call."""


@dataclass(frozen=True)
class Generation:
    """One sampled completion.

    ``seconds`` is the wall time attributed to this sequence: the time of the batch (or request)
    that produced it divided by the number of sequences in it, so the seconds of all generations
    of a call add up to the call's generation time.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float


class GenerationBackend(ABC):
    """Turns rendered prompts into sampled texts; one implementation per engine."""

    name: str

    @abstractmethod
    def render(self, instruction: str) -> str:
        """Return the exact string given to the model for ``instruction``.

        Chat models: the chat template applied to one user turn, with the generation prompt.
        Base models: ``instruction + lead_in``, so the model writes the answer instead of
        continuing the instruction.
        """

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Number of tokens the model sees for ``text`` (a rendered prompt or a completion)."""

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[str],
        n: int = 1,
        temperature: float = 1.0,
        max_new_tokens: int = 128,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> list[list[Generation]]:
        """Sample ``n`` completions for each rendered prompt.

        Returns one list of ``n`` generations per prompt, in input order. ``temperature == 0``
        means greedy decoding. Sample ``j`` of a prompt is drawn from its own random stream,
        seeded by :func:`sample_seed` from (seed, prompt, j), so the same call gives the same
        texts. Another call holding the same prompt (other prompts beside it, another batch
        size) gives it the same samples up to floating-point differences between batch shapes:
        rare in float32, frequent in bfloat16. A stage that resumes should therefore call this
        per fixed chunk of work, so a regenerated chunk is batched exactly as before.
        ``progress`` is called after each batch (or request) with the number of sequences
        finished and the number of new tokens in it.
        """

    def usage(self) -> dict[str, float]:
        """What this backend has consumed so far, for the run's log: empty where nothing is metered.

        API backends give ``requests``, ``prompt_tokens``, ``completion_tokens`` (exact, from the
        server's ``usage``), ``cost_usd`` and a few bookkeeping counts; the numbers are cumulative
        over the backend's life and stay readable after :meth:`close`.
        """
        return {}

    def close(self) -> None:  # noqa: B027  (optional hook: most backends hold nothing to release)
        """Release the engine's resources (threads, memory, connections)."""

    def __enter__(self) -> GenerationBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def sample_seed(seed: int, prompt: str, index: int) -> int:
    """Seed of sample ``index`` of ``prompt`` in a run seeded with ``seed`` (:func:`~lettingo.seeding.derive_seed`).

    Every backend seeds sample ``index`` of ``prompt`` with it, so the seed is one contract for all of them.
    """
    return derive_seed(seed, index, prompt)


def validate_request(n: int, temperature: float, max_new_tokens: int) -> None:
    """Raise ``ValueError`` for sampling arguments no backend can honour."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
