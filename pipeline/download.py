"""DVC stage `download`: fetch or read the dataset named by `data.*` in params.yaml.

Writes OUT/{x,y}_{train,test}.npy (uint8 images, labels) and OUT/manifest.json (source, checksums,
counts). Sources: embedded (offline MNIST sample), download (official files or a mirror),
local (IDX .gz files, or your own images with data.dataset: custom).
"""

import sys

from _common import stage
from rnngen.stages import download

main = stage(__doc__, download.run, out="output folder")

if __name__ == "__main__":
    sys.exit(main())
