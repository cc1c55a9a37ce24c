"""`rnngen`: use a trained model without writing code.

    rnngen sample    n new images as a PNG grid
    rnngen inpaint   complete the hidden part of images: original | masked | completed
    rnngen score     how likely each image is: its negative log-likelihood in nats (JSON)
    rnngen interpolate  walk a latent-variable model's latent space from one image to another
    rnngen evaluate  NLL bounds, Fréchet classifier distance, inpainting scores (test split or your images)
    rnngen promote   move the champion alias to the model dvc repro just made, if it wins
    rnngen info      which version is champion, and its metrics
    rnngen server    a team's tracking server and tuning database (PostgreSQL + mlflow server), with
                     passwords; add-user, passwd

A model is models:/NAME@ALIAS, models:/NAME/VERSION (or just the version number), or a
local checkpoint (models/model.pt, or the train stage's models/ folder). The MLflow store is
MLFLOW_TRACKING_URI or the project's mlflow.db. Errors a user can fix print "error: ..." and
exit with code 2, writing nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rnngen.errors import guard

if TYPE_CHECKING:  # the commands import the library lazily: `rnngen --help` stays quick
    from rnngen.evaluate import EvalConfig
    from rnngen.promote import PromoteConfig
    from rnngen.registry import LoadedModel

#: rnngen.inpaint.MASKS, named here so that parsing the command line imports no torch
MASK_KINDS = ("bottom_half", "centre_square", "random_pixels")

@dataclasses.dataclass(frozen=True)
class Defaults:
    """What the commands take from params.yaml (flags override): the registry name and alias
    behind the default model, and the evaluate and promote settings."""

    model_name: str
    alias: str
    evaluate: EvalConfig
    promote: PromoteConfig

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}@{self.alias}"


def defaults(path: Path) -> Defaults:
    """params.yaml's ``tracking.model_name``, ``promote.alias`` and ``evaluate.*`` (the code
    defaults when the file is absent, e.g. outside the project)."""
    from rnngen.config import build_sections, load_params, section
    from rnngen.evaluate import EvalConfig
    from rnngen.promote import PromoteConfig
    from rnngen.tracking import TrackingConfig

    params = load_params(path) if path.is_file() else {}
    built = build_sections(tracking=lambda: section(TrackingConfig, params, "tracking"),
                           promote=lambda: section(PromoteConfig, params, "promote"),
                           evaluate=lambda: section(EvalConfig, params, "evaluate"))
    return Defaults(built["tracking"].model_name, built["promote"].alias, built["evaluate"], built["promote"])


def _load_model(args: argparse.Namespace) -> LoadedModel:
    from rnngen import registry

    settings = defaults(args.params)
    return registry.load(args.model or settings.model_uri, settings.model_name)


def _mask_arg(value: str) -> str:
    if value in MASK_KINDS or Path(value).is_file():
        return value
    raise argparse.ArgumentTypeError(
        f"unknown mask kind {value!r}: choose {', '.join(MASK_KINDS)}, or give a 28x28 grayscale PNG "
        "whose white pixels (>= 128) are the hidden ones"
    )


def _png_out(value: str) -> Path:
    if not value.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"output {value!r} must be a .png file")
    return Path(value)


def _positive(convert: Callable[[str], float], expected: str, zero: bool = False) -> Callable[[str], Any]:
    """An argparse ``type`` reading a finite number > 0 (>= 0 with ``zero``) with ``convert`` (int or float)."""

    def parse(value: str) -> Any:
        try:
            number = convert(value)
        except ValueError:
            number = math.nan
        if not (0 <= number if zero else 0 < number) or not number < math.inf:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")
        return number

    return parse


_positive_int = _positive(int, "a whole number >= 1")
_positive_float = _positive(float, "a number > 0")
_non_negative_float = _positive(float, "a number >= 0", zero=True)


def _with_flags(cfg: Any, **flags: Any) -> Any:
    """``cfg`` (a params.yaml section) with the flags given on the command line (not None) replacing it."""
    from rnngen.config import ConfigError

    cfg = dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    if cfg.problems():
        raise ConfigError(["; ".join(cfg.problems())], "the command line")
    return cfg


def _tolerance_arg(value: str) -> tuple[str, float]:
    metric, sep, number = value.partition("=")
    try:
        tolerance = float(number)
    except ValueError:
        tolerance = math.nan
    if not sep or not metric or not tolerance >= 0:
        raise argparse.ArgumentTypeError(f"expected METRIC=VALUE, VALUE >= 0, e.g. test_nll_elbo=1.0; got {value!r}")
    return metric, tolerance


def _add_command(sub: Any, name: str, help_text: str, examples: str, handler: Callable[[argparse.Namespace], None],
                 *, model: bool = False, params: bool = True) -> argparse.ArgumentParser:
    """A subcommand with its help, examples and handler, and the shared ``--params`` / ``--model``."""
    command = sub.add_parser(
        name, help=help_text, description=help_text, epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.set_defaults(func=handler)
    if params:
        command.add_argument("--params", type=Path, default=Path("params.yaml"),
                             help="where the defaults come from: tracking.model_name, promote.alias, evaluate.* "
                                  "(default: %(default)s; code defaults when it is absent)")
    if model:
        command.add_argument("--model", default=None,
                             help="models:/NAME@ALIAS, models:/NAME/VERSION, a version number, or a checkpoint "
                                  "path (.pt file or the train stage's models/ folder); default: "
                                  "models:/<tracking.model_name>@<promote.alias> from --params, i.e. "
                                  "models:/rnngen@champion")
    return command


def _add_sample(sub: Any) -> None:
    command = _add_command(sub, "sample", "draw new images from a model and save them as one PNG grid", """\
  rnngen sample --out samples.png
  rnngen sample --model models:/rnngen/3 --n 16 --seed 1 --out v3.png
  rnngen sample --model models/model.pt --n 100 --temperature 0.7 --out cool.png
""", _sample, model=True)
    option = command.add_argument
    option("--n", type=_positive_int, default=64, help="number of images (default: %(default)s)")
    option("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    option("--temperature", type=_positive_float, default=1.0,
           help="< 1 gives cleaner, less varied images: the VAEs and DRAW scale their prior's "
                "standard deviation by it, PixelRNN divides its logits by it (default: %(default)s)")
    option("--nrow", type=_positive_int, default=None, help="images per row (default: square grid)")
    option("--label", type=_label_arg, default=None,
           help="a conditional model's class to draw, or 'all': --n of every class, a row each")
    option("--guidance", type=_non_negative_float, default=None,
           help="a conditional PixelRNN's classifier-free guidance scale: 1 = exact draws of p(x | y), "
                "> 1 truer to the class, less varied (default: the model's own, model.pixelrnn.guidance)")
    option("--out", type=_png_out, default=Path("samples.png"), help="PNG to write (default: %(default)s)")


def _label_arg(value: str) -> int | str:
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a class number or 'all', got {value!r}") from None


def _sample(args: argparse.Namespace) -> None:
    import torch

    from rnngen import files, pictures, service

    loaded = _load_model(args)
    n, nrow, y = args.n, args.nrow or math.ceil(math.sqrt(args.n)), None
    if args.label == "all":  # an unconditional model refuses these labels, saying why
        y = torch.arange(loaded.model.config.classes).repeat_interleave(args.n)
        n, nrow = len(y), args.n
    elif args.label is not None:
        y = torch.full((n,), args.label)
    images = service.draw(loaded.model, n, args.seed, args.temperature, y, args.guidance)
    with files.atomic_file(args.out) as tmp:
        pictures.save_grid(images, tmp, nrow=nrow)
    which = ("" if args.label is None else f", class {args.label}") + (
        "" if args.guidance is None else f", guidance {args.guidance:g}")
    print(f"{n} samples of {loaded.source} (seed {args.seed}, temperature {args.temperature:g}{which}) -> {args.out}")


def _add_inpaint(sub: Any) -> None:
    command = _add_command(sub, "inpaint", "hide part of images and let the model complete it; writes a PNG "
                           "with rows original | masked | completed", """\
  rnngen inpaint --image digit.png --mask bottom_half --out panel.png
  rnngen inpaint --test-index 0 1 2 3 --split data/split --mask centre_square --out panel.png
  rnngen inpaint --model models:/rnngen/2 --image a.png b.png --mask my_mask.png --out panel.png
""", _inpaint, model=True)
    _add_images(command)
    option = command.add_argument
    option("--mask", type=_mask_arg, required=True,
           help=f"{' | '.join(MASK_KINDS)}, or a 28x28 grayscale PNG whose white pixels are hidden")
    option("--effort", type=_positive_int, default=32,
           help="sampler work per image: Gibbs rounds (latent-variable models), particles "
                "(PixelRNN) (default: %(default)s)")
    option("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    option("--out", type=_png_out, default=Path("inpainting.png"), help="PNG to write (default: %(default)s)")


def _add_images(command: argparse.ArgumentParser) -> None:
    """--image or --test-index (with --split): the images a command works on; --label for a
    conditional model."""
    source = command.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", nargs="+", metavar="PNG", help="28x28 grayscale image file(s)")
    source.add_argument("--test-index", nargs="+", type=int, metavar="I", help="index(es) into the test split")
    command.add_argument("--split", type=Path, default=Path("data/split"),
                         help="split stage output, for --test-index (default: %(default)s)")
    command.add_argument("--label", type=int, default=None,
                         help="a conditional model's class for every image (default with --test-index: "
                              "the test labels)")


def _labels(args: argparse.Namespace, model: Any, n: int) -> Any:
    """The labels a conditional model takes for the images: --label for all, else the test
    split's for --test-index; None for an unconditional model (which refuses --label)."""
    import torch

    from rnngen import data

    if args.label is not None:
        return torch.full((n,), args.label)
    if not model.conditional:
        return None
    if args.test_index is None:
        raise data.DataError(f"{model.name} is conditional: give the images' class with --label")
    return data.load_split(args.split, "test")[1][args.test_index]


def _read_images(args: argparse.Namespace) -> tuple[Any, str]:
    """The images of :func:`_add_images`' options in [0, 1], ``(n, 1, 28, 28)``, and what they are."""
    import torch

    from rnngen import data

    if args.image:
        x_u8 = torch.stack([torch.from_numpy(data.read_image(path)) for path in args.image])
        what = ", ".join(args.image)
    else:
        x_test, _ = data.load_split(args.split, "test")
        bad = [i for i in args.test_index if not 0 <= i < len(x_test)]
        if bad:
            raise data.DataError(f"--test-index {bad[0]}: the test split in {args.split} has {len(x_test)} images")
        x_u8 = x_test[args.test_index]
        what = f"test images {args.test_index} of {args.split}"
    return data.to_unit(x_u8), what


def _add_score(sub: Any) -> None:
    command = _add_command(sub, "score", "how likely each image is under a model: prints JSON with each image's "
                           "negative log-likelihood in nats (what the served model's score task answers)", """\
  rnngen score --image digit.png
  rnngen score --test-index 0 1 2 --split data/split --model models:/rnngen/2
""", _score, model=True)
    _add_images(command)


def _score(args: argparse.Namespace) -> None:
    from rnngen import data, service

    grey, what = _read_images(args)
    loaded = _load_model(args)
    # the likelihood is of binary images
    nll = service.score(loaded.model, data.binarize(grey, "fixed"), _labels(args, loaded.model, len(grey)))
    print(json.dumps({"model": loaded.source, "images": what, "binarized": "pixel > 0.5",
                      "nll_nats": [float(v) for v in nll]}, indent=2))


def _inpaint(args: argparse.Namespace) -> None:
    from rnngen import files, inpaint, pictures, service

    original, what = _read_images(args)  # (n, 1, 28, 28) in [0, 1]
    mask = inpaint.load_mask(args.mask, len(original), args.seed)
    loaded = _load_model(args)
    completed = service.repair(loaded.model, original, mask, args.effort, args.seed,
                               _labels(args, loaded.model, len(original)))
    with files.atomic_file(args.out) as tmp:
        pictures.inpainting_panel(original, mask, completed, tmp)
    print(f"inpainted {what} ({args.mask}, effort {args.effort}) with {loaded.source} -> {args.out}")


def _add_interpolate(sub: Any) -> None:
    command = _add_command(sub, "interpolate", "encode pairs of images, walk the latent path between each pair "
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
    option("--split", type=Path, default=Path("data/split"),
           help="split stage output, for --test-index (default: %(default)s)")
    option("--steps", type=_positive_int, default=10,
           help="images along each path, ends included (default: %(default)s)")
    option("--out", type=_png_out, default=Path("interpolation.png"), help="PNG strip to write (default: %(default)s)")
    option("--gif", type=Path, default=None, help="also write the walks there and back as an animated GIF")
    option("--label", type=int, default=None,
           help="conditional models: the class held along every walk (both ends encoded and every frame "
                "decoded with it)")


def _interpolate(args: argparse.Namespace) -> None:
    import torch

    from rnngen import data, files, walk

    if args.a is not None and len(args.a) != len(args.b or []):
        raise data.DataError(f"--a gives {len(args.a)} image(s) and --b {len(args.b or [])}: give each walk's end "
                             "in --b, as many as --a")
    if args.test_index is not None and len(args.test_index) % 2:
        raise data.DataError(f"--test-index takes pairs (start end ...), got {len(args.test_index)} indexes")
    if args.gif is not None and args.gif.suffix.lower() != ".gif":
        raise data.DataError(f"--gif {args.gif}: must be a .gif file")
    if args.steps < 2:
        raise data.DataError("--steps must be at least 2: the two ends")
    if args.a is not None:
        starts, ends = args.a, args.b
    else:
        starts, ends = args.test_index[0::2], args.test_index[1::2]
    key = "image" if args.a is not None else "test_index"
    (a, what_a), (b, what_b) = (_read_images(argparse.Namespace(**{"image": None, "test_index": None,
                                                                   "split": args.split, key: side}))
                                for side in (starts, ends))
    loaded = _load_model(args)
    walk.check_latent(loaded.model)  # before any compute
    if loaded.model.conditional and args.label is None:
        raise data.DataError(f"{loaded.model.name} is conditional: give the class to hold along the walks with "
                             "--label")
    held = None if args.label is None else loaded.model.labels(torch.full((len(a),), args.label))
    # binarized at 0.5, as `rnngen score` does: the encoder was trained on binary images
    frames = walk.walk(loaded.model, data.binarize(a, "fixed"), data.binarize(b, "fixed"), args.steps, held)
    with files.atomic_file(args.out) as strip:
        if args.gif is None:
            walk.save(frames, strip)
        else:
            with files.atomic_file(args.gif) as gif:
                walk.save(frames, strip, gif)
    print(f"{args.steps} steps from {what_a} to {what_b} through the latent space of {loaded.source} -> "
          f"{args.out}" + (f", {args.gif}" if args.gif else ""))


def _add_evaluate(sub: Any) -> None:
    command = _add_command(sub, "evaluate", "score a model on the test split or on images you bring; prints "
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
    option("--k", type=_positive_int, default=None, help="importance samples for the IWAE bound (default: evaluate.k)")
    option("--classifier", type=Path, default=None,
           help="classifier file (rnngen.classifier.save_classifier) for FCD and accuracy")
    option("--classifier-epochs", type=_positive_int, default=3,
           help="epochs when a classifier is trained on the given data (default: %(default)s)")
    option("--n-quality", type=_positive_int, default=None,
           help="samples and real images for the FCD, at most the images given (default: evaluate.n_quality)")
    option("--inpaint-images", type=_positive_int, default=None,
           help="images completed under each mask (default: evaluate.inpaint_images)")
    option("--effort", type=_positive_int, default=None,
           help="sampler work per completed image (default: evaluate.inpaint_effort)")
    option("--max-images", type=int, default=None,
           help="score only the first N images, 0 = all (default: evaluate.max_images)")
    option("--batch-size", type=_positive_int, default=None,
           help="images per forward pass (default: evaluate.batch_size)")
    option("--seed", type=int, default=None, help="random seed (default: evaluate.seed)")
    option("--out", type=Path, default=None, help="also write the JSON to this file")
    option("--pictures", type=Path, default=None,
           help="also save the pictures in this folder: samples, reconstructions, inpainting panels, generation "
                "over time and, for latent models, a latent walk")


def _evaluate(args: argparse.Namespace) -> None:
    from rnngen import classifier, data, evaluate, files

    cfg = _with_flags(defaults(args.params).evaluate, seed=args.seed, k=args.k, batch_size=args.batch_size,
                      max_images=args.max_images, n_quality=args.n_quality, inpaint_images=args.inpaint_images,
                      inpaint_effort=args.effort)
    if args.split is not None:
        x, y = data.load_split(args.split, "test")
        images = data.UserData(x, y, None, None, f"the test split of {args.split} ({len(x)} images)")
    else:
        images = data.load_user_data(args.data)
    project_classifier = classifier.PROJECT_CLASSIFIER if classifier.PROJECT_CLASSIFIER.is_file() else None
    result = evaluate.evaluate_images(
        images, cfg, lambda: _load_model(args), classifier_file=args.classifier or project_classifier,
        classifier_epochs=args.classifier_epochs, test_split=args.split is not None, pictures=args.pictures,
    )
    if args.out:
        files.write_json(args.out, result)
    print(json.dumps(result, indent=2))


def _add_promote(sub: Any) -> None:
    command = _add_command(sub, "promote", "compare the model `dvc repro` just registered with the champion and "
                           "move the alias only if it wins; writes a markdown report and tags the model version", """\
  rnngen promote                                  # after dvc repro: models/run.json + reports/metrics.json
  rnngen promote --margin 1.0 --tolerance test_nll_elbo=0.5
  rnngen promote --version 3 --force              # roll back: make version 3 the champion

  rnngen promote --primary test_fcd               # a GAN (no likelihood) against any model

The rule (params.yaml `promote:`): the challenger's test_nll_iwae must be lower than the
champion's by at least --margin nats, and no other listed metric may be worse by more than its
tolerance. The first model becomes champion. A GAN has no likelihood: with an NLL primary,
promotion between it and any model is refused; rank by a metric both have (--primary test_fcd).
This changes the registry, so it is not a DVC stage.
""", _promote)
    option = command.add_argument
    option("--run-json", type=Path, default=Path("models/run.json"), help="train stage record (default: %(default)s)")
    option("--metrics", type=Path, default=Path("reports/metrics.json"),
           help="evaluate stage metrics (default: %(default)s)")
    option("--report", type=Path, default=Path("reports/promotion.md"),
           help="markdown report to write (default: %(default)s)")
    option("--split", type=Path, default=Path("data/split"),
           help="test split for re-scoring a champion evaluated on other data (default: %(default)s)")
    option("--primary", default=None,
           help="the metric the challenger must win on (default: promote.primary); e.g. test_fcd to compare "
                "with a GAN, which has no likelihood")
    option("--margin", type=float, default=None, help="how much the primary metric must improve by (its units)")
    option("--tolerance", type=_tolerance_arg, action="append", metavar="METRIC=VALUE",
           help="how much worse METRIC may get (repeatable)")
    option("--alias", default=None, help="alias to move (default: promote.alias)")
    option("--version", default=None, help="challenger version (default: the one in --run-json)")
    option("--name", default=None, help="registered model name, with --version (default: tracking.model_name)")
    option("--force", action="store_true", help="move the alias whatever the metrics say")


def _promote(args: argparse.Namespace) -> None:
    from rnngen import promote

    settings = defaults(args.params)
    tolerances = {**settings.promote.tolerances, **dict(args.tolerance or [])}
    if args.primary:  # the new primary is judged by the margin: its tolerance, if listed, goes
        tolerances.pop(args.primary, None)
    cfg = _with_flags(settings.promote, primary=args.primary or None, margin=args.margin, alias=args.alias or None,
                      tolerances=tolerances)
    rescore = None
    if args.split.is_dir():  # re-scores a champion that was evaluated on another test set
        rescore = promote.likelihood_rescorer(args.split, settings.evaluate.batch_size)
    decision = promote.promote(
        cfg, args.report, run_json=args.run_json, metrics_json=args.metrics, version=args.version,
        name=args.name or (None if args.version is None else settings.model_name), rescore=rescore,
        force=args.force, default_name=settings.model_name,
    )
    print(args.report.read_text(), end="")
    print(f"promotion: {decision.outcome} (report: {args.report})", file=sys.stderr)


def _add_info(sub: Any) -> None:
    command = _add_command(sub, "info", "show which version holds the champion alias and its held-out metrics "
                           "(JSON)", """\
  rnngen info
  rnngen info --name rnngen --alias champion
  MLFLOW_TRACKING_URI=http://mlflow:5000 rnngen info
""", _info)
    option = command.add_argument
    option("--name", default=None, help="registered model name (default: tracking.model_name)")
    option("--alias", default=None, help="alias to look up (default: promote.alias)")


def _info(args: argparse.Namespace) -> None:
    from rnngen import registry

    settings = defaults(args.params)
    info = registry.model_info(args.name or settings.model_name, args.alias or settings.alias)
    print(json.dumps(info, indent=2))


def _add_server(sub: Any) -> None:
    command = _add_command(sub, "server", "a team's tracking server and tuning database: PostgreSQL + mlflow "
                           "server, both asking for passwords (until Ctrl-C); add a teammate; rotate a password", """\
  rnngen server                                  # start; prints what the pipeline's shell exports
  rnngen server add-user ana --role edit         # a teammate; prints the file that holds her password
  rnngen server passwd ana                       # a new password: admin, a teammate, tuner or rnngen
  rnngen server --dir /srv/rnngen --host 0.0.0.0 --allowed-hosts ml.example.org

PostgreSQL asks every connection for a password (scram-sha-256), MLflow runs its basic-auth app;
passwords are generated into 0600 files in DIR/secrets and never printed. Both listen on 127.0.0.1
unless --host says otherwise. Needs the PostgreSQL server (apt-get install postgresql) and
pip install -e '.[server]'.""", _server, params=False)
    option = command.add_argument
    option("--dir", type=Path, default=Path(".rnngen-server"),
           help="folder of the PostgreSQL cluster, the logs, the artifacts and the secrets (default: %(default)s)")
    option("--port", type=int, default=5000, help="mlflow server port (default: %(default)s)")
    option("--pg-port", type=int, default=5433, help="PostgreSQL port (default: %(default)s)")
    option("--host", default="127.0.0.1",
           help="interface both servers listen on (default: %(default)s; another needs authentication on)")
    option("--allowed-hosts", default="",
           help="comma-separated names clients reach MLflow by, besides loopback (default with --host 0.0.0.0: "
                "this machine's names)")
    option("--no-auth", action="store_true", help="MLflow without its auth app: one person, loopback only")
    actions = command.add_subparsers(dest="action", metavar="ACTION")
    add = actions.add_parser("add-user", help="a teammate with READ or EDIT on the experiments and the model")
    add.add_argument("name")
    add.add_argument("--role", choices=("read", "edit"), required=True)
    add.add_argument("--params", type=Path, default=Path("params.yaml"),
                     help="tracking.experiment and tracking.model_name come from here (default: %(default)s)")
    actions.add_parser("passwd", help="a new password for admin, a teammate, tuner or rnngen").add_argument("name")


def _server(args: argparse.Namespace) -> None:
    from rnngen import team

    if args.action == "add-user":
        from rnngen.config import load_params, section
        from rnngen.tracking import TrackingConfig

        tracking = section(TrackingConfig, load_params(args.params) if args.params.is_file() else {}, "tracking")
        team.add_user(args.dir, args.name, args.role, tracking.experiment, tracking.model_name)
    elif args.action == "passwd":
        team.rotate_password(args.dir, args.name)
    else:
        team.serve(args.dir, args.pg_port, args.port, args.host, auth=not args.no_auth,
                   names=[name for name in args.allowed_hosts.split(",") if name])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnngen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run `rnngen COMMAND --help` for a command's options and examples",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in (_add_sample, _add_inpaint, _add_score, _add_interpolate, _add_evaluate, _add_promote,
                        _add_info, _add_server):
        add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr readable
    return guard(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
