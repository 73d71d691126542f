"""E1, the reader control of the loop (`lettingo experiment=reader_control`): ONE finished run folder -> results.

The judge is the reader f_Rec (`recommender=tabular_reader`): the tabular f_Rec plus the mean rating the profile
states, fitted on oracle-fact and empty profiles; the reward is its probability of the true label over M targets.
A real prediction reward whose dependence on the profile is known, so every aligned method must raise it on
held-out users. Writes `<out>/reader_control.md` and `.csv` (`lettingo.loop_report`): the run, stage times, the
reader, the loop per method and round with the stated-mean rule's rate beside the reward, round 1's gate, the
held-out reward of every generator with its paired difference against the base, the shuffled guard and the
degenerate share, one verdict per aligned method, the reader's comparisons (p_true, log-loss, accuracy, F1s on
the real target and on all M targets), and example profiles.

Run: python experiments/reader_control.py outputs/reader_control/latest [--out results] [--remark "..."]
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lettingo.artifacts import META_FILE, REC_MODEL
from lettingo.loop_report import LoopExperiment, main, module_docstring
from lettingo.reports import config_value, read_json

READER_MODULE = "recommender/reader.py"


def describe_reader(folder: Path, config: Mapping[str, Any]) -> str:
    """The reader f_Rec in its module's words (this checkout's code), how stage train_rec fitted it, and the
    reward read from it."""
    targets = config_value(config, "evaluate.targets_per_user")
    meta = read_json(folder / REC_MODEL / META_FILE) if (folder / REC_MODEL / META_FILE).is_file() else {}
    fitted = (f"Fitted by stage train_rec on {meta.get('train_cases')} cases of {meta.get('train_users')} users "
              f"(oracle-fact or empty profiles) in {float(meta.get('seconds', float('nan'))):.1f} s; chosen by "
              f"{meta.get('select_by')}: {float(meta.get('val_score', float('nan'))):.4f}, with "
              f"{meta.get('best_params')}.\n\n" if meta.get("trained") else "No fitted reader is recorded.\n\n")
    return (fitted + f"`recommender={config_value(config, 'recommender.name')}`, `evaluate.reward="
            f"{config_value(config, 'evaluate.reward')}` over M = {targets} targets per user: the reader's "
            f"probability of the true label, averaged over the user's M targets (each after the older history the "
            f"profile was written from). The reader, as `lettingo/{READER_MODULE}` states it:\n\n"
            f"{module_docstring(READER_MODULE)}\n")


E1 = LoopExperiment(name="reader_control", title="E1, the reader control: the loop judged by the reader f_Rec",
                    reward="p_true", describe_reward=describe_reader)

if __name__ == "__main__":
    main(E1, __doc__)
