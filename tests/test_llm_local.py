"""LocalBackend on tiny_random: ordering, batching, seeds, n samples, token counts, stopping, rendering."""

from __future__ import annotations

import pytest
import torch

from lettingo.llm.decoding import sample
from lettingo.llm.local import LocalBackend
from lettingo.llm.models import resolve_dtype

INSTRUCTIONS = [
    "The user rated Toy Story (1995) 5/5 and Fargo (1996) 2/5.",
    "Star Wars (1977) [Action|Sci-Fi]: 4/5",
    "Casablanca",
    "The user rated these movies, oldest first: Alien (1979) 1/5, Titanic (1997) 4/5, The Matrix (1999) 5/5.",
    "Pulp Fiction (1994) Crime Drama 3/5; Jurassic Park (1993) 4/5",
]


@pytest.fixture
def backend(tiny_backend: LocalBackend) -> LocalBackend:  # noqa: F811
    """The shared tiny backend, with its batch size and chat template restored after each test."""
    batch_size, template = tiny_backend.batch_size, tiny_backend.tokenizer.chat_template
    yield tiny_backend
    tiny_backend.batch_size, tiny_backend.tokenizer.chat_template = batch_size, template


def texts(result) -> list[list[str]]:
    return [[g.text for g in row] for row in result]


def test_outputs_line_up_with_their_prompts(backend: LocalBackend) -> None:
    prompts = [backend.render(i) for i in INSTRUCTIONS]
    together = backend.generate(prompts, temperature=0, max_new_tokens=8)
    alone = [backend.generate([p], temperature=0, max_new_tokens=8)[0] for p in prompts]
    assert texts(together) == texts(alone)
    assert [row[0].prompt_tokens for row in together] == [backend.count_tokens(p) for p in prompts]
    assert len({row[0].text for row in together}) == len(prompts)  # the prompts really lead to different texts


@pytest.mark.parametrize("batch_size", [1, 2, 3, 64])
def test_greedy_result_does_not_depend_on_batch_size(backend: LocalBackend, batch_size: int) -> None:
    prompts = [backend.render(i) for i in INSTRUCTIONS]
    backend.batch_size = 4
    reference = texts(backend.generate(prompts, temperature=0, max_new_tokens=8))
    backend.batch_size = batch_size
    assert texts(backend.generate(prompts, temperature=0, max_new_tokens=8)) == reference


def test_same_seed_same_texts_other_seed_other_texts(backend: LocalBackend) -> None:
    prompts = [backend.render(i) for i in INSTRUCTIONS]
    first = texts(backend.generate(prompts, n=2, seed=7, max_new_tokens=8))
    assert texts(backend.generate(prompts, n=2, seed=7, max_new_tokens=8)) == first
    other = texts(backend.generate(prompts, n=2, seed=8, max_new_tokens=8))
    assert all(a != b for row_a, row_b in zip(first, other, strict=True) for a, b in zip(row_a, row_b, strict=True))


def test_a_sample_does_not_depend_on_the_other_prompts_or_the_batch(backend: LocalBackend) -> None:
    # What makes a resumed run write what the uninterrupted one would have.
    prompts = [backend.render(i) for i in INSTRUCTIONS]
    full = texts(backend.generate(prompts, n=3, seed=1, max_new_tokens=8))
    backend.batch_size = 3
    subset = texts(backend.generate(prompts[3:0:-1], n=3, seed=1, max_new_tokens=8))
    assert subset == full[3:0:-1]


def test_n_samples_per_prompt_differ_and_token_counts_add_up(backend: LocalBackend) -> None:
    prompts = [backend.render(i) for i in INSTRUCTIONS[:3]]
    calls: list[tuple[int, int]] = []
    result = backend.generate(prompts, n=4, max_new_tokens=6, progress=lambda done, new: calls.append((done, new)))
    assert [len(row) for row in result] == [4, 4, 4]
    assert all(len({g.text for g in row}) == 4 for row in result)
    for prompt, row in zip(prompts, result, strict=True):
        assert all(g.prompt_tokens == backend.count_tokens(prompt) for g in row)
        assert all(1 <= g.completion_tokens <= 6 and g.seconds > 0 for g in row)
    assert sum(done for done, _ in calls) == 12
    assert sum(new for _, new in calls) == sum(g.completion_tokens for row in result for g in row)


def test_a_sequence_stops_at_a_stop_token_and_the_others_go_on(backend: LocalBackend) -> None:
    prompts = [backend.render(i) for i in INSTRUCTIONS[:3]]
    batch = backend._pad([backend.encode(p) for p in prompts])
    seeds = list(range(6))
    free = sample(backend.model, batch, 2, seeds, 1.0, 10, stop_ids=[])
    assert all(len(tokens) == 10 for tokens in free)
    # Stop row 0 at its 4th token, which must not have appeared before.
    position = next(k for k in range(1, 10) if free[0][k] not in free[0][:k])
    stopped = sample(backend.model, batch, 2, seeds, 1.0, 10, stop_ids=[free[0][position]])
    assert stopped[0] == free[0][:position]
    for free_row, stopped_row in zip(free, stopped, strict=True):
        cut = free_row.index(free[0][position]) if free[0][position] in free_row else 10
        assert stopped_row == free_row[:cut]


def test_special_tokens_are_stripped_from_texts(backend: LocalBackend) -> None:
    result = backend.generate([backend.render(INSTRUCTIONS[0])], n=8, max_new_tokens=16)
    specials = {backend.tokenizer.pad_token, backend.tokenizer.bos_token, backend.tokenizer.eos_token}
    assert not any(s in g.text for row in result for g in row for s in specials)


def test_render_with_a_chat_template(backend: LocalBackend) -> None:
    rendered = backend.render("Describe the user.")
    assert rendered.startswith("<s><|user|>\nDescribe the user.") and rendered.endswith("<|assistant|>\n")
    ids = backend.encode(rendered)
    bos = backend.tokenizer.bos_token_id
    assert ids[0] == bos and ids[1] != bos  # the template's BOS only, none added on top
    assert backend.count_tokens(rendered) == len(ids)


def test_render_without_a_chat_template_appends_the_lead_in(backend: LocalBackend) -> None:
    backend.tokenizer.chat_template = None
    backend.lead_in = "\n\nUser profile:\n"
    try:
        rendered = backend.render("Movies: Toy Story 5/5.")
        assert rendered == "Movies: Toy Story 5/5.\n\nUser profile:\n"
        ids = backend.encode(rendered)
        assert ids[0] == backend.tokenizer.bos_token_id  # a plain prompt gets the tokenizer's BOS
        assert backend.tokenizer.decode(ids, skip_special_tokens=True) == rendered
    finally:
        backend.lead_in = ""


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"temperature": -1.0}, {"max_new_tokens": 0}])
def test_bad_sampling_arguments_raise(backend: LocalBackend, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        backend.generate(["x"], **kwargs)


def test_bad_batch_size_raises(tiny_model_cache) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="batch_size"):
        LocalBackend("t", "tiny_random", tiny_model_cache, batch_size=0)


def test_auto_dtype_generates_in_the_fastest_dtype_deterministically(tiny_model_cache) -> None:  # noqa: F811
    auto = LocalBackend("t", "tiny_random", tiny_model_cache)
    assert auto.model.dtype == resolve_dtype("auto", torch.device("cpu")) and not auto.model.training
    assert auto.tokenizer.padding_side == "left" and auto.tokenizer.pad_token is not None
    prompts = [auto.render(i) for i in INSTRUCTIONS]
    assert texts(auto.generate(prompts, n=2, seed=5, max_new_tokens=8)) == texts(
        auto.generate(prompts, n=2, seed=5, max_new_tokens=8)
    )


def test_a_lora_adapter_is_merged_in(tiny_model_cache, tmp_path) -> None:  # noqa: F811
    from peft import LoraConfig, get_peft_model

    from lettingo.llm.models import load_causal_lm

    model, _ = load_causal_lm("tiny_random", tiny_model_cache)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero (a no-op adapter); make it change the model
                parameter.normal_(0.0, 2.0)
    peft_model.save_pretrained(tmp_path / "adapter")
    plain = LocalBackend("t", "tiny_random", tiny_model_cache, dtype="float32")
    tuned = LocalBackend("t", "tiny_random", tiny_model_cache, dtype="float32", adapter=tmp_path / "adapter")
    assert not any("lora" in name for name, _ in tuned.model.named_parameters())
    prompts = [plain.render(i) for i in INSTRUCTIONS]
    assert texts(tuned.generate(prompts, temperature=0, max_new_tokens=8)) != texts(
        plain.generate(prompts, temperature=0, max_new_tokens=8)
    )
