"""E0, the positive control of the loop (`lettingo experiment=positive_control`): ONE finished run folder -> results.

The reward is a strict rule (`evaluate.reward=stated_mean`: does the profile state the user's mean rating?),
so the loop's answer is known: every aligned method must raise it on held-out users. Writes
`<out>/positive_control.md` and `.csv` (`lettingo.loop_report`): the run, stage times, the rule, the loop per
method and round, round 1's gate, the held-out rule reward of every generator with its paired difference against
the base, the shuffled guard and the degenerate share, one verdict per aligned method, and example profiles.

Run: python experiments/positive_control.py outputs/positive_control/latest [--out results] [--remark "..."]
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lettingo.loop_report import LoopExperiment, main, module_docstring

RULE_MODULE = "feedback/rule_reward.py"


def describe_rule(folder: Path, config: Mapping[str, Any]) -> str:
    """The rule in the words of its module's docstring (this checkout's code)."""
    return f"`evaluate.reward=stated_mean`, as `lettingo/{RULE_MODULE}` states it:\n\n{module_docstring(RULE_MODULE)}\n"


E0 = LoopExperiment(name="positive_control", title="E0, the positive control: the loop on the rule reward",
                    reward="stated_mean", describe_reward=describe_rule)

if __name__ == "__main__":
    main(E0, __doc__)
