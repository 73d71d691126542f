"""The README's extension recipes, done as a user does them: files added to a copy of the config tree and a module
of the user's own, then the real command path (compose, check, run the stages, the report scripts)."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_align_stage import ALIGN, TEST_USERS, hand_made_pairs, write_pairs
from test_reports import load_script

from lettingo import CONFIG_DIR
from lettingo.artifacts import adapter_artifact
from lettingo.pipeline import run
from lettingo.reports import local_runs
from lettingo.schemas import ConfigError, compose_with_methods

#: The recipe's method: IPO (Azar et al. 2023), a squared loss on DPO's log-ratio margin, as one module.
IPO_MODULE = '''
"""IPO: the log-ratio margin regressed onto 1 / (2 beta) instead of pushed through a sigmoid."""
import torch

from lettingo.align.dpo import DpoModule


class IpoModule(DpoModule):
    """DPO's data, reference and metrics with the IPO loss."""

    def preference_loss(self, policy: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean of (log-ratio margin - 1 / (2 beta))^2; the implicit rewards as DPO's."""
        ratios = policy - reference
        loss = ((ratios[:, 0] - ratios[:, 1] - 1 / (2 * self.beta)) ** 2).mean()
        return loss, (self.beta * ratios).detach()
'''

#: The recipe's YAML: DPO's settings with the module above (and TRL's name for the same loss).
IPO_YAML = """
# IPO (Azar et al. 2023) on the preference pairs.
defaults:
  - dpo
  - _self_

loss_type: [ipo]  # TRL's name for it (align.engine=trl trains it with TRL's DPOTrainer)
module:
  _target_: my_ipo.IpoModule  # the module of this method
"""


@pytest.fixture
def user_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the config tree with the recipe's YAML, and the recipe's module importable."""
    tree = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, tree)
    (tree / "align" / "method" / "ipo.yaml").write_text(textwrap.dedent(IPO_YAML))
    code = tmp_path / "code"
    code.mkdir()
    (code / "my_ipo.py").write_text(IPO_MODULE)
    monkeypatch.syspath_prepend(str(code))
    return tree


def test_a_new_alignment_method_is_one_yaml_and_one_module(user_tree: Path, tmp_path: Path,
                                                           tiny_model_cache: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = ["debug=tiny", f"paths.model_cache={tiny_model_cache}", f"paths.run_dir={run_dir}", *ALIGN,
                 *TEST_USERS, "align.methods=[dpo,ipo]"]
    # Found by its name alone: no line in align/default.yaml, no `+` override.
    cfg, added = compose_with_methods([*overrides, "stage=align"], str(user_tree))
    assert added == ["+align/method@align.method.ipo=ipo"]
    assert cfg.align.method.ipo.module._target_ == "my_ipo.IpoModule" and cfg.align.method.ipo.module.beta == 0.1
    write_pairs(cfg, hand_made_pairs(tiny_model_cache))
    summary = run(cfg)
    assert summary["ipo"]["steps"] == summary["dpo"]["steps"] == 2
    weights = {m: load_file(run_dir / adapter_artifact(m) / "adapter_model.safetensors") for m in ("dpo", "ipo")}
    lora_b = [name for name in weights["ipo"] if "lora_B" in name]
    assert lora_b and all(weights["ipo"][name].abs().sum() > 0 for name in lora_b)  # B starts at zero: trained
    assert any(not torch.equal(weights["ipo"][name], weights["dpo"][name]) for name in lora_b)  # its own loss
    run(compose_with_methods([*overrides, "stage=data"], str(user_tree))[0])
    run(compose_with_methods([*overrides, "stage=test"], str(user_tree))[0])
    # In every table: the test stage's comparison and Table 3 (rows from the run's align.methods).
    record = local_runs([run_dir], include_debug=True)[0]
    assert "IPO" in record.intervals() and "IPO" in record.alignment_rows()
    markdown = load_script("table3").build([record], tmp_path / "out")["markdown"].read_text()
    assert "| ml100k \\| IPO " in markdown


def test_a_method_name_without_a_yaml_is_refused_in_one_line(user_tree: Path) -> None:
    with pytest.raises(ConfigError, match="'orpo' has no align.method.orpo node"):
        compose_with_methods(["align.methods=[dpo,orpo]"], str(user_tree))
