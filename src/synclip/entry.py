"""What every entry point (the CLI, the DVC stages) does around its work: the error contract, and the
stages' shared prologue (paths from dvc.yaml, params, logging, the device)."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text

from synclip.config import load_params
from synclip.errors import UserError
from synclip.log import console, setup_logging


def run(main: Callable[[], object]) -> None:
    """Call `main`; a UserError becomes one line on stderr and exit code 2 (no traceback)."""
    try:
        main()
    except UserError as error:
        console.print(Text.assemble(("error: ", "bold red"), str(error)), soft_wrap=True)
        sys.exit(2)


@dataclass(frozen=True)
class Arg:
    """A stage argument: `--name` (underscores as dashes) of `type`, required unless `required` is False."""

    help: str
    type: type = Path
    required: bool = True
    choices: tuple | None = None


def stage(description: str, job: Callable[..., None], **arguments: str | Arg) -> None:
    """Run a DVC stage: parse `--<name>` for every argument (a str is a required path's help),
    `--params` and `--set key=value` overrides, load the params, set up logging and, when `job`
    takes one, the device; then call `job(**arguments, params=..., device=...)`. A UserError ends it
    with one line and exit code 2."""

    def main() -> None:
        parser = argparse.ArgumentParser(description=description)
        for name, spec in arguments.items():
            arg = spec if isinstance(spec, Arg) else Arg(spec)
            parser.add_argument(
                f"--{name.replace('_', '-')}",
                dest=name,
                type=arg.type,
                required=arg.required,
                choices=arg.choices,
                help=arg.help,
            )
        parser.add_argument("--params", type=Path, default=Path("params.yaml"))
        parser.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="Override a param for this run (dvc.yaml records it in the stage's cmd).",
        )
        args = vars(parser.parse_args())
        params = load_params(args.pop("params"), args.pop("overrides"))
        setup_logging(params.runtime.log_level)
        if "device" in inspect.signature(job).parameters:
            from synclip.runtime import configure

            args["device"] = configure(params.runtime)
        job(**args, params=params)

    run(main)
