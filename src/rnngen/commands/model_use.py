"""The commands that use a model: sample, inpaint, score, interpolate, evaluate."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from rnngen import layout
from rnngen.commands.images import add_images, labels, read_images
from rnngen.commands.options import (
    MASK_KINDS,
    add_command,
    label_arg,
    mask_arg,
    non_negative_float,
    png_out,
    positive_float,
    positive_int,
)
from rnngen.commands.settings import defaults, load_model, with_flags
from rnngen.errors import UserError


def add_sample(sub: Any) -> None:
    command = add_command(sub, "sample", "draw new images from a model and save them as one PNG grid", """\
  rnngen sample --out samples.png
  rnngen sample --model models:/rnngen/3 --n 16 --seed 1 --out v3.png
  rnngen sample --model models/model.pt --n 100 --temperature 0.7 --out cool.png
""", _sample, model=True)
    option = command.add_argument
    option("--n", type=positive_int, default=64, help="number of images (default: %(default)s)")
    option("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    option("--temperature", type=positive_float, default=1.0,
           help="< 1 gives cleaner, less varied images: the VAEs and DRAW scale their prior's "
                "standard deviation by it, PixelRNN divides its logits by it (default: %(default)s)")
    option("--nrow", type=positive_int, default=None, help="images per row (default: square grid)")
    option("--label", type=label_arg, default=None,
           help="a conditional model's class to draw, or 'all': --n of every class, a row each")
    option("--guidance", type=non_negative_float, default=None,
           help="a conditional PixelRNN's classifier-free guidance scale: 1 = exact draws of p(x | y), "
                "> 1 truer to the class, less varied (default: the model's own, model.pixelrnn.guidance)")
    option("--out", type=png_out, default=Path("samples.png"), help="PNG to write (default: %(default)s)")


def _sample(args: argparse.Namespace) -> None:
    import torch

    from rnngen import files, pictures, service

    loaded = load_model(args)
    n, nrow, y = args.n, args.nrow or math.ceil(math.sqrt(args.n)), None
    if args.label == "all":  # an unconditional model refuses these labels, saying why
        y = torch.arange(loaded.model.config.classes).repeat_interleave(args.n)
        n, nrow = len(y), args.n
    elif args.label is not None:
        y = args.label
    images = service.draw(loaded.model, n, args.seed, args.temperature, y, args.guidance)
    with files.atomic_file(args.out) as tmp:
        pictures.save_grid(images, tmp, nrow=nrow)
    which = ("" if args.label is None else f", class {args.label}") + (
        "" if args.guidance is None else f", guidance {args.guidance:g}")
    print(f"{n} samples of {loaded.source} (seed {args.seed}, temperature {args.temperature:g}{which}) -> {args.out}")


def add_inpaint(sub: Any) -> None:
    command = add_command(sub, "inpaint", "hide part of images and let the model complete it; writes a PNG "
                          "with rows original | masked | completed", """\
  rnngen inpaint --image digit.png --mask bottom_half --out panel.png
  rnngen inpaint --test-index 0 1 2 3 --split data/split --mask centre_square --out panel.png
  rnngen inpaint --model models:/rnngen/2 --image a.png b.png --mask my_mask.png --out panel.png
""", _inpaint, model=True)
    add_images(command)
    option = command.add_argument
    option("--mask", type=mask_arg, required=True,
           help=f"{' | '.join(MASK_KINDS)}, or a 28x28 grayscale PNG whose white pixels are hidden")
    option("--effort", type=positive_int, default=32,
           help="sampler work per image: Gibbs rounds (latent-variable models), particles "
                "(PixelRNN; one exact pass, effort unused, for a PixelRNN trained with repair: true) "
                "(default: %(default)s)")
    option("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    option("--out", type=png_out, default=Path("inpainting.png"), help="PNG to write (default: %(default)s)")


def _inpaint(args: argparse.Namespace) -> None:
    from rnngen import files, inpaint, pictures, service

    original, what = read_images(args)  # (n, 1, 28, 28) in [0, 1]
    mask = inpaint.load_mask(args.mask, len(original), args.seed)
    loaded = load_model(args)
    completed = service.repair(loaded.model, original, mask, args.effort, args.seed,
                               labels(args, loaded.model, len(original)))
    with files.atomic_file(args.out) as tmp:
        pictures.inpainting_panel(original, mask, completed, tmp)
    print(f"inpainted {what} ({args.mask}, effort {args.effort}) with {loaded.source} -> {args.out}")


def add_score(sub: Any) -> None:
    command = add_command(sub, "score", "how likely each image is under a model: prints JSON with each image's "
                          "negative log-likelihood in nats (what the served model's score task answers)", """\
  rnngen score --image digit.png
  rnngen score --test-index 0 1 2 --split data/split --model models:/rnngen/2
""", _score, model=True)
    add_images(command)


def _score(args: argparse.Namespace) -> None:
    from rnngen import data, service

    grey, what = read_images(args)
    loaded = load_model(args)
    # the likelihood is of binary images
    nll = service.score(loaded.model, data.binarize(grey, "fixed"), labels(args, loaded.model, len(grey)))
    print(json.dumps({"model": loaded.source, "images": what, "binarized": "pixel > 0.5",
                      "nll_nats": [float(v) for v in nll]}, indent=2))


def add_interpolate(sub: Any) -> None:
    command = add_command(sub, "interpolate", "encode pairs of images, walk the latent path between each pair "
                          "(spherical interpolation) and decode it: a PNG strip with one row per pair, and a GIF "
                          "with --gif; latent-variable models only (the VAEs, DRAW, the GAN)", """\
  rnngen interpolate --a three.png --b eight.png --out walk.png --gif walk.gif
  rnngen interpolate --test-index 0 1 2 3 --split data/split --steps 12 --model models:/rnngen/2
  rnngen interpolate --test-index 0 1 --label 3 --model models_conditional  # hold class 3 all along

The ends of each row are the model's decodings of the two images' latent means (DRAW: all T
latents at once; a GAN: the latents its search finds). A conditional model holds the class of
--label along every walk. PixelRNN, which has no latent, is refused.
""", _interpolate, model=True)
    option = command.add_argument
    source = command.add_mutually_exclusive_group(required=True)
    source.add_argument("--a", nargs="+", metavar="PNG", help="the images the walks start from (28x28 grayscale)")
    source.add_argument("--test-index", nargs="+", type=int, metavar="I",
                        help="or indexes into the test split, in pairs: 0 1 2 3 walks 0 to 1 and 2 to 3")
    option("--b", nargs="+", metavar="PNG", help="with --a: the images the walks end at, as many as --a")
    option("--split", type=Path, default=layout.SPLIT,
           help="split stage output, for --test-index (default: %(default)s)")
    option("--steps", type=positive_int, default=10,
           help="images along each path, ends included (default: %(default)s)")
    option("--out", type=png_out, default=Path("interpolation.png"), help="PNG strip to write (default: %(default)s)")
    option("--gif", type=Path, default=None, help="also write the walks there and back as an animated GIF")
    option("--label", type=int, default=None,
           help="conditional models: the class held along every walk (both ends encoded and every frame "
                "decoded with it)")


def _check_walk_flags(args: argparse.Namespace) -> None:
    """Refuse flags that cannot make walks, before any image is read or model loaded."""
    if args.a is not None and len(args.a) != len(args.b or []):
        raise UserError(f"--a gives {len(args.a)} image(s) and --b {len(args.b or [])}: give each walk's end "
                        "in --b, as many as --a")
    if args.test_index is not None and len(args.test_index) % 2:
        raise UserError(f"--test-index takes pairs (start end ...), got {len(args.test_index)} indexes")
    if args.gif is not None and args.gif.suffix.lower() != ".gif":
        raise UserError(f"--gif {args.gif}: must be a .gif file")
    if args.steps < 2:
        raise UserError("--steps must be at least 2: the two ends")


def _walk_ends(args: argparse.Namespace) -> tuple[tuple[Any, str], tuple[Any, str]]:
    """The walks' start and end images, each ``(n, 1, 28, 28)`` in [0, 1] with what they are:
    --a and --b, or --test-index taken in pairs."""
    if args.a is not None:
        starts, ends = args.a, args.b
    else:
        starts, ends = args.test_index[0::2], args.test_index[1::2]
    key = "image" if args.a is not None else "test_index"

    def read(side: list[Any]) -> tuple[Any, str]:
        return read_images(argparse.Namespace(**{"image": None, "test_index": None, "split": args.split, key: side}))

    return read(starts), read(ends)


def _interpolate(args: argparse.Namespace) -> None:

    from rnngen import data, files, walk

    _check_walk_flags(args)
    (a, what_a), (b, what_b) = _walk_ends(args)
    loaded = load_model(args)
    walk.check_latent(loaded.model)  # before any compute
    if loaded.model.conditional and args.label is None:
        raise data.DataError(f"{loaded.model.name} is conditional: give the class to hold along the walks with "
                             "--label")
    # binarized at 0.5, as `rnngen score` does: the encoder was trained on binary images
    frames = walk.walk(loaded.model, data.binarize(a, "fixed"), data.binarize(b, "fixed"), args.steps, args.label)
    with files.atomic_file(args.out) as strip:
        if args.gif is None:
            walk.save(frames, strip)
        else:
            with files.atomic_file(args.gif) as gif:
                walk.save(frames, strip, gif)
    print(f"{args.steps} steps from {what_a} to {what_b} through the latent space of {loaded.source} -> "
          f"{args.out}" + (f", {args.gif}" if args.gif else ""))


def add_evaluate(sub: Any) -> None:
    command = add_command(sub, "evaluate", "score a model on the test split or on images you bring; prints "
                          "JSON: NLL bounds (nats/image, bits/dim), Fréchet classifier distance, inpainting "
                          "errors and accuracy", """\
  rnngen evaluate --split data/split                # = reports/metrics.json for the champion
  rnngen evaluate --data /usr/share/datasets/fashion-mnist --model models:/rnngen@champion
  rnngen evaluate --data my_digits/ --classifier classifier.pt --k 10 --out scores.json
  rnngen evaluate --data my_digits/ --model models/model.pt --max-images 500 --pictures my_pictures/

Settings default to params.yaml's evaluate.* (so --split reproduces the evaluate stage's numbers
for the same model); each flag overrides one. --data holds gzipped IDX files (the t10k-* pair is
scored) or PNG/JPEG images (converted to grey 28x28), one subfolder per class (a flat folder is
unlabelled: no accuracies). The classifier behind FCD and accuracy is --classifier, else the
project's classifier/classifier.pt, else one trained here on the labelled images given (the IDX
train pair, or the image folders).
""", _evaluate, model=True)
    source = command.add_mutually_exclusive_group(required=True)
    source.add_argument("--split", type=Path, default=None, help="split stage output: score its test split")
    source.add_argument("--data", type=Path, help="folder of IDX .gz files or of PNG/JPEG images")
    option = command.add_argument
    option("--k", type=positive_int, default=None, help="importance samples for the IWAE bound (default: evaluate.k)")
    option("--classifier", type=Path, default=None,
           help="classifier file (rnngen.classifier.save_classifier) for FCD and accuracy")
    option("--classifier-epochs", type=positive_int, default=3,
           help="epochs when a classifier is trained on the given data (default: %(default)s)")
    option("--n-quality", type=positive_int, default=None,
           help="samples and real images for the FCD, at most the images given (default: evaluate.n_quality)")
    option("--inpaint-images", type=positive_int, default=None,
           help="images completed under each mask (default: evaluate.inpaint_images)")
    option("--effort", type=positive_int, default=None,
           help="sampler work per completed image (default: evaluate.inpaint_effort)")
    option("--max-images", type=int, default=None,
           help="score only the first N images, 0 = all (default: evaluate.max_images)")
    option("--batch-size", type=positive_int, default=None,
           help="images per forward pass (default: evaluate.batch_size)")
    option("--seed", type=int, default=None, help="random seed (default: evaluate.seed)")
    option("--out", type=Path, default=None, help="also write the JSON to this file")
    option("--pictures", type=Path, default=None,
           help="also save the pictures in this folder: samples, reconstructions, inpainting panels, generation "
                "over time and, for latent models, a latent walk")


def _evaluate(args: argparse.Namespace) -> None:
    from rnngen import classifier, data, evaluate, files

    cfg = with_flags(defaults(args.params).evaluate, seed=args.seed, k=args.k, batch_size=args.batch_size,
                     max_images=args.max_images, n_quality=args.n_quality, inpaint_images=args.inpaint_images,
                     inpaint_effort=args.effort)
    if args.split is not None:
        x, y = data.load_split(args.split, "test")
        images = data.UserData(x, y, None, None, f"the test split of {args.split} ({len(x)} images)")
    else:
        images = data.load_user_data(args.data)
    project_classifier = classifier.PROJECT_CLASSIFIER if classifier.PROJECT_CLASSIFIER.is_file() else None
    result = evaluate.evaluate_images(
        images, cfg, lambda: load_model(args), classifier_file=args.classifier or project_classifier,
        classifier_epochs=args.classifier_epochs, test_split=args.split is not None, pictures=args.pictures,
    )
    if args.out:
        files.write_json(args.out, result)
    print(json.dumps(result, indent=2))
