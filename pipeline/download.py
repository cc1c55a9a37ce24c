"""DVC stage `download`: fetch or read the dataset named by `data.*` in params.yaml.

Writes OUT/{x,y}_{train,test}.npy (uint8 images, labels) and OUT/manifest.json (source, checksums,
counts). Sources: embedded (offline MNIST sample), download (official files or a mirror),
local (IDX .gz files, or your own images with data.dataset: custom).
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parser
from rnngen.config import load_params
from rnngen.errors import guard
from rnngen.stages import download


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    args = p.parse_args(argv)
    return guard(lambda: download.run(load_params(args.params), args.out))


if __name__ == "__main__":
    sys.exit(main())
