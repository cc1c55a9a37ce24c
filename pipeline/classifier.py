"""DVC stage `classifier`: train the small CNN digit classifier (`classifier.*` in
params.yaml) on the training split. Evaluation uses its penultimate features for the Fréchet
classifier distance and its predictions to score samples and inpaintings.

Writes OUT/classifier.pt and OUT/metrics.json (validation and test accuracy).
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parser
from rnngen.config import load_params
from rnngen.errors import guard
from rnngen.stages import classifier


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--split", type=Path, required=True, help="split stage output folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    args = p.parse_args(argv)
    return guard(lambda: classifier.run(load_params(args.params), args.split, args.out))


if __name__ == "__main__":
    sys.exit(main())
