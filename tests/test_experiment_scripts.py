"""experiments/ml1m_cpu.py, experiments/reference_table.py and benchmarks/prompt_quality.py on a real tiny run folder.

The run folder is made once per module by ``python -m lettingo stage=pipeline debug=tiny`` (about
30 s on a CPU); the scripts run on it (or on copies with known predictions) as a user would.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lettingo.artifacts import ArtifactStore
from lettingo.evaluation.bootstrap import PairedDifference, paired_bootstrap
from lettingo.evaluation.comparison import Comparison, read_comparison
from lettingo.evaluation.methods import (
    DPO,
    MAJORITY,
    NO_DPO,
    NO_PROFILE,
    ORACLE_FACTS,
    SFT,
    SHUFFLED,
    SHUFFLED_ORACLE,
    TABULAR,
    TABULAR_ORACLE,
    no_profile_label,
)
from lettingo.reports import effect_verdict, excludes_zero, paired_difference, reversed_difference

ROOT = Path(__file__).resolve().parents[1]
MINUS = "\u2212"
SCRIPTS = ("ml1m_cpu", "reference_table")


def load_script(name: str, folder: str = "experiments"):
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / f"{name}.py"), *args], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def run_tiny(root: Path, model_cache: Path, *overrides: str) -> Path:
    """``python -m lettingo <overrides> run_dir=<root>/run`` as a user runs it (offline, models in ``model_cache``);
    the run folder."""
    run_dir = root / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LETTINGO_ROOT": str(root), "LETTINGO_MODEL_CACHE": str(model_cache)}
    done = subprocess.run([sys.executable, "-m", "lettingo", *overrides, f"run_dir={run_dir}"],
                          capture_output=True, text=True, env=env, cwd=root, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_cache: Path) -> Path:
    """A finished run folder of the whole tiny pipeline (every stage, every artifact the scripts read)."""
    run_dir = run_tiny(tmp_path_factory.mktemp("tiny_pipeline"), tiny_model_cache, "stage=pipeline", "debug=tiny")
    assert (run_dir / "results" / "comparison.json").is_file() and (run_dir / "baselines" / "comparison.json").is_file()
    return run_dir


def test_the_result_tables_are_in_the_run_log_as_printed(tiny_run: Path) -> None:
    log = (tiny_run / "cli.log").read_text(encoding="utf-8")
    comparison = read_comparison(tiny_run / "results" / "comparison.json")
    header = next(line for line in comparison.markdown("x").splitlines() if line.startswith("| method"))
    assert "\n" + header + "\n" in log  # a table line on its own, without a log prefix
    assert "\n## Table 3: alignment ablation\n" in log and "\nrun folder: " in log


def line_starting(markdown: str, start: str) -> str:
    found = [line for line in markdown.splitlines() if line.startswith(start)]
    assert len(found) == 1, (start, found)
    return found[0]


def row_named(markdown: str, name: str) -> str:
    """The one table row whose first cell is ``name``."""
    found = [line for line in markdown.splitlines() if line.startswith("|") and line.split("|")[1].strip() == name]
    assert len(found) == 1, (name, found)
    return found[0]


def section(markdown: str, heading: str) -> str:
    """The text of the ``## heading`` section."""
    return markdown.split(f"## {heading}")[1].split("\n## ")[0]


def points(value: float) -> str:
    return f"{100 * value:+.1f}"


# ----------------------------------------------------------------------------------------------- helpers
def known_comparison(n: int = 40, references: tuple[str, ...] = (DPO, NO_PROFILE, ORACLE_FACTS)) -> Comparison:
    """DPO right on 36 of 40 users, SFT on 35, no DPO on 10, no profile on 20, oracle facts on 30."""
    right = {DPO: 36, SFT: 35, NO_DPO: 10, NO_PROFILE: 20, ORACLE_FACTS: 30, SHUFFLED: 20, TABULAR: 25,
             TABULAR_ORACLE: 27}
    truth = ["like"] * n
    predictions = {m: ["like"] * k + ["dislike"] * (n - k) for m, k in right.items()}
    return Comparison.compute([f"u{i}" for i in range(n)], truth, predictions, references=references,
                              n_resamples=200, seed=3, meta={"split": "test"})


def test_paired_difference_stored_reversed_and_computed() -> None:
    stored = known_comparison()
    direct = stored.paired[DPO][NO_DPO]["accuracy"]  # no DPO minus DPO: -65 points
    assert paired_difference(stored, NO_DPO, DPO) == direct and direct.value == pytest.approx(-0.65)
    flipped = paired_difference(stored, DPO, NO_DPO)  # only the reverse is stored: negated, bounds swapped
    assert flipped == reversed_difference(direct)
    assert (flipped.value, flipped.low, flipped.high) == (-direct.value, -direct.high, -direct.low)
    assert flipped.low <= flipped.value <= flipped.high and flipped.p_value == direct.p_value
    # The reverse equals what the bootstrap gives for DPO minus no DPO on the same resamples.
    again = paired_bootstrap(stored.truth, stored.predictions[DPO], stored.predictions[NO_DPO], stored.labels,
                             n_resamples=200, seed=3)
    assert (flipped.value, flipped.low, flipped.high) == pytest.approx((again.value, again.low, again.high))
    # Nothing stored: computed from the predictions with the comparison's resamples and seed.
    bare = known_comparison(references=())
    assert bare.paired == {}
    assert paired_difference(bare, DPO, NO_PROFILE) == stored.paired[NO_PROFILE][DPO]["accuracy"]
    assert paired_difference(bare, TABULAR_ORACLE, TABULAR, "macro_f1").value == pytest.approx(
        stored.paired[DPO][TABULAR_ORACLE]["macro_f1"].value - stored.paired[DPO][TABULAR]["macro_f1"].value)
    assert str(reversed_difference(PairedDifference(0.0, 0.0, 0.0, 1.0, 4)).value) == "0.0"  # never -0.0
    with pytest.raises(ValueError, match="not in this comparison"):
        paired_difference(stored, DPO, "palr (x)")


def test_effect_verdict_needs_the_interval_to_exclude_zero() -> None:
    found = known_comparison()
    big, touching = found.paired[DPO][NO_DPO]["accuracy"], reversed_difference(found.paired[DPO][SFT]["accuracy"])
    assert excludes_zero(big) and effect_verdict(big) == "interval excludes zero"
    edge = PairedDifference(0.02, 0.0, 0.04, 0.05, 40)  # a bound at zero does not exclude it
    assert not excludes_zero(edge) and effect_verdict(edge) == "no effect shown (interval includes zero)"
    assert touching.low <= 0 <= touching.high and not excludes_zero(touching)


# ----------------------------------------------------------------------------------------------- ml1m_cpu
def test_ml1m_cpu_results_file_from_a_real_run(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = run_script("ml1m_cpu", str(tiny_run), "--out", str(out), "--remark", "explore was paused 10 s",
                      "--include-debug")
    # named by the run's K (the tiny run reads the paper's K = 10)
    assert sorted(p.name for p in out.iterdir()) == ["ml1m_cpu_k10.csv", "ml1m_cpu_k10.md", "ml1m_cpu_k10.png"]
    markdown = (out / "ml1m_cpu_k10.md").read_text(encoding="utf-8")
    assert markdown in done.stdout
    comparison = read_comparison(tiny_run / "results" / "comparison.json")
    for method in comparison.methods:  # every method, with its accuracy interval
        row = row_named(section(markdown, "Every method"), method)
        assert f"{100 * comparison.intervals[method]['accuracy'].value:.1f} [" in row
    assert "- command: `lettingo stage=pipeline debug=tiny run_dir=" in markdown
    record = json.loads((tiny_run / "run_config.json").read_text())
    commit = record.get("git_commit") or record["config"].get("git_commit") or "unknown"  # recorded by the runner
    assert f"- git commit: `{commit}`" in markdown
    assert commit != "unknown"
    invocation = line_starting(markdown, "  - ")  # the one invocation that made the tiny run
    assert f": stage pipeline at commit `{commit[:12]}" in invocation
    assert "`python -m lettingo stage=pipeline debug=tiny run_dir=" in invocation
    times = json.loads((tiny_run / "stage_times.json").read_text())
    assert set(times) == {"data", "explore", "rec_profiles", "train_rec", "evaluate", "align", "test"}
    for stage, seconds in times.items():
        assert row_named(section(markdown, "Wall time"), stage).split("|")[2].strip() == f"{seconds:.1f}"
    assert "|\n\nRemarks given with `--remark` by whoever ran this script" in section(markdown, "Wall time")
    assert "- explore was paused 10 s" in section(markdown, "Wall time")
    assert f"n = {len(comparison.users)} test users" in markdown
    assert "An effect is claimed only where its paired interval excludes zero." in markdown
    # The differences: DPO minus no DPO and minus SFT are stored reversed (vs DPO), the others as they are.
    expected = {
        f"DPO {MINUS} no DPO": 0.0 - comparison.paired[DPO][NO_DPO]["accuracy"].value,  # 0.0 -: no "-0.0"
        f"DPO {MINUS} SFT": 0.0 - comparison.paired[DPO][SFT]["accuracy"].value,
        f"oracle facts {MINUS} {NO_PROFILE}": comparison.paired[NO_PROFILE][ORACLE_FACTS]["accuracy"].value,
        f"DPO {MINUS} {NO_PROFILE}": comparison.paired[NO_PROFILE][DPO]["accuracy"].value,
    }
    for name, value in expected.items():
        line = line_starting(markdown, f"- {name}: ")
        assert line.startswith(f"- {name}: accuracy {points(value)} points [")
        assert line.count("interval excludes zero") + line.count("no effect shown (interval includes zero)") == 3
    assert "PAPER: MovieLens-10M (reported)" in markdown
    assert "OURS: MovieLens-100K, K = 10 (not in the paper)" in markdown
    sensitivity = json.loads((tiny_run / "sensitivity" / "data.json").read_text())
    shuffle_check = section(markdown, "f_Rec's profile sensitivity")
    for split, found in sensitivity.items():
        row = row_named(shuffle_check, f"generated, `{split}` users (every explored profile)")
        assert points(found["value"]) in row
    baselines = read_comparison(tiny_run / "baselines" / "comparison.json")
    oracle = baselines.predictions[ORACLE_FACTS]
    shuffled = baselines.predictions[SHUFFLED_ORACLE]
    truth = baselines.truth
    right = [sum(p == t for p, t in zip(rows, truth, strict=True)) for rows in (oracle, shuffled)]
    by_hand = (right[0] - right[1]) / len(truth)
    row = row_named(shuffle_check, "oracle facts, evaluate's held-out users")
    assert row.split("|")[2].strip().startswith(points(by_hand) + " [")
    assert "\nno rec_model record.\n" in shuffle_check  # debug=tiny's f_Rec is zero-shot: nothing trained
    summary = json.loads((tiny_run / "pairs" / "_meta.json").read_text())["summary"]
    assert f"**{summary['pairs']} pairs from {summary['users_with_pairs']} users**" in markdown
    dpo = json.loads((tiny_run / "adapter_dpo" / "_meta.json").read_text())
    assert f"- DPO trained on {dpo['pairs_train']} pairs from {dpo['users_train']} users" in markdown
    margin = dpo["val_history"][-1]["align/val/rewards/margins"]
    assert f"{margin:+.4f} at step" in markdown
    # Exploration efficiency: N = 2 and the full N = 3; the full N rebuilds the pairs artifact exactly.
    efficiency = section(markdown, "Exploration efficiency")
    assert row_named(efficiency, "N = 2") and row_named(efficiency, "N = 3")
    assert "(the same)." in markdown
    profiles = pd.read_parquet(next((tiny_run / "profiles" / "chunks").glob("*.parquet")))
    first_two = int(profiles.loc[profiles["sample_idx"] < 2, "completion_tokens"].sum())
    assert row_named(efficiency, "N = 2").split("|")[3].strip() == str(first_two)

    table = pd.read_csv(out / "ml1m_cpu_k10.csv")
    assert list(table.columns) == ["section", "row", "metric", "value", "low", "high", "p_value", "n"]
    assert {"method", "paired", "paper", "stage_seconds", "sensitivity", "pairs", "dpo_val", "efficiency_n",
            "efficiency_backbone", "baselines"} <= set(table["section"])
    row = table[(table.section == "paired") & (table.row == f"DPO {MINUS} no DPO") & (table.metric == "accuracy")]
    stored = comparison.paired[DPO][NO_DPO]["accuracy"]
    assert row[["value", "low", "high"]].iloc[0].tolist() == pytest.approx([-stored.value, -stored.high, -stored.low])
    assert len(table[(table.section == "method") & (table.metric == "accuracy")]) == len(comparison.methods)
    assert (out / "ml1m_cpu_k10.png").stat().st_size > 0


def test_ml1m_cpu_signs_and_verdicts_with_known_predictions(tiny_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    shutil.copytree(tiny_run, folder, ignore=shutil.ignore_patterns(".lock"))
    known = known_comparison()
    known.write(folder / "results", "comparison", "known")
    paths = load_script("ml1m_cpu").build(folder, tmp_path / "out", include_debug=True)
    markdown = paths["markdown"].read_text(encoding="utf-8")
    # DPO 36/40, SFT 35/40, no DPO 10/40, 10H 20/40, oracle facts 30/40.
    for name, value, verdict in ((f"DPO {MINUS} no DPO", "+65.0", "interval excludes zero"),
                                 (f"DPO {MINUS} SFT", "+2.5", "no effect shown (interval includes zero)"),
                                 (f"oracle facts {MINUS} {NO_PROFILE}", "+25.0", "interval excludes zero"),
                                 (f"DPO {MINUS} {NO_PROFILE}", "+40.0", "interval excludes zero")):
        line = line_starting(markdown, f"- {name}: ")
        assert line.startswith(f"- {name}: accuracy {value} points [") and f"]: {verdict};" in line, line
    stored = known.paired[DPO][NO_DPO]["accuracy"]
    row = row_named(markdown, f"DPO {MINUS} no DPO")
    assert f"{points(stored.value * -1)} [{points(-stored.high)}, {points(-stored.low)}]" in row
    assert "n = 40 test users" in markdown


def test_ml1m_cpu_refuses_an_unfinished_folder(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match="run_config.json is missing"):
        load_script("ml1m_cpu").build(tmp_path / "run", tmp_path / "out")


# ----------------------------------------------------------------------------------------------- reference table
def relabel_no_profile(path: Path, recent: int) -> None:
    """Rewrite a comparison JSON as if its run had read K = ``recent`` items (the no-profile row's label)."""
    old, new = NO_PROFILE, no_profile_label(recent)
    obj = json.loads(path.read_text())

    def rename(mapping: dict) -> dict:
        return {new if k == old else k: v for k, v in mapping.items()}

    for part in ("predictions", "probabilities", "methods", "details"):
        obj[part] = rename(obj.get(part, {}))
    obj["paired"] = {k: rename(v) for k, v in rename(obj["paired"]).items()}
    path.write_text(json.dumps(obj))


def copy_run(source: Path, target: Path, recent: int, history: int) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".lock"))
    record = json.loads((target / "run_config.json").read_text())
    record["config"]["history"] |= {"recent": recent, "length": history}
    (target / "run_config.json").write_text(json.dumps(record))
    if recent != 10:
        relabel_no_profile(target / "baselines" / "comparison.json", recent)
    return target


def test_reference_table_rows_per_k_and_h(tiny_run: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for recent, history in ((10, 30), (10, 50), (3, 30)):
        copy_run(tiny_run, sweep / f"k{recent}_h{history}", recent, history)
    # a fit's record as train_rec writes it
    trained = {"fingerprint": "0", "recommender": "cross_encoder", "trained": True, "epochs": 2, "steps": 200,
               "train_cases": 1600, "train_users": 400, "select_by": "loss", "val_score": 0.87230,
               "cut_share": 0.25}
    (sweep / "k3_h30" / "rec_model").mkdir()
    (sweep / "k3_h30" / "rec_model" / "_meta.json").write_text(json.dumps(trained))
    out = tmp_path / "results"
    run_script("reference_table", str(sweep), "--out", str(out), "--include-debug")
    assert sorted(p.name for p in out.iterdir()) == ["reference_table.csv", "reference_table.md",
                                                     "reference_table_ml100k_against_h.png",
                                                     "reference_table_ml100k_against_k.png"]
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.iterdir())
    markdown = (out / "reference_table.md").read_text(encoding="utf-8")
    accuracy, paired = markdown.split("## Paired differences")
    baselines = read_comparison(tiny_run / "baselines" / "comparison.json")
    oracle = baselines.paired[NO_PROFILE][ORACLE_FACTS]["accuracy"]  # stored by the evaluate stage
    tabular = paired_bootstrap(baselines.truth, baselines.predictions[TABULAR_ORACLE], baselines.predictions[TABULAR],
                               baselines.labels, n_resamples=baselines.meta["n_resamples"],
                               seed=baselines.meta["seed"])  # not stored: computed the same way
    for recent, history in ((3, 30), (10, 30), (10, 50)):
        row = line_starting(accuracy, f"| ml100k  | {recent:>3} | {history:>3} |")
        no_profile = baselines.intervals[NO_PROFILE]["accuracy"]
        assert row.split("|")[5].strip() == (f"{100 * no_profile.value:.1f} [{100 * no_profile.low:.1f}, "
                                             f"{100 * no_profile.high:.1f}]")
        majority = baselines.intervals[MAJORITY]["accuracy"]
        assert row.split("|")[10].strip() == f"{100 * majority.value:.1f} [{100 * majority.low:.1f}, " \
                                             f"{100 * majority.high:.1f}]"
        cells = [c.strip() for c in line_starting(paired, f"| ml100k  | {recent:>3} | {history:>3} |").split("|")]
        assert cells[5].startswith(f"{points(oracle.value)} [{points(oracle.low)}, {points(oracle.high)}]")
        assert cells[7].startswith(f"{points(tabular.value)} [{points(tabular.low)}, {points(tabular.high)}]")
        assert cells[6] == effect_verdict(oracle) and cells[8] == effect_verdict(tabular)
    for recent, history in ((10, 30), (10, 50)):  # the tiny run's zero-shot f_Rec has no rec_model
        assert f"- K = {recent}, H = {history}: `{(sweep / f'k{recent}_h{history}').resolve()}` " \
               "(no rec_model record)" in markdown
    assert f"- K = 3, H = 30: `{(sweep / 'k3_h30').resolve()}` (f_Rec trained 2 epochs, 200 steps on 1600 cases " \
           "of 400 users, checkpoint by validation loss 0.872, 25% of its pairs cut to fit)" in markdown
    table = pd.read_csv(out / "reference_table.csv")
    assert list(zip(table["K"], table["H"], strict=True)) == [(3, 30), (10, 30), (10, 50)]
    assert table["rec_model_steps"].fillna(0).tolist() == [200, 0, 0]
    assert table["tabular_oracle_facts_minus_tabular_accuracy_value"].tolist() == pytest.approx([tabular.value] * 3)
    assert table["oracle_facts_minus_no_profile_accuracy_low"].tolist() == pytest.approx([oracle.low] * 3)


def test_reference_table_keeps_what_it_reads_so_a_later_checkout_can_fill_the_grid(
        tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = load_script("reference_table")
    first, kept = tmp_path / "first_sweep", tmp_path / "results" / "reference_runs"
    copy_run(tiny_run, first / "k10_h30", 10, 30)
    copy_run(tiny_run, first / "k3_h30", 3, 30)
    script.build([first], tmp_path / "results", kept=kept, include_debug=True)
    copy = kept / "ml100k_k3_h30"
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == \
        ["baselines/comparison.json", "kept_from.json", "run_config.json"]  # no checkpoint, no profiles
    assert (copy / "baselines" / "comparison.json").read_bytes() == \
        (first / "k3_h30" / "baselines" / "comparison.json").read_bytes()
    shutil.rmtree(first)  # a new checkout: outputs/ is gone, the kept copies were committed
    second = tmp_path / "second_sweep"
    copy_run(tiny_run, second / "k1_h50", 1, 50)
    rerun = copy_run(tiny_run, second / "k3_h30", 3, 30)  # the same cell run again: newer, so it wins
    os.utime(rerun / "baselines" / "comparison.json")
    script.build([kept, second], tmp_path / "results", kept=kept, include_debug=True)
    table = pd.read_csv(tmp_path / "results" / "reference_table.csv")
    assert list(zip(table["K"], table["H"], strict=True)) == [(1, 50), (3, 30), (10, 30)]
    assert table["kept_from"].tolist() == [str((second / "k1_h50").resolve()), str(rerun.resolve()),
                                           str((first / "k10_h30").resolve())]
    assert sorted(p.name for p in kept.iterdir()) == ["ml100k_k10_h30", "ml100k_k1_h50", "ml100k_k3_h30"]
    markdown = (tmp_path / "results" / "reference_table.md").read_text(encoding="utf-8")
    assert f"- K = 10, H = 30: `{(kept / 'ml100k_k10_h30').resolve()}` (kept from " \
           f"`{(first / 'k10_h30').resolve()}`; no rec_model record)" in markdown
    monkeypatch.chdir(tmp_path)  # run from the checkout: the committed table names folders relative to it
    script.build([kept], "results", include_debug=True)
    markdown = (tmp_path / "results" / "reference_table.md").read_text(encoding="utf-8")
    assert "- K = 10, H = 30: `results/reference_runs/ml100k_k10_h30` (kept from `first_sweep/k10_h30`; " \
           "no rec_model record)" in markdown
    assert str(tmp_path) not in markdown
    table = pd.read_csv(tmp_path / "results" / "reference_table.csv")
    assert table["folder"].tolist() == [f"results/reference_runs/ml100k_k{k}_h{h}" for k, h in [(1, 50), (3, 30),
                                                                                                   (10, 30)]]


def test_reference_table_refuses_no_runs(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing to tabulate"):
        load_script("reference_table").build([tmp_path], tmp_path / "out")
    copy_run(tiny_run, tmp_path / "sweep" / "k10_h30", 10, 30)  # a debug=tiny run: read only when asked
    with pytest.raises(ValueError, match="nothing to tabulate"):
        load_script("reference_table").build([tmp_path / "sweep"], tmp_path / "out")
    assert load_script("reference_table").build([tmp_path / "sweep"], tmp_path / "out", include_debug=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_script("reference_table").build([tmp_path / "nowhere"], tmp_path / "out")


def test_scripts_import_no_training_stack() -> None:
    loads = "".join(
        f"s = importlib.util.spec_from_file_location({name!r}, {str(ROOT / 'experiments' / f'{name}.py')!r}); "
        "s.loader.exec_module(importlib.util.module_from_spec(s))\n" for name in SCRIPTS)
    stack = {"torch", "peft", "lightning", "pytorch_lightning", "lightning_fabric", "transformers", "trl"}
    code = ("import importlib.util, sys\n" + loads
            + f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {stack!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------- prompt quality
def test_prompt_quality_compares_the_shortened_and_full_prompts_on_the_same_users(tiny_run: Path,
                                                                                tmp_path: Path) -> None:
    folder = tmp_path / "run"
    shutil.copytree(tiny_run, folder, ignore=shutil.ignore_patterns(".lock"))
    record = json.loads((folder / "run_config.json").read_text())
    record["config"]["prompt"] |= {"listed_items": 2, "item_attributes": False}  # a shortened prompt
    (folder / "run_config.json").write_text(json.dumps(record))
    script = load_script("prompt_quality", "benchmarks")
    paths = script.build(folder, tmp_path / "out", n_users=3)
    history = record["config"]["history"]["length"]
    own = f"run's prompt (newest 2 of {history} items, without attributes)"
    work = ArtifactStore(folder / "prompt_quality")
    generated = {name: work.read_table(name).sort_values("user_id", ignore_index=True)
                 for name in ("profiles_lettingo", "profiles_lettingo_full")}
    short, full = generated["profiles_lettingo"], generated["profiles_lettingo_full"]
    assert len(short) == len(full) == 3 and list(short["user_id"]) == list(full["user_id"])
    assert (full["prompt_tokens"] > short["prompt_tokens"]).all()  # every item, with its genres
    def listed(prompt: str) -> int:
        return len(re.findall(r"^\d+\. ", prompt, flags=re.MULTILINE))

    assert [listed(p) for p in full["prompt"]] == [history] * 3 and [listed(p) for p in short["prompt"]] == [2] * 3
    table = pd.read_csv(paths["csv"])
    methods = set(table.loc[table["section"] == "methods", "row"])
    assert methods == {own, script.FULL, NO_PROFILE, ORACLE_FACTS}
    assert set(table.loc[table["section"] == "methods", "n"]) == {3}
    paired = table[(table["section"] == "paired") & (table["metric"] == "accuracy")]
    predictions = work.read_table("predictions")
    correct = predictions.groupby("method")["correct"].mean()
    assert paired["value"].item() == pytest.approx(correct[script.FULL] - correct[own])
    texts = table[table["section"] == "texts"]
    assert set(texts["row"]) == {own, script.FULL}
    tokens = texts[(texts["row"] == own) & (texts["metric"] == "prompt tokens")]["value"].item()
    assert tokens == pytest.approx(short["prompt_tokens"].mean())
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert f"## Paired difference, {script.FULL} {MINUS} {own}" in markdown
    # Resumable: a second build generates and scores nothing new and writes the same numbers.
    again = script.build(folder, tmp_path / "again", n_users=3)
    assert pd.read_csv(again["csv"]).equals(table)


def test_text_facts_count_the_users_own_genres_and_mean() -> None:
    script = load_script("prompt_quality", "benchmarks")
    items = [{"item_id": f"i{k}", "rating": r, "label": "like" if r >= 4 else "dislike" if r <= 2 else "neutral",
              "attributes": [g]} for k, (r, g) in enumerate([(5, "Comedy"), (5, "Comedy"), (4, "Comedy"),
                                                            (1, "Horror"), (2, "Horror"), (1, "Horror")])]
    sample = {"user_id": "u1", "older": items}
    samples = pd.DataFrame([sample])
    facts_cfg = {"rating_stats": True, "genre_preferences": True, "attribute_label": "genres", "min_support": 3,
                 "top_k": 1}
    texts = pd.DataFrame({"user_id": ["u1"], "text": ["Loves comedy; rates 3.0 on average."]})
    stated = script.text_facts(samples, texts, 6, facts_cfg)
    assert stated == {"names a highest-rated genre": 1.0, "names a lowest-rated genre": 0.0,
                      "states the mean rating": 1.0}
