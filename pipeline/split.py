"""DVC stage `split`: seeded, stratified train/val/test split (`split.*` in params.yaml).

An official test set stays the test set; otherwise a fixed share is carved out. Writes
OUT/{train,val,test}_{x,y}.npy and OUT/split.json. With split.binarization: fixed the images are
binarized here, once, with the split seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parser
from rnngen.config import load_params
from rnngen.errors import guard
from rnngen.stages import split


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--raw", type=Path, required=True, help="download stage output folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    args = p.parse_args(argv)
    return guard(lambda: split.run(load_params(args.params), args.raw, args.out))


if __name__ == "__main__":
    sys.exit(main())
