"""DVC stage `evaluate`: test-set NLL bounds (ELBO, IWAE with `evaluate.k` samples) and
bits/dim, Fréchet classifier distance and classifier scores of samples, inpainting scores
(bottom half, centre square, random pixels); samples, reconstructions, inpainting panels, the
image being generated over time (DRAW's canvas, PixelRNN's rows) and, for latent models, a latent
walk. The evaluation is an MLflow run nested under the training run, which gets its metrics.

Writes METRICS (JSON, for `dvc metrics`) and PLOTS/*.png|gif (for `dvc plots`).
"""

import sys

from _common import stage
from rnngen.stages import evaluate

main = stage(__doc__, evaluate.run, model="train stage output folder", split="split stage output folder",
             classifier="classifier stage output folder", metrics="metrics JSON to write",
             plots="folder for the pictures")

if __name__ == "__main__":
    sys.exit(main())
