"""Command line: `python -m pipeline.run [--preset NAME] [--config FILE ...] [--workdir DIR] [section.key=value ...]`.

    python -m pipeline.run --preset smoke train.epochs=5          # a preset, then overrides
    python -m pipeline.run --config my.toml --config more.toml    # TOML files ([train] then epochs = 3)
    python -m pipeline.run --config runs/<run_id>/config.json     # repeat a run (fully cached if unchanged)
    python -m pipeline.run --preset fashion --print-config > my.toml   # a file to start from; runs nothing

Settings apply in this order, each overriding the one before: the defaults, `--preset`, the
`--config` files in the order given, the command line's `section.key=value` overrides.
Stage selection: `--force [STAGE]`, `--only STAGE`, `--from STAGE`, `--until STAGE`.
Exit codes: 0 success, 2 a user's mistake (one line on stderr), 1 anything else, 141 stdout's reader
closed the pipe (`| head`).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import shlex
import signal
import sys
import types
from pathlib import Path
from typing import Any, Sequence

from components.errors import UserError, WorkerLost
from pipeline.config import PRESETS, describe_keys, fill_derived_defaults, resolve_settings, to_toml
from pipeline.quiet import quiet_tensorflow
from pipeline.registry import STAGE_NAMES as STAGES
from pipeline.selection import select_stages
from pipeline.workdir import check_workdir, create_workdir

PIPE_CLOSED = 141  # 128 + SIGPIPE: what a shell reports for a program stopped by a closed pipe (`yes | head -1`)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.run",
        description=f"Run the stages {', '.join(STAGES)} in order; reuse the cached ones.",
        epilog=help_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS),
                        help="named set of overrides (default: %(default)s)")
    parser.add_argument("--config", action="append", default=[], type=Path, metavar="FILE",
                        help="settings from a TOML file ([train] then epochs = 3) or a run's runs/<id>/config.json; "
                             "repeatable: a later file overrides an earlier one, the command line overrides them all")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as TOML, a file --config reads, and exit without running")
    parser.add_argument("--workdir", type=Path, default=Path("."),
                        help="holds runs/, cache/, saved_models/ (default: the current folder)")
    parser.add_argument("--force", nargs="?", const="all", choices=("all", *STAGES), metavar="STAGE",
                        help="rerun every stage (--force alone), or just STAGE (one of: %s), ignoring the "
                             "cache" % ", ".join(STAGES))
    selection = parser.add_mutually_exclusive_group()
    selection.add_argument("--only", choices=STAGES, help="run just STAGE (earlier stages must be cached)")
    selection.add_argument("--from", dest="first", choices=STAGES, help="rerun STAGE and every later one")
    parser.add_argument("--until", choices=STAGES, help="stop after STAGE")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own start-up logs")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.epochs=3")
    return parser.parse_args(_force_alone_means_all(sys.argv[1:] if argv is None else argv))


def _force_alone_means_all(argv: Sequence[str]) -> list[str]:
    """`--force` followed by an override or an option, or by nothing, gets `all` as its value.

    argparse gives an optional value whatever follows (`--force train.epochs=5` would be `--force` of
    a stage named `train.epochs=5`); this way that is `--force all train.epochs=5`. A word without
    `=` is left as the value, so that a misspelt stage is refused as one.
    """
    arguments = list(argv)
    end = arguments.index("--") if "--" in arguments else len(arguments)
    for index in reversed(range(end)):
        following = arguments[index + 1] if index + 1 < end else "-"
        if arguments[index] == "--force" and (following.startswith("-") or "=" in following):
            arguments.insert(index + 1, "all")
    return arguments


def help_epilog() -> str:
    """Every config key with its default and meaning, then each preset's overrides."""
    keys = describe_keys()
    width = max(len(f"{key}={default!r}") for key, default, _ in keys) + 2
    lines = ["settings apply in this order: the defaults, --preset, --config files in the order given, the "
             "command line's overrides",
             "config keys (section.key=value; the default, then what it means):"]
    lines += [f"  {f'{key}={default!r}':<{width}}{meaning}" for key, default, meaning in keys]
    lines.append("presets (--preset NAME applies these overrides, then the command line's):")
    for name, overrides in PRESETS.items():
        lines.append(f"  {name}: " + (" ".join(f"{key}={value!r}" for key, value in overrides.items()) or
                                       "(the defaults)"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    for name in ("pipeline", "components"):
        logging.getLogger(name).setLevel(logging.INFO)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        settings = resolve_settings(args.preset, args.overrides, args.config)
        if args.print_config:
            return print_output(to_toml(settings, header=config_file_header(argv)))
        config = fill_derived_defaults(settings)
        check_workdir(args.workdir)
        quiet_tensorflow(args.verbose)
        from pipeline.orchestrator import ModelNotBlessed, format_summary
        from pipeline.workers import execute_share

        stages = select_stages(args.force, args.only, args.first, args.until)
        create_workdir(args.workdir)
        # Quoted as a shell would need it: `train.profile_batches="(2, 4)"` stays one argument.
        command = "python -m pipeline.run " + shlex.join(argv if argv is not None else sys.argv[1:])
        manifest = execute_share(config, args.workdir, stages, command)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interruption:  # before ModelNotBlessed: it exists once the orchestrator is imported
        print(f"{str(interruption) or 'interrupted'}: rerun the same command to resume (finished stages and epochs "
              "are kept)", file=sys.stderr)
        return 143 if isinstance(interruption, Terminated) else 130
    except ModelNotBlessed as error:
        print(f"error: {error} (evaluate.fail_if_not_blessed=true)", file=sys.stderr)
        return 1
    except WorkerLost as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return print_output(format_summary(manifest))


def config_file_header(argv: list[str] | None) -> list[str]:
    """The comment at the top of `--print-config`'s file: what wrote it, and how to use it."""
    command = "python -m pipeline.run " + shlex.join(argv if argv is not None else sys.argv[1:])
    return [f"Written by: {command}",
            "Run it: python -m pipeline.run --config FILE [--config MORE.toml ...] [section.key=value ...]",
            "Later files and the command line override it. A file may keep only the keys it changes."]


def print_output(text: str) -> int:
    """Print a command's result on stdout; 0, or PIPE_CLOSED without a traceback if the reader has gone.

    Python ignores SIGPIPE, so writing to a pipe whose reader exited (`| head -1`) raises
    BrokenPipeError. As the Python docs' "Note on SIGPIPE" advises, stdout is then pointed at
    /dev/null, so the flush at exit does not fail a second time.
    """
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return PIPE_CLOSED
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a scheduler's stop), handled as Ctrl-C is: the run is recorded as stopped."""


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise Terminated("terminated (SIGTERM)")


class _CallableModule(types.ModuleType):
    """This module, callable: `from pipeline import run; run("smoke")` is `pipeline.api.run("smoke")`.

    Why: `pipeline.run` is two public names at once, the command line `python -m pipeline.run` (this
    module) and the API's function `run`, and both stay. A module is made callable by giving it a
    ModuleType subclass with `__call__`, which it does to itself here, when it is first imported.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run the pipeline and return its manifest: see `pipeline.api.run` for the arguments."""
        from pipeline.api import run

        return run(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:  # help() and inspect show pipeline.api.run's arguments
        from pipeline.api import run

        return inspect.signature(run)

    def __reduce__(self) -> tuple:  # pickled by name, so it can be sent to a process pool
        return importlib.import_module, (self.__name__,)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
