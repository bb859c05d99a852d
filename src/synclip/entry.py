"""What every entry point (the CLI, DVC stages) does around its work: logging and the error contract."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rich.text import Text

from synclip.errors import UserError
from synclip.log import console


def run(main: Callable[[], object]) -> None:
    """Call `main`; a UserError becomes one line on stderr and exit code 2 (no traceback)."""
    try:
        main()
    except UserError as error:
        console.print(Text.assemble(("error: ", "bold red"), str(error)), soft_wrap=True)
        sys.exit(2)
