"""DVC stage `classifier`: train the small CNN digit classifier (`classifier.*` in
params.yaml) on the training split. Evaluation uses its penultimate features for the Fréchet
classifier distance and its predictions to score samples and inpaintings.

Writes OUT/classifier.pt and OUT/metrics.json (validation and test accuracy).
"""

import sys

from _common import stage
from rnngen.stages import classifier

main = stage(__doc__, classifier.run, split="split stage output folder", out="output folder")

if __name__ == "__main__":
    sys.exit(main())
