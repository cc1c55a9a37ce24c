"""Repair quality per second: for a trained model, each mask and each sampler effort, the judge's
accuracy on the completed test images (and on the masked and original ones), the hole's negative
log-likelihood -log p(hidden | observed) in nats (exact for a model trained to repair, else an
estimate: the column says which), the error on the hidden pixels and the seconds, as the
evaluate stage scores them. The masks: the evaluate stage's three, and holes drawn at random per
image (``rectangle`` of any size and place, free-form ``strokes``).

    python bench/repair_quality.py --model models --efforts 1,8,32
    python bench/repair_quality.py --model models:/rnngen@champion --masks centre_square --efforts 32,64
    python bench/repair_quality.py --model models_vae --samplers complete,pseudo_gibbs,metropolis_within_gibbs

``--samplers`` compares a latent model's ``complete`` (pseudo-Gibbs warm start, then
Metropolis-within-Gibbs) with either sampler alone, each given all the rounds.

    python bench/repair_quality.py --model models --masks centre_square --efforts 32 --best-of 4

    python bench/repair_quality.py --model models --efforts 1 --images 1000 --repair-guidance 1,2,3

    python bench/repair_quality.py --images 1000 --masks centre_square --efforts 32 --sampler-seeds 0,1,2

``--sampler-seeds`` repeats each completion with the sampler's generator seeded anew (the masks and the
test images' binarization stay those of ``--seed``), completing 200 images at a time as the evaluate
stage does: the spread of a figure over the sampler's draws alone.

A class-conditional model that repairs without a class (the default PixelRNN) infers the class from
the observed pixels under its own p(x | y); the bench prints how often that model names the class of
the whole original, argmax_y p(x | y): no completion drawn from its posterior is recognised much more
often than that (the judge's accuracy on the originals sits beside it).

``--repair-guidance`` (a PixelRNN trained to repair) compares guidance scales toward the observed
pixels; ``--best-of K`` (a model with a likelihood) also draws K completions per image (draw r seeded
with 100 + r) and keeps the one the model finds most likely, exact log p(x) of the whole
completed image: the judge's accuracy on each draw and on the most likely one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rnngen import registry
from rnngen.classifier import accuracy, as_judged, load_classifier
from rnngen.data import binarized_test_set, load_split
from rnngen.inpaint import DRAWN_MASKS, MASKS, inpaint, inpainting_metrics, make_mask


def best_of(model: torch.nn.Module, judge: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str,
            effort: int, k: int, seed: int) -> None:
    """Print the judge's accuracy on each of ``k`` completions per image and on the most likely."""
    mask = make_mask(kind, len(x), torch.Generator().manual_seed(seed))
    given = y if model.conditional else None
    draws, scores = [], []
    for r in range(k):
        start = time.perf_counter()
        drawn = inpaint(model, x, mask, effort, torch.Generator().manual_seed(100 + r), given).drawn.cpu()
        with torch.no_grad():
            scores.append(model.log_likelihood(drawn.to(model.device), y=given).flatten().cpu())
        draws.append(drawn)
        print(f"best-of  {kind:15s} draw {r}: {accuracy(judge, as_judged(judge, drawn, seed), y):.3f} "
              f"(mean log p(x) {scores[-1].mean():.2f}, {time.perf_counter() - start:.1f} s)", flush=True)
    pick = torch.stack(draws)[torch.stack(scores).argmax(0), torch.arange(len(x))]
    print(f"best-of  {kind:15s} most likely of {k}: {accuracy(judge, as_judged(judge, pick, seed), y):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models", help="checkpoint, models/ folder or models:/ URI")
    parser.add_argument("--split", type=Path, default=Path("data/split"))
    parser.add_argument("--classifier", type=Path, default=Path("classifier/classifier.pt"))
    parser.add_argument("--images", type=int, default=200, help="test images per mask (evaluate.inpaint_images)")
    parser.add_argument("--masks", default=",".join(MASKS | DRAWN_MASKS))
    parser.add_argument("--efforts", default="1,8,32", help="sampler efforts to compare")
    parser.add_argument("--samplers", default="complete", help="model methods to compare (latent models)")
    parser.add_argument("--repair-guidance", default="",
                        help="a PixelRNN trained to repair: guidance scales toward the observed pixels to compare, "
                             "e.g. 1,2,3 (default: the model's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--best-of", type=int, default=0, metavar="K",
                        help="also keep the most likely of K completions per image (models with a likelihood)")
    parser.add_argument("--sampler-seeds", default="", metavar="S,S,...",
                        help="also repeat each completion with these sampler seeds (the judge's accuracy per seed)")
    args = parser.parse_args()

    loaded = registry.load(args.model, "rnngen")
    judge = load_classifier(args.classifier)
    x_test, y_test = load_split(args.split, "test")
    x = binarized_test_set(x_test, loaded.binarization, args.seed)[: args.images]
    y = y_test[: args.images]
    print(f"{loaded.source}: {loaded.model.name}, {len(x)} test images, {torch.get_num_threads()} threads")
    if loaded.model.class_optional:
        own = own_class_accuracy(loaded.model, x, y)
        print(f"the model's own class of the originals, argmax_y p(x | y): {own:.3f}")
    kind_of_nll = "exact" if loaded.model.exact_hole_nll else "estimate"
    print(f"sampler                  mask            effort  completed  masked  original  hole_nll ({kind_of_nll})  "
          "mse_missing  seconds")
    scales = [float(g) for g in args.repair_guidance.split(",")] if args.repair_guidance else [None]
    for scale in scales:
        model = loaded.model if scale is None else loaded.model.with_sampling(repair_guidance=scale)
        if scale is not None:
            print(f"repair_guidance {scale:g}")
        compare(model, judge, x, y, args)
    for kind in args.masks.split(",") if args.sampler_seeds else []:
        over_seeds(loaded.model, judge, x, y, kind, int(args.efforts.split(",")[-1]), args)
    for kind in args.masks.split(",") if args.best_of else []:
        best_of(loaded.model, judge, x, y, kind, int(args.efforts.split(",")[-1]), args.best_of, args.seed)


def over_seeds(model: torch.nn.Module, judge: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str,
               effort: int, args: argparse.Namespace, batch: int = 200) -> None:
    """Print the judge's accuracy on the completions drawn with each of ``args.sampler_seeds``."""
    mask = make_mask(kind, len(x), torch.Generator().manual_seed(args.seed))
    given = y if model.needs_labels else None
    figures = []
    for seed in (int(s) for s in args.sampler_seeds.split(",")):
        start, gen = time.perf_counter(), torch.Generator(device=model.device).manual_seed(seed)
        drawn = torch.cat([inpaint(model, x[i : i + batch], mask[i : i + batch], effort, gen,
                                   None if given is None else given[i : i + batch]).drawn.cpu()
                           for i in range(0, len(x), batch)])
        figures.append(accuracy(judge, as_judged(judge, drawn, args.seed), y))
        print(f"seeds    {kind:15s} sampler seed {seed}: {figures[-1]:.3f} ({time.perf_counter() - start:.1f} s)",
              flush=True)
    print(f"seeds    {kind:15s} mean {sum(figures) / len(figures):.3f}, from {min(figures):.3f} to {max(figures):.3f}")


def own_class_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 250) -> float:
    """Share of images whose most likely class under the model's p(x | y) is their label."""
    def log_p(images: torch.Tensor, c: int) -> torch.Tensor:
        labels = torch.full((len(images),), c, device=model.device)
        return model.log_likelihood(images.to(model.device), y=labels).cpu()

    with torch.no_grad():
        scores = torch.stack([torch.cat([log_p(x[i : i + batch], c) for i in range(0, len(x), batch)])
                              for c in range(model.config.classes)])
    return (scores.argmax(0) == y).float().mean().item()


def compare(model: torch.nn.Module, judge: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
            args: argparse.Namespace) -> None:
    """One line per sampler, mask and effort."""
    complete = model.complete
    for sampler in args.samplers.split(","):
        model.complete = complete if sampler == "complete" else getattr(model, sampler)  # what inpaint() calls
        for kind in args.masks.split(","):
            for effort in (int(e) for e in args.efforts.split(",")):
                start = time.perf_counter()
                m = inpainting_metrics(model, judge, x, y, kind, effort, args.seed)
                seconds = time.perf_counter() - start
                hole = f"{m['hole_nll']:18.2f}" if "hole_nll" in m else f"{'-':>18s}"
                print(f"{sampler:24s} {kind:15s} {effort:6d}  {m['accuracy_completed']:9.3f}  "
                      f"{m['accuracy_masked']:6.3f}  {m['accuracy_original']:8.3f}  {hole}  {m['mse_missing']:11.4f}  "
                      f"{seconds:7.1f}", flush=True)
    model.complete = complete


if __name__ == "__main__":
    main()
