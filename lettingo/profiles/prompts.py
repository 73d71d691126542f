"""Profile prompts: a Jinja template from the `prompt` config filled with a user's older history.

Template fields: ``items`` (item texts, oldest first, from :func:`lettingo.data.item_text.item_text`),
``facts`` (ready-made sentences from :mod:`lettingo.profiles.user_facts`, empty when switched off),
``stats`` and ``preferences`` (the structured facts, or None), ``history_len`` (H) and ``request``
(the task line of the prompt config, so the fixed-format prompts share the lettingo template).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jinja2

from lettingo.data.item_text import item_text
from lettingo.data.samples import older_history, plain_item
from lettingo.profiles.user_facts import user_facts


@lru_cache(maxsize=32)
def _template(source: str) -> jinja2.Template:
    """Compile a template once; an unknown field is an error, not an empty string."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, autoescape=False)
    return env.from_string(source)


def history_items(sample: Mapping[str, Any], history_len: int) -> list[dict[str, Any]]:
    """The last ``history_len`` older items of ``sample`` as plain dicts with list attributes.

    Samples read back from Parquet hold NumPy arrays where lists were written.
    """
    return [plain_item(item) for item in older_history(sample, history_len)]


def listed_texts(
    sample: Mapping[str, Any], prompt_cfg: Mapping[str, Any], history_len: int, item_text_cfg: Mapping[str, Any]
) -> list[str]:
    """The item lines the prompt lists, oldest first: the newest ``prompt_cfg.listed_items`` of the H older items.

    ``listed_items`` null lists all H; the facts are computed over all H either way. With
    ``item_attributes`` false a line leaves out the item's attributes (a shorter prompt).
    """
    items = history_items(sample, history_len)
    listed = prompt_cfg.get("listed_items")
    if listed is not None:
        if int(listed) < 0:
            raise ValueError(f"prompt {prompt_cfg.get('name')!r}: listed_items must be null or >= 0, got {listed}")
        items = items[len(items) - min(int(listed), len(items)):]
    attributes = bool(prompt_cfg.get("item_attributes", True))
    return [
        item_text(item, max_chars=int(item_text_cfg["max_chars"]), review_chars=int(item_text_cfg["review_chars"]),
                  with_attributes=attributes)
        for item in items
    ]


def build_instruction(
    sample: Mapping[str, Any],
    prompt_cfg: Mapping[str, Any],
    history_len: int,
    item_text_cfg: Mapping[str, Any],
) -> str:
    """The instruction asking for ``sample``'s profile: ``prompt_cfg.template`` over its last H older items.

    ``prompt_cfg`` holds ``template``, ``request`` and ``facts`` (see conf/prompt/); ``item_text_cfg`` holds
    ``max_chars`` and ``review_chars`` (the dataset's ``item_text``). The result is the user turn
    a backend's ``render`` wraps in its chat template or completion lead-in.
    """
    texts = listed_texts(sample, prompt_cfg, history_len, item_text_cfg)
    fields = user_facts(history_items(sample, history_len), prompt_cfg["facts"])
    try:
        template = _template(str(prompt_cfg["template"]))
        request = str(prompt_cfg["request"])
        return template.render(items=texts, history_len=history_len, request=request, **fields).strip()
    except jinja2.TemplateError as error:
        raise ValueError(f"prompt {prompt_cfg.get('name')!r}: template does not render: {error}") from error
