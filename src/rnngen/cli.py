"""`rnngen`: use a trained model without writing code.

    rnngen sample    n new images as a PNG grid
    rnngen inpaint   complete the hidden part of images: original | masked | completed
    rnngen evaluate  NLL bounds, Fréchet classifier distance, inpainting scores on your images
    rnngen promote   move the champion alias to the model dvc repro just made, if it wins
    rnngen info      which version is champion, and its metrics

A model is models:/NAME@ALIAS, models:/NAME/VERSION (or just the version number), or a
local checkpoint (models/model.pt, or the train stage's models/ folder). The MLflow store is
MLFLOW_TRACKING_URI or the project's mlflow.db. Errors a user can fix print "error: ..." and
exit with code 2, writing nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rnngen.errors import guard

DEFAULT_MODEL = "models:/rnngen@champion"
MASK_KINDS = ("bottom_half", "centre_square", "random_pixels")
GREY_MODES = {"L": 1.0, "1": 1.0, "I;16": 1 / 257}  # PIL mode -> factor to 0..255
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


# ------------------------------------------------------------------------------ inputs


def _data_error(message: str) -> Exception:
    from rnngen.data import DataError

    return DataError(message)


def _usage_error(message: str) -> Exception:
    from rnngen.config import ConfigError

    return ConfigError([message], "the command line")


def read_image(path: str | Path) -> Any:
    """A 28x28 grayscale image file as a uint8 tensor ``(28, 28)``; anything else is a DataError."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise _data_error(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            mode, size = im.mode, im.size
            pixels = np.asarray(im, dtype=np.float64) if mode in GREY_MODES else None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _data_error(f"cannot read image {path}: {exc}") from exc
    if size != (28, 28) or pixels is None:
        raise _data_error(
            f"{path} is a {size[0]}x{size[1]} {mode} image; rnngen models take 28x28 grayscale images "
            "(mode L). Convert it first, e.g. with Pillow: "
            "Image.open(p).convert('L').resize((28, 28)).save(q)"
        )
    if mode == "1":
        pixels = pixels * 255
    return torch.from_numpy((pixels * GREY_MODES[mode]).round().clip(0, 255).astype(np.uint8))


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


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return n


def _positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        x = math.nan
    if not x > 0 or not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}")
    return x


def _tolerance_arg(value: str) -> tuple[str, float]:
    metric, sep, number = value.partition("=")
    try:
        tol = float(number)
    except ValueError:
        tol = math.nan
    if not sep or not metric or not tol >= 0:
        raise argparse.ArgumentTypeError(f"expected METRIC=VALUE, VALUE >= 0, e.g. test_nll_elbo=1.0; got {value!r}")
    return metric, tol


def write_atomically(out: Path, write: Callable[[Path], object]) -> Path:
    """Let ``write`` fill a temporary file beside ``out`` (same suffix), then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


# ------------------------------------------------------------------------------ sample


def sample_images(model: Any, n: int, seed: int, temperature: float = 1.0) -> Any:
    """``n`` samples ``(n, 1, 28, 28)``; ``temperature`` scales the prior's standard deviation."""
    import torch

    gen = torch.Generator(device=model.device).manual_seed(seed)
    with torch.no_grad():
        return model.sample(n, generator=gen, temperature=temperature).cpu()


def cmd_sample(args: argparse.Namespace) -> None:
    from rnngen import promote
    from rnngen.evaluate import save_grid

    loaded = promote.load(args.model)
    images = sample_images(loaded.model, args.n, args.seed, args.temperature)
    nrow = args.nrow or math.ceil(math.sqrt(args.n))
    write_atomically(args.out, lambda p: save_grid(images, p, nrow=nrow))
    print(f"{args.n} samples of {loaded.source} (seed {args.seed}, temperature {args.temperature:g}) -> {args.out}")


# ----------------------------------------------------------------------------- inpaint


def load_mask(spec: str, n: int, seed: int) -> Any:
    """Boolean "missing" mask ``(n, 1, 28, 28)``: a kind from rnngen.inpaint, or a PNG file
    whose white pixels (>= 128) are hidden."""
    import torch

    from rnngen import inpaint

    if spec in MASK_KINDS:
        return inpaint.make_mask(spec, n, torch.Generator().manual_seed(seed))
    mask = read_image(spec) >= 128  # (28, 28)
    if not mask.any():
        raise _data_error(f"mask {spec} hides no pixel: white (>= 128) marks the pixels to complete")
    return mask.view(1, 1, 28, 28).expand(n, 1, 28, 28).clone()


def cmd_inpaint(args: argparse.Namespace) -> None:
    import torch

    from rnngen import data, inpaint, pictures, promote

    if args.image:
        x_u8 = torch.stack([read_image(p) for p in args.image])
        what = ", ".join(args.image)
    else:
        x_test, _ = data.load_split(args.split, "test")
        bad = [i for i in args.test_index if not 0 <= i < len(x_test)]
        if bad:
            raise _data_error(f"--test-index {bad[0]}: the test split in {args.split} has {len(x_test)} images")
        x_u8 = x_test[args.test_index]
        what = f"test images {args.test_index} of {args.split}"
    original = x_u8.float().unsqueeze(1) / 255.0  # (n, 1, 28, 28)
    mask = load_mask(args.mask, len(original), args.seed)
    loaded = promote.load(args.model)
    gen = torch.Generator(device=loaded.model.device).manual_seed(args.seed)
    completed = inpaint.inpaint(loaded.model, original, mask, args.iterations, gen).cpu()
    write_atomically(args.out, lambda p: pictures.inpainting_panel(original, mask, completed, p))
    print(f"inpainted {what} ({args.mask}, {args.iterations} iterations) with {loaded.source} -> {args.out}")


# ---------------------------------------------------------------------------- evaluate


@dataclasses.dataclass
class UserData:
    """Images the user brings: uint8 ``(N, 28, 28)``, labels or None, and what to train a
    classifier on when none is given (IDX: the train files; folders: the images themselves)."""

    x: Any
    y: Any | None
    x_train: Any | None
    y_train: Any | None
    description: str


def _read_idx(path: Path, labels: bool) -> Any:
    import torch
    from torchvision.datasets.mnist import read_image_file, read_label_file

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / path.name.removesuffix(".gz")
        try:
            with gzip.open(path) as src, open(raw, "wb") as dst:
                shutil.copyfileobj(src, dst)
            out = (read_label_file if labels else read_image_file)(str(raw))
        except Exception as exc:  # gzip, IDX header or size errors
            raise _data_error(f"cannot parse {path} as a gzipped IDX file: {exc}") from exc
    if not labels and tuple(out.shape[1:]) != (28, 28):
        raise _data_error(f"{path} holds {tuple(out.shape[1:])} images; rnngen models take 28x28")
    return torch.as_tensor(out)


def load_user_data(folder: str | Path) -> UserData:
    """A folder of IDX ``.gz`` files (the test pair is scored, the train pair trains the
    classifier) or of 28x28 grayscale PNG/JPEG images (one subfolder per class, or flat)."""
    import torch

    folder = Path(folder)
    if not folder.is_dir():
        raise _data_error(f"--data: folder {folder} does not exist")
    images = sorted(folder.glob("*images-idx3-ubyte.gz"))
    if images:
        test = [p for p in images if p.name.startswith("t10k")] or images[-1:]
        train = [p for p in images if p not in test]
        x, y = _read_idx(test[0], False), _idx_labels(test[0])
        x_train, y_train = (_read_idx(train[0], False), _idx_labels(train[0])) if train else (None, None)
        if x_train is not None and (y_train is None or len(x_train) != len(y_train)):
            x_train = y_train = None
        if y is not None and len(y) != len(x):
            raise _data_error(f"{test[0]} holds {len(x)} images but its labels file {len(y)} labels")
        return UserData(x, y, x_train, y_train, f"{test[0]} ({len(x)} images)")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise _data_error(f"--data: no IDX .gz files and no .png/.jpg/.jpeg images in {folder}")
    x = torch.stack([read_image(p) for p in paths])
    classes = sorted({p.parent.relative_to(folder).as_posix() for p in paths})
    y = None
    if len(classes) > 1:
        index = {c: i for i, c in enumerate(classes)}
        y = torch.tensor([index[p.parent.relative_to(folder).as_posix()] for p in paths])
    return UserData(x, y, x, y, f"{folder} ({len(x)} images, {len(classes)} folder(s))")


def _idx_labels(images: Path) -> Any | None:
    labels = images.with_name(images.name.replace("images-idx3", "labels-idx1"))
    return _read_idx(labels, True).long() if labels.is_file() else None


#: the classifier stage's output, used when run inside the project
PROJECT_CLASSIFIER = Path("classifier/classifier.pt")


def _classifier(args: argparse.Namespace, user: UserData) -> tuple[Any, str]:
    """--classifier, else the project's classifier stage output, else one trained here on
    the labelled images given; the string says which, for the JSON."""
    import torch

    from rnngen import classifier as clf
    from rnngen.checkpoint import CheckpointError

    path = args.classifier or (PROJECT_CLASSIFIER if PROJECT_CLASSIFIER.is_file() else None)
    if path is not None:
        try:
            return clf.load_classifier(path), str(path)
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"classifier {path}: {exc}") from exc
    if user.y_train is None or len(torch.unique(user.y_train)) < 2:
        raise _usage_error(
            "--classifier: the Fréchet classifier distance and inpainting accuracy need a classifier; pass "
            f"--classifier (e.g. the classifier stage's {PROJECT_CLASSIFIER}) or give labelled images "
            "(IDX with a train pair, or one subfolder per class) to train one"
        )
    n = len(user.x_train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
    val, train = perm[: max(1, n // 10)], perm[max(1, n // 10) :]
    cfg = clf.ClassifierConfig(seed=args.seed, epochs=args.classifier_epochs)
    model, metrics = clf.train_classifier(user.x_train[train], user.y_train[train], user.x_train[val],
                                          user.y_train[val], cfg, progress=False)
    return model, (f"trained here on {len(train)} of the given images for {cfg.epochs} epochs (validation "
                   f"accuracy {metrics['val_accuracy']:.3f}); pass --classifier for numbers comparable across runs")


def evaluate_user_data(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluate stage's metrics (rnngen.evaluate.report) on the user's images."""
    import torch

    from rnngen import promote
    from rnngen.evaluate import EvalConfig, report

    cfg = EvalConfig(seed=args.seed, k=args.k, batch_size=args.batch_size, n_samples=16,
                     max_images=args.max_images, n_quality=args.n_quality,
                     inpaint_images=args.inpaint_images, inpaint_iterations=args.iterations)
    if cfg.problems():
        raise _usage_error("; ".join(cfg.problems()))
    user = load_user_data(args.data)
    if min(len(user.x), args.max_images or len(user.x)) < 2:
        raise _data_error(f"--data: {user.description}: need at least 2 images (a covariance for the FCD)")
    loaded = promote.load(args.model)  # a bad model name fails before a classifier is trained
    classifier, classifier_note = _classifier(args, user)
    n = min(len(user.x), args.max_images or len(user.x))
    x = user.x[:n]
    y = user.y[:n] if user.y is not None else torch.zeros(n, dtype=torch.long)
    # the user's images are grey levels: binarize them once, seeded, as the evaluate stage does
    binarization = "none" if loaded.binarization == "none" else "dynamic"
    with tempfile.TemporaryDirectory() as pictures:
        metrics = report(loaded.model, x, y, classifier, cfg, binarization, Path(pictures), progress=False)
        if args.pictures:
            shutil.copytree(pictures, args.pictures, dirs_exist_ok=True)
    if user.y is None:  # no labels: accuracies against label 0 mean nothing
        metrics = {k: v for k, v in metrics.items() if "accuracy" not in k}
    return {
        "model": loaded.source,
        "data": user.description,
        "labelled": user.y is not None,
        "binarization": f"{binarization} (images binarized once with seed {args.seed})",
        "classifier": classifier_note,
        **metrics,
    }


def cmd_evaluate(args: argparse.Namespace) -> None:
    from rnngen.files import write_json

    result = evaluate_user_data(args)
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=2))


# ----------------------------------------------------------------------------- promote


def cmd_promote(args: argparse.Namespace) -> None:
    from rnngen import promote, settings
    from rnngen.config import ConfigError, from_dict, load_params
    from rnngen.evaluate import EvalConfig

    params = load_params(args.params) if args.params.is_file() else {}
    cfg = from_dict(promote.PromoteConfig, params.get("promote"), "promote")
    changes: dict[str, Any] = {}
    if args.margin is not None:
        changes["margin"] = args.margin
    if args.alias:
        changes["alias"] = args.alias
    if args.tolerance:
        changes["tolerances"] = {**cfg.tolerances, **dict(args.tolerance)}
    cfg = dataclasses.replace(cfg, **changes)
    if cfg.problems():
        raise ConfigError(cfg.problems(), "the command line")
    eval_cfg = settings.build(params, "evaluate")["evaluate"] if params.get("evaluate") else EvalConfig()
    rescore = None
    if args.split.is_dir():  # re-scores a champion that was evaluated on another test set
        rescore = promote.likelihood_rescorer(args.split, eval_cfg.seed, eval_cfg.batch_size)
    decision = promote.promote(
        cfg, args.report, run_json=args.run_json, metrics_json=args.metrics, version=args.version,
        name=args.name, rescore=rescore, force=args.force,
    )
    print(args.report.read_text(), end="")
    print(f"promotion: {decision.outcome} (report: {args.report})", file=sys.stderr)


# -------------------------------------------------------------------------------- info


def model_info(name: str, alias: str) -> dict[str, Any]:
    from rnngen import promote

    mlflow_client = promote.client()
    mv = promote.model_version(mlflow_client, name, alias)
    run = mlflow_client.get_run(mv.run_id)
    registered = mlflow_client.get_registered_model(name)
    return {
        "name": name,
        "alias": alias,
        "version": str(mv.version),
        "uri": f"models:/{name}@{alias}",
        "run_id": mv.run_id,
        "model": run.data.tags.get("model"),
        "created": mv.creation_timestamp,
        "metrics": {k: v for k, v in sorted(run.data.metrics.items()) if k.startswith("test_") or k in ("k", "n_test")},
        "promotion": {k.removeprefix("promotion."): v for k, v in sorted(mv.tags.items())
                      if k.startswith("promotion.")},
        "aliases": {f"@{a}": v for a, v in sorted(registered.aliases.items())},
        "tracking_uri": mlflow_client.tracking_uri,
    }


def cmd_info(args: argparse.Namespace) -> None:
    print(json.dumps(model_info(args.name, args.alias), indent=2))


# ------------------------------------------------------------------------------ parser


def _command(sub: Any, name: str, help_text: str, examples: str, func: Callable[[argparse.Namespace], None]) -> Any:
    p = sub.add_parser(
        name, help=help_text, description=help_text, epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    return p


def _model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="models:/NAME@ALIAS, models:/NAME/VERSION, a version number, or a checkpoint "
                        "path (.pt file or the train stage's models/ folder); default: %(default)s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnngen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run `rnngen COMMAND --help` for a command's options and examples",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "sample", "draw new images from a model and save them as one PNG grid", """\
  rnngen sample --out samples.png
  rnngen sample --model models:/rnngen/3 --n 16 --seed 1 --out v3.png
  rnngen sample --model models/model.pt --n 100 --temperature 0.7 --out cool.png
""", cmd_sample)
    _model_option(p)
    p.add_argument("--n", type=_positive_int, default=64, help="number of images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--temperature", type=_positive_float, default=1.0,
                   help="scale of the prior's standard deviation: < 1 gives cleaner, less varied "
                        "images (Gaussian-prior models; default: %(default)s)")
    p.add_argument("--nrow", type=_positive_int, default=None, help="images per row (default: square grid)")
    p.add_argument("--out", type=_png_out, default=Path("samples.png"), help="PNG to write (default: %(default)s)")

    p = _command(sub, "inpaint", "hide part of images and let the model complete it; writes a PNG with "
                 "rows original | masked | completed", """\
  rnngen inpaint --image digit.png --mask bottom_half --out panel.png
  rnngen inpaint --test-index 0 1 2 3 --split data/split --mask centre_square --out panel.png
  rnngen inpaint --model models:/rnngen/2 --image a.png b.png --mask my_mask.png --out panel.png
""", cmd_inpaint)
    _model_option(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", nargs="+", metavar="PNG", help="28x28 grayscale image file(s)")
    src.add_argument("--test-index", nargs="+", type=int, metavar="I", help="index(es) into the test split")
    p.add_argument("--split", type=Path, default=Path("data/split"),
                   help="split stage output, for --test-index (default: %(default)s)")
    p.add_argument("--mask", type=_mask_arg, required=True,
                   help=f"{' | '.join(MASK_KINDS)}, or a 28x28 grayscale PNG whose white pixels are hidden")
    p.add_argument("--iterations", type=_positive_int, default=20,
                   help="rounds of the pseudo-Gibbs sampler (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--out", type=_png_out, default=Path("inpainting.png"), help="PNG to write (default: %(default)s)")

    p = _command(sub, "evaluate", "score a model on images you bring; prints JSON: NLL bounds (nats/image, "
                 "bits/dim), Fréchet classifier distance, inpainting errors and accuracy", """\
  rnngen evaluate --data /usr/share/datasets/fashion-mnist --model models:/rnngen@champion
  rnngen evaluate --data my_digits/ --classifier classifier.pt --k 100 --out scores.json
  rnngen evaluate --data my_digits/ --model models/model.pt --max-images 500 --pictures my_pictures/

--data holds gzipped IDX files (the t10k-* pair is scored) or 28x28 grayscale PNG/JPEG images,
one subfolder per class (a flat folder is unlabelled: no accuracies). The metrics are the
evaluate stage's, under the same names. The classifier behind FCD and accuracy is --classifier,
else the project's classifier/classifier.pt, else one trained here on the labelled images given
(the IDX train pair, or the image folders).
""", cmd_evaluate)
    _model_option(p)
    p.add_argument("--data", type=Path, required=True, help="folder of IDX .gz files or of PNG/JPEG images")
    p.add_argument("--k", type=_positive_int, default=10,
                   help="importance samples for the IWAE bound (default: %(default)s)")
    p.add_argument("--classifier", type=Path, default=None,
                   help="classifier file (rnngen.classifier.save_classifier) for FCD and accuracy")
    p.add_argument("--classifier-epochs", type=_positive_int, default=3,
                   help="epochs when a classifier is trained on the given data (default: %(default)s)")
    p.add_argument("--n-quality", type=_positive_int, default=1000,
                   help="samples and real images for the FCD, at most the images given (default: %(default)s)")
    p.add_argument("--inpaint-images", type=_positive_int, default=200,
                   help="images completed under each mask (default: %(default)s)")
    p.add_argument("--iterations", type=_positive_int, default=20,
                   help="pseudo-Gibbs rounds per completion (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=0, help="score only the first N images (default: all)")
    p.add_argument("--batch-size", type=_positive_int, default=100, help="images per forward pass")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    p.add_argument("--pictures", type=Path, default=None,
                   help="also save the samples, reconstructions and inpainting panels in this folder")

    p = _command(sub, "promote", "compare the model `dvc repro` just registered with the champion and move "
                 "the alias only if it wins; writes a markdown report and tags the model version", """\
  rnngen promote                                  # after dvc repro: models/run.json + reports/metrics.json
  rnngen promote --margin 1.0 --tolerance test_nll_elbo=0.5
  rnngen promote --version 3 --force              # roll back: make version 3 the champion

The rule (params.yaml `promote:`): the challenger's test_nll_iwae must be lower than the
champion's by at least --margin nats, and no other listed metric may be worse by more than its
tolerance. The first model becomes champion. This changes the registry, so it is not a DVC stage.
""", cmd_promote)
    p.add_argument("--run-json", type=Path, default=Path("models/run.json"),
                   help="train stage record (default: %(default)s)")
    p.add_argument("--metrics", type=Path, default=Path("reports/metrics.json"),
                   help="evaluate stage metrics (default: %(default)s)")
    p.add_argument("--report", type=Path, default=Path("reports/promotion.md"),
                   help="markdown report to write (default: %(default)s)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file (default: %(default)s)")
    p.add_argument("--split", type=Path, default=Path("data/split"),
                   help="test split for re-scoring a champion evaluated on other data (default: %(default)s)")
    p.add_argument("--margin", type=float, default=None, help="nats the primary metric must improve by")
    p.add_argument("--tolerance", type=_tolerance_arg, action="append", metavar="METRIC=VALUE",
                   help="how much worse METRIC may get (repeatable)")
    p.add_argument("--alias", default=None, help="alias to move (default: params promote.alias, champion)")
    p.add_argument("--version", default=None, help="challenger version (default: the one in --run-json)")
    p.add_argument("--name", default=None, help="registered model name, with --version (default: rnngen)")
    p.add_argument("--force", action="store_true", help="move the alias whatever the metrics say")

    p = _command(sub, "info", "show which version holds the champion alias and its held-out metrics (JSON)", """\
  rnngen info
  rnngen info --name rnngen --alias champion
  MLFLOW_TRACKING_URI=http://mlflow:5000 rnngen info
""", cmd_info)
    p.add_argument("--name", default="rnngen", help="registered model name (default: %(default)s)")
    p.add_argument("--alias", default="champion", help="alias to look up (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr readable
    return guard(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
