"""DVC stage `split`: seeded, stratified train/val/test split (`split.*` in params.yaml).

An official test set stays the test set; otherwise a fixed share is carved out. Writes
OUT/{train,val,test}_{x,y}.npy and OUT/split.json. With split.binarization: fixed the images are
binarized here, once, with the split seed.
"""

import sys

from _common import stage
from rnngen.stages import split

main = stage(__doc__, split.run, raw="download stage output folder", out="output folder")

if __name__ == "__main__":
    sys.exit(main())
