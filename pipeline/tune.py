"""DVC stage `tune`: choose the hyperparameters `train` will use.

Writes OUT (JSON): {"params": {"train.lr": ..., ...}} as dotted overrides of params.yaml.
With tune.n_trials: 0 (or no tune section) it writes no overrides, so train uses
params.yaml's own values.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import parser
from rnngen.config import load_params
from rnngen.errors import guard
from rnngen.files import write_json


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--split", type=Path, required=True, help="split stage output folder")
    p.add_argument("--out", type=Path, required=True, help="best hyperparameters JSON to write")
    args = p.parse_args(argv)
    return guard(lambda: write_json(args.out, {"params": {}, "note": "no search: params.yaml values",
                                               "n_trials": (load_params(args.params).get("tune") or {}).get("n_trials", 0)}))


if __name__ == "__main__":
    sys.exit(main())
