"""DVC stage `train`: train `model.name` with `train.*`, overridden by the tuner's choices.

Logs params, per-epoch metrics and the model to MLflow (one run per trained model) and
registers a model version. Saves the full training state every epoch to CHECKPOINT; a killed
run resumes from it on the next `dvc repro`.

With train.processes: N > 1 it starts itself under torchrun (N data-parallel processes on this
machine, `torchrun --standalone --nproc-per-node=N`); started by torchrun directly (WORLD_SIZE
set), it joins that job, e.g. `torchrun --nnodes=2 ... pipeline/train.py ...` across machines.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from _common import parser
from rnngen.config import load_params
from rnngen.errors import UserError, guard
from rnngen.stages import train


def processes(params_file: Path) -> int:
    """train.processes; 1 where it (or the file) is not valid: the stage reports that itself."""
    try:
        value = (load_params(params_file).get("train") or {}).get("processes", 1)
    except UserError:
        return 1
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--split", type=Path, required=True, help="split stage output folder")
    p.add_argument("--hparams", type=Path, help="tune stage output (best hyperparameters JSON)")
    p.add_argument("--out", type=Path, required=True, help="model output folder")
    p.add_argument("--checkpoint", type=Path, required=True, help="resumable training state file")
    p.add_argument("--history", type=Path, required=True, help="per-epoch curves CSV (dvc plots)")
    p.add_argument("--warm-start", type=Path,
                   help="tune stage output: the winning trial's training state, continued when it matches")
    args = p.parse_args(argv)
    n = processes(args.params)
    if n > 1 and "WORLD_SIZE" not in os.environ:  # not inside torchrun yet: become N processes
        os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  f"--nproc-per-node={n}", __file__, *(sys.argv[1:] if argv is None else argv)])
    return guard(lambda: train.run(
        load_params(args.params), args.split, args.hparams, args.out, args.checkpoint, args.history, args.warm_start
    ))


if __name__ == "__main__":
    sys.exit(main())
