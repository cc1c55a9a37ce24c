"""DVC stage `evaluate`: test-set NLL bounds (ELBO, IWAE with `evaluate.k` samples) and
bits/dim, Fréchet classifier distance and classifier scores of samples, inpainting scores
(bottom half, centre square, random pixels); samples, reconstructions, inpainting panels, the
image being generated over time (DRAW's canvas, PixelRNN's rows) and, for latent models, a latent
walk. The evaluation is an MLflow run nested under the training run, which gets its metrics.

Writes METRICS (JSON, for `dvc metrics`) and PLOTS/*.png|gif (for `dvc plots`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parser
from rnngen.config import load_params
from rnngen.errors import guard
from rnngen.stages import evaluate


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--model", type=Path, required=True, help="train stage output folder")
    p.add_argument("--split", type=Path, required=True, help="split stage output folder")
    p.add_argument("--classifier", type=Path, required=True, help="classifier stage output folder")
    p.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    p.add_argument("--plots", type=Path, required=True, help="folder for the pictures")
    args = p.parse_args(argv)
    return guard(lambda: evaluate.run(
        load_params(args.params), args.model, args.split, args.classifier, args.metrics, args.plots
    ))


if __name__ == "__main__":
    sys.exit(main())
