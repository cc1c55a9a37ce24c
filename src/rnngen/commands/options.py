"""What the command line accepts: argparse value types, and a subcommand with its shared options.

Nothing here imports torch or the library, so parsing the command line stays quick.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: rnngen.inpaint.MASKS, named here so that parsing the command line imports no torch
MASK_KINDS = ("bottom_half", "centre_square", "random_pixels")


def mask_arg(value: str) -> str:
    if value in MASK_KINDS or Path(value).is_file():
        return value
    raise argparse.ArgumentTypeError(
        f"unknown mask kind {value!r}: choose {', '.join(MASK_KINDS)}, or give a 28x28 grayscale PNG "
        "whose white pixels (>= 128) are the hidden ones"
    )


def png_out(value: str) -> Path:
    if not value.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"output {value!r} must be a .png file")
    return Path(value)


def positive(convert: Callable[[str], float], expected: str, zero: bool = False) -> Callable[[str], Any]:
    """An argparse ``type`` reading a finite number > 0 (>= 0 with ``zero``) with ``convert`` (int or float)."""

    def parse(value: str) -> Any:
        try:
            number = convert(value)
        except ValueError:
            number = math.nan
        if not (0 <= number if zero else 0 < number) or not number < math.inf:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")
        return number

    return parse


positive_int = positive(int, "a whole number >= 1")
positive_float = positive(float, "a number > 0")
non_negative_float = positive(float, "a number >= 0", zero=True)


def tolerance_arg(value: str) -> tuple[str, float]:
    metric, sep, number = value.partition("=")
    try:
        tolerance = float(number)
    except ValueError:
        tolerance = math.nan
    if not sep or not metric or not tolerance >= 0:
        raise argparse.ArgumentTypeError(f"expected METRIC=VALUE, VALUE >= 0, e.g. test_nll_elbo=1.0; got {value!r}")
    return metric, tolerance


def label_arg(value: str) -> int | str:
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a class number or 'all', got {value!r}") from None


def add_command(sub: Any, name: str, help_text: str, examples: str, handler: Callable[[argparse.Namespace], None],
                *, model: bool = False, params: bool = True) -> argparse.ArgumentParser:
    """A subcommand with its help, examples and handler, and the shared ``--params`` / ``--model``."""
    command = sub.add_parser(
        name, help=help_text, description=help_text, epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.set_defaults(func=handler)
    if params:
        command.add_argument("--params", type=Path, default=Path("params.yaml"),
                             help="where the defaults come from: tracking.model_name, promote.alias, evaluate.* "
                                  "(default: %(default)s; code defaults when it is absent)")
    if model:
        command.add_argument("--model", default=None,
                             help="models:/NAME@ALIAS, models:/NAME/VERSION, a version number, or a checkpoint "
                                  "path (.pt file or the train stage's models/ folder); default: "
                                  "models:/<tracking.model_name>@<promote.alias> from --params, i.e. "
                                  "models:/rnngen@champion")
    return command
