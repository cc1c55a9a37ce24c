"""Classifier-free guidance of a conditional PixelRNN, swept on one trained model: for each
guidance scale, the share of samples the judge takes for the class asked (asked-for
accuracy), the Fréchet classifier distance against as many test images of the same classes,
and the seconds sampling took. The scale only changes sampling, so nothing is retrained; a
model without guidance (unconditional, or trained with ``label_dropout`` 0) is refused.
The samples are the evaluate stage's (same seed, n and labels), so at the model's own scale the
asked-for accuracy equals ``test_asked_accuracy``; the real images are the grey test images put
in the judge's kind by its own seeded draw, where the evaluate stage uses the test set's fixed
binarization, so the FCD differs from ``test_fcd`` by a few tenths.

    python bench/guidance.py --model models --scales 1,1.5,2,3
    python bench/guidance.py --model models:/rnngen@champion --n 500
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from rnngen import registry
from rnngen.classifier import load_classifier
from rnngen.data import load_split
from rnngen.models.base import SamplingError
from rnngen.quality import sample_quality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models", help="checkpoint, models/ folder or models:/ URI")
    parser.add_argument("--split", type=Path, default=Path("data/split"))
    parser.add_argument("--classifier", type=Path, default=Path("classifier/classifier.pt"))
    parser.add_argument("--scales", default="1,1.5,2,3", help="guidance scales to compare")
    parser.add_argument("--n", type=int, default=1000, help="samples per scale (evaluate.n_quality)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    loaded = registry.load(args.model, "rnngen")
    model, config = loaded.model, loaded.model.config
    scales = [float(s) for s in args.scales.split(",")]
    if not model.conditional:
        sys.exit(f"{loaded.source}: this model is unconditional, so there is no class to guide toward")
    try:  # the refusals of rnngen sample --guidance, before any sampling
        guided = [model.with_sampling(guidance=scale) for scale in scales]
    except SamplingError as exc:
        sys.exit(f"{loaded.source}: {exc}")
    judge = load_classifier(args.classifier)
    x_test, y_test = load_split(args.split, "test")
    print(f"{loaded.source}: {model.name} ({config.variant}, label_dropout {config.label_dropout}), "
          f"{args.n} samples per scale, {torch.get_num_threads()} threads")
    print("scale  asked-for  FCD     seconds  worst class (asked-for)")
    rows = []
    for scale, twin in zip(scales, guided, strict=True):
        start = time.perf_counter()
        q = sample_quality(twin, judge, x_test, args.n, args.seed, labels=y_test)
        seconds = time.perf_counter() - start
        per_class = {k: v for k, v in q.items() if k.startswith("asked_accuracy_")}
        worst = min(per_class, key=per_class.__getitem__)
        print(f"{scale:5.2f}  {q['asked_accuracy']:8.1%}  {q['fcd']:6.1f}  {seconds:7.1f}  "
              f"{worst.rsplit('_', 1)[1]} ({per_class[worst]:.1%})")
        rows.append({"guidance": scale, "seconds": seconds, **q})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
