"""The stage entry points' one argument parser: ``--params`` and the paths dvc.yaml gives."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rnngen.config import load_params
from rnngen.errors import guard


def stage(doc: str | None, run: Callable[..., Any], **paths: str) -> Callable[[list[str] | None], int]:
    """A ``main(argv)`` that parses ``--params`` and one ``--<name>`` per path (a help text
    ending in "(optional)" makes it optional) and calls ``run(params, *paths)`` in that order,
    turning a user's error into a message and exit code 2 (:func:`rnngen.errors.guard`)."""

    def main(argv: list[str] | None = None) -> int:
        p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--params", type=Path, default=Path("params.yaml"),
                       help="parameters file (default: %(default)s)")
        for name, help_text in paths.items():
            p.add_argument(f"--{name.replace('_', '-')}", type=Path, required=not help_text.endswith("(optional)"),
                           help=help_text)
        args = vars(p.parse_args(argv))
        return guard(lambda: run(load_params(args["params"]), *(args[name] for name in paths)))

    return main
