"""Method labels and their tracker-key slugs."""

from __future__ import annotations

import pytest

from lettingo.evaluation.methods import NO_PROFILE, method_key, no_profile_label


@pytest.mark.parametrize(
    ("label", "key"),
    [
        ("10H (no profile)", "10h_no_profile"),
        ("palr (smollm2_135m)", "palr_smollm2_135m"),
        ("smollm2_135m 10H + raw 30H", "smollm2_135m_10h_raw_30h"),
        ("no DPO", "no_dpo"),
        ("DPO", "dpo"),
        ("majority class", "majority_class"),
        ("  Σ weird--name__ ", "weird_name"),
    ],
)
def test_method_key_is_a_clean_slug(label: str, key: str) -> None:
    assert method_key(label) == key


def test_no_profile_label_follows_k() -> None:
    assert NO_PROFILE == no_profile_label() == "10H (no profile)"
    assert no_profile_label(5) == "5H (no profile)"


def test_label_without_letters_is_refused() -> None:
    with pytest.raises(ValueError, match="tracker key"):
        method_key("(+)")
