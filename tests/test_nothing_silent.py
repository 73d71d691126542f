"""Command lines that used to do the wrong thing quietly now do the right thing or fail in one line (issue 22).

A sweep without `stage=` ran only the data stage; `debug=tiny` wrote into the experiment's own folder and
repointed its `latest`; a mistyped `run_dir=` started an empty run there; a bare `lettingo` touched the latest
run; report scripts read debug runs and did not say which runs they read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lettingo import CONFIG_DIR, cli
from lettingo.loop_report import main as loop_report_main
from lettingo.reports import local_runs, write_report
from tests.test_reports import load_script, make_run


def hydra_cfg(overrides: list[str]):
    """The composed config with its `hydra` node (run and sweep folders)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def test_stage_defaults_to_the_whole_pipeline_so_a_sweep_without_stage_runs_every_stage() -> None:
    cfg = hydra_cfg(["sweep=history_length"])
    assert cfg.stage == "pipeline" and cfg.stop_after is None


def test_debug_runs_go_under_outputs_debug_and_leave_the_experiments_latest_alone(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    real = root / "quickstart" / "2020-01-01_00-00-00"
    real.mkdir(parents=True)
    (root / "quickstart" / "latest").symlink_to(real)
    base = [f"paths.output_root={root}", "experiment=quickstart"]
    debug = hydra_cfg([*base, "debug=tiny"])
    assert debug.debug_setup == "tiny"
    assert debug.paths.experiment_dir == str(root / "debug" / "quickstart")
    assert debug.hydra.run.dir.startswith(str(root / "debug" / "quickstart") + "/")
    assert debug.hydra.sweep.dir.startswith(str(root / "debug" / "quickstart" / "multirun") + "/")
    # A debug single stage continues the debug runs' latest, never the experiment's own.
    assert hydra_cfg([*base, "debug=tiny", "stage=test"]).hydra.run.dir != str(real)
    assert hydra_cfg([*base, "stage=test"]).hydra.run.dir == str(real)
    assert hydra_cfg(base).debug_setup is None


def test_a_run_dir_that_does_not_exist_is_refused_for_a_continuing_stage(tmp_path: Path, capsys) -> None:
    root = tmp_path / "outputs"
    for name in ("2020-01-01_00-00-00", "2020-01-02_00-00-00", "multirun"):
        (root / "quickstart" / name).mkdir(parents=True)
    typo = root / "quickstart" / "2020-01-03_00-00-00"
    argv = [f"paths.output_root={root}", "experiment=quickstart", "stage=test", f"run_dir={typo}"]
    with pytest.raises(SystemExit) as stopped:
        cli.check_command_line(argv)
    assert stopped.value.code == 1
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and f"run_dir={typo} does not exist" in line
    assert "2020-01-01_00-00-00, 2020-01-02_00-00-00" in line and "multirun" not in line
    assert not typo.exists()
    # The stages that start a run may name a new folder.
    for stage in ("pipeline", "data"):
        cli.check_command_line([f"paths.output_root={root}", f"stage={stage}", f"run_dir={typo}"])


def test_a_bare_lettingo_prints_the_usage_and_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lettingo"])
    cli.main()
    printed = capsys.readouterr().out
    assert printed.startswith("lettingo ") and "Nothing was run" in printed and "experiments (experiment=)" in printed
    assert list(tmp_path.iterdir()) == []


def mark_debug(folder: Path) -> None:
    """Record ``folder``'s run as a `debug=tiny` run, as its run_config.json would."""
    path = folder / "run_config.json"
    record = json.loads(path.read_text())
    record["config"]["debug_setup"] = "tiny"
    path.write_text(json.dumps(record))


def test_reports_skip_debug_runs_unless_asked_and_name_the_runs_they_read(tmp_path: Path) -> None:
    make_run(tmp_path / "runs" / "real", "ml100k", 30, {"no DPO": 10, "DPO": 12})
    make_run(tmp_path / "runs" / "tiny", "ml100k", 30, {"no DPO": 3, "DPO": 4})
    mark_debug(tmp_path / "runs" / "tiny")
    assert [Path(r.source).name for r in local_runs([tmp_path / "runs"])] == ["real"]
    assert {Path(r.source).name for r in local_runs([tmp_path / "runs"], include_debug=True)} == {"real", "tiny"}
    markdown = load_script("table2").build(local_runs([tmp_path / "runs"]), tmp_path / "out")["markdown"].read_text()
    assert f"Runs read: `{tmp_path / 'runs' / 'real'}`" in markdown and "tiny" not in markdown


def test_write_report_without_runs_names_none(tmp_path: Path) -> None:
    make_run(tmp_path / "r", "ml100k", 30, {"DPO": 3})
    records = local_runs([tmp_path / "r"])
    markdown = write_report("x", records[0].intervals(), tmp_path / "out")["markdown"].read_text()
    assert "Runs read" not in markdown


def test_single_run_scripts_refuse_a_debug_run(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "run"
    make_run(folder, "ml100k", 30, {"no DPO": 3})
    mark_debug(folder)
    for script in (lambda argv: load_script("ml1m_cpu").main(argv),
                   lambda argv: loop_report_main(load_script("positive_control").E0, "", argv)):
        with pytest.raises(SystemExit):
            script([str(folder), "--out", str(tmp_path / "out")])
        assert "is a debug run (debug=tiny)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_show_prints_and_keeps_the_text_in_the_log_file_as_printed(tmp_path: Path, capsys) -> None:
    import logging

    from lettingo.runtime import show

    handler = logging.FileHandler(tmp_path / "cli.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        show("## Table 3\n\n| method | accuracy |")
        logging.getLogger("lettingo").warning("a log line")
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert capsys.readouterr().out == "## Table 3\n\n| method | accuracy |\n"
    lines = (tmp_path / "cli.log").read_text().splitlines()
    assert lines[:3] == ["## Table 3", "", "| method | accuracy |"]  # no time or level prefix on a table
    assert lines[3].startswith("[") and lines[3].endswith("[WARNING] - a log line")  # the handler's own format kept
