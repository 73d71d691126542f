"""The `lettingo` console script: `lettingo stage=<stage> [group=option ...] [key=value ...]`.

The config is composed and checked first (:func:`check_command_line`, which imports no training stack),
so a bad value fails in about a second with one line and no run folder. A later failure prints one line
too (what failed and where the full traceback went); `HYDRA_FULL_ERROR=1` prints the traceback itself.
Every failure of a run also goes to the run folder's log.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, InstantiationException
from omegaconf import DictConfig

from lettingo import CONFIG_DIR, __version__
from lettingo.run_folders import check_continued_folder, register_resolvers
from lettingo.schemas import ConfigError, compose_with_methods, validate_config

register_resolvers()

log = logging.getLogger("lettingo")


def log_file() -> str | None:
    """The file the run's log goes to (Hydra's file handler), if any."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


def one_line(error: BaseException) -> str:
    """An error as one line: its type (unless lettingo raised it, or a plain ValueError/RuntimeError) and first line.

    Hydra wraps an error raised while building an object (a backbone, an f_Rec) in InstantiationException;
    the line is the wrapped error's.
    """
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    # Our own errors (a config value, a rank, a file) say what they are; a foreign one is named by its type.
    plain = type(error) in (ValueError, RuntimeError) or type(error).__module__.startswith("lettingo.")
    return text if plain else f"{type(error).__name__}: {text}"


class Terminated(SystemExit):
    """SIGTERM arrived: the process exits with status 128 + 15 once the running stage has unwound."""


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """While inside, SIGTERM (a kill, a cluster's preemption) raises :class:`Terminated` in the main thread.

    Python's default ends the process at once; as an exception it unwinds the stage, so the stage's time
    is recorded and the tracker closed like any other failure (the finished chunks were kept anyway).
    Off the main thread, where handlers cannot be set, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: Any) -> None:
        raise Terminated(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


#: Flags that show something other than this project's config (or compose another one): nothing to check.
UNCHECKED_FLAGS = frozenset({"--help", "-h", "--hydra-help", "--version", "--shell-completion", "-sc", "--info", "-i",
                             "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                             "--experimental-rerun"})


def sweep_values(override: Override) -> list[str] | None:
    """The values a swept override takes, None when only the sweeper can list them (``glob``)."""
    try:
        return list(override.sweep_string_iterator())
    except HydraException:
        return None


def job_overrides(overrides: list[str]) -> list[list[str]]:
    """The overrides of jobs that, between them, give every value of every swept key (``a=1,2 b=x,y,z``:
    three jobs, not six); a line without sweeps is its one job. A ``glob`` sweep is left to the jobs' own check."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = {i: sweep_values(o) for i, o in enumerate(parsed) if o.is_sweep_override()}
    jobs = max((len(values) for values in swept.values() if values), default=1)
    return [[f"{line.split('=', 1)[0]}={swept[i][min(job, len(swept[i]) - 1)]}" if swept.get(i) else line
             for i, line in enumerate(overrides) if i not in swept or swept[i]] for job in range(jobs)]


def check_command_line(argv: list[str]) -> list[str]:
    """Compose and check the config(s) a command line asks for; on an error print one line and exit 1.

    Runs before Hydra starts anything, so nothing is written (Hydra's own report of a composition error spans
    several lines, after it made the run folder) and before the training stack is imported. Returns the
    overrides that add the nodes of methods found by name (:func:`lettingo.schemas.method_node_overrides`).
    """
    if any(arg.split("=", 1)[0] in UNCHECKED_FLAGS for arg in argv):
        return []
    added: list[str] = []
    try:
        for job in job_overrides(get_args_parser().parse_args(argv).overrides):
            cfg, found = compose_with_methods(job, CONFIG_DIR)
            check_continued_folder(cfg.run_dir, cfg.stage, cfg.paths.experiment_dir)
            added += [line for line in found if line not in added]
    except (ValueError, HydraException) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(1)
    return added


#: The project's own usage, printed by `lettingo --help` before Hydra's help (the composed config, its groups).
USAGE = """\
lettingo {version}: LLM-written user profiles judged by a recommender (f_Rec), then aligned with DPO.

usage: lettingo [stage=<stage>] [experiment=<name>] [<group>=<option> ...] [<key>=<value> ...]
       lettingo -m <key>=<a>,<b> ...     a Hydra multirun sweep: one job per value

stages (stage=, default {stage}): {stages}
  pipeline runs them all in order; a single stage continues the experiment's latest run folder (run_dir=...).
experiments (experiment=): {experiments}
debug setups (debug=): {debugs}
sweeps (sweep=): {sweeps}
main groups: dataset, history, backbone, sampling, prompt, recommender, evaluate, pairs, align, test, trainer,
  logger (`lettingo --help` below lists every option of every group, then the composed config)

examples:
  lettingo experiment=quickstart                        the embedded default (what `make run` runs)
  lettingo stage=pipeline debug=tiny                    the whole loop on a tiny random model, in seconds
  lettingo experiment=positive_control                  E0: the loop on a reward whose answer is known
  lettingo stage=test experiment=quickstart run_dir=outputs/quickstart/<folder>
  lettingo -m experiment=quickstart sweep=history_length
"""


def group_options(group: str) -> str:
    """The options of config group ``group`` (its YAML files' names), comma-separated, wrapped under its heading."""
    names = ", ".join(sorted(path.stem for path in (Path(CONFIG_DIR) / group).glob("*.yaml")))
    return textwrap.fill(names, width=110, subsequent_indent="  ")


def usage() -> str:
    """The project's usage: stages, experiments and other setups found in the config tree, examples."""
    stages = ("data", "explore", "rec_profiles", "train_rec", "evaluate", "align", "test", "pipeline")
    default = (Path(CONFIG_DIR) / "config.yaml").read_text(encoding="utf-8").split("\nstage: ", 1)[1].split()[0]
    return USAGE.format(version=__version__, stage=default, stages=", ".join(stages),
                        experiments=group_options("experiment"), debugs=group_options("debug"),
                        sweeps=group_options("sweep"))


def main() -> None:
    """The console script: `--version` and the project's usage before Hydra's `--help`; else check the command
    line's config, then run it with Hydra."""
    argv = sys.argv[1:]
    if not argv:  # nothing asked for: the usage, and nothing run or moved
        print(usage() + "\nNothing was run: name an experiment or a stage (lettingo experiment=quickstart).")
        return
    if "--version" in argv:
        print(f"lettingo {__version__}")
        return
    if "--help" in argv or "-h" in argv:
        print(usage())
    sys.argv += check_command_line(argv)  # Hydra reads the command line from sys.argv
    run_job()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def run_job(cfg: DictConfig) -> None:
    """Run the stage(s) of one composed config (a multirun calls this once per job)."""
    try:
        validate_config(cfg)  # again for a sweep's jobs (the config's own sweeps were not on the command line)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    from lettingo.pipeline import run
    from lettingo.runtime import quiet_third_party_deprecations, route_lightning_logs

    quiet_third_party_deprecations()
    route_lightning_logs()
    try:
        with sigterm_as_exit():
            run(cfg)
    except Terminated:
        log.warning("SIGTERM: stopped; run the same command with run_dir=%s to continue", cfg.paths.run_dir)
        raise
    except Exception as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        target = log_file()
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.emit(log.makeRecord(log.name, logging.ERROR, __file__, 0, "stage failed", (),
                                            sys.exc_info()))
        where = f" (traceback in {target}; HYDRA_FULL_ERROR=1 prints it)" if target else ""
        print(f"error: {one_line(error)}{where}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
