"""DVC stage `train`: train `model.name` with `train.*`, overridden by the tuner's choices.

Logs params, per-epoch metrics and the model to MLflow (one run per trained model) and
registers a model version. Saves the full training state every epoch to CHECKPOINT; a killed
run resumes from it on the next `dvc repro`.

With train.processes: N > 1 it starts itself under torchrun (N data-parallel processes on this
machine, `torchrun --standalone --nproc-per-node=N`); started by torchrun directly (WORLD_SIZE
set), it joins that job, e.g. `torchrun --nnodes=2 ... pipeline/train.py ...` across machines.
"""

import os
import sys

from _common import stage
from rnngen.distributed import requested_processes
from rnngen.stages import train

main = stage(__doc__, train.run, split="split stage output folder",
             hparams="tune stage output (best hyperparameters JSON) (optional)", out="model output folder",
             checkpoint="resumable training state file", history="per-epoch curves CSV (dvc plots)",
             warm_start="tune stage output: the winning trial's training state, continued when it matches (optional)")

if __name__ == "__main__":
    n = requested_processes(sys.argv[1:])
    if n > 1 and "WORLD_SIZE" not in os.environ:  # not inside torchrun yet: become N processes
        os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  f"--nproc-per-node={n}", __file__, *sys.argv[1:]])
    sys.exit(main())
