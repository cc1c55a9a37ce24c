"""`rnngen`: use a trained model without writing code.

    rnngen sample    n new images as a PNG grid
    rnngen inpaint   complete the hidden part of images: original | masked | completed
    rnngen score     how likely each image is: its negative log-likelihood in nats (JSON)
    rnngen interpolate  walk a latent-variable model's latent space from one image to another
    rnngen evaluate  NLL bounds, Fréchet classifier distance, inpainting scores (test split or your images)
    rnngen promote   move the champion alias to the model dvc repro just made, if it wins
    rnngen info      which version is champion, and its metrics
    rnngen serve     the model over HTTP: score, sample, inpaint (mlflow models serve)
    rnngen demo      a web page to draw, repair, judge and walk between digits (Gradio)
    rnngen server    a team's tracking server and tuning database (PostgreSQL + mlflow server), with
                     passwords; add-user, passwd

A model is models:/NAME@ALIAS, models:/NAME/VERSION (or just the version number), or a
local checkpoint (models/model.pt, or the train stage's models/ folder). The MLflow store is
MLFLOW_TRACKING_URI or the project's mlflow.db. Errors a user can fix print "error: ..." and
exit with code 2, writing nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rnngen.commands.admin import add_info, add_promote, add_server
from rnngen.commands.demo import add_demo
from rnngen.commands.model_use import add_evaluate, add_inpaint, add_interpolate, add_sample, add_score
from rnngen.commands.options import MASK_KINDS
from rnngen.commands.serve import add_serve
from rnngen.commands.settings import Defaults, defaults
from rnngen.errors import guard

__all__ = ["MASK_KINDS", "Defaults", "build_parser", "defaults", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnngen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run `rnngen COMMAND --help` for a command's options and examples",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in (add_sample, add_inpaint, add_score, add_interpolate, add_evaluate, add_promote,
                        add_info, add_serve, add_server, add_demo):
        add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr readable
    return guard(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
