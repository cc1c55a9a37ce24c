"""`rnngen`: use a trained model without writing code.

    rnngen sample    n new images as a PNG grid
    rnngen inpaint   complete the hidden part of images: original | masked | completed
    rnngen evaluate  NLL bounds, Fréchet classifier distance, inpainting scores (test split or your images)
    rnngen promote   move the champion alias to the model dvc repro just made, if it wins
    rnngen info      which version is champion, and its metrics
    rnngen server    a team's tracking server and tuning database (PostgreSQL + mlflow server)

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
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rnngen.errors import guard

MASK_KINDS = ("bottom_half", "centre_square", "random_pixels")


# ------------------------------------------------------------------------------ inputs


def _usage_error(message: str) -> Exception:
    from rnngen.config import ConfigError

    return ConfigError([message], "the command line")


@dataclasses.dataclass(frozen=True)
class Defaults:
    """What the commands take from params.yaml (flags override): the registry name and alias
    behind the default model, and the evaluate stage's settings."""

    model_name: str
    alias: str
    evaluate: Any  # rnngen.evaluate.EvalConfig
    promote: Any  # rnngen.promote.PromoteConfig

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}@{self.alias}"


def defaults(path: Path) -> Defaults:
    """params.yaml's ``tracking.model_name``, ``promote.alias`` and ``evaluate.*`` (the code
    defaults when the file is absent, e.g. outside the project)."""
    from rnngen.config import gather, load_params, section
    from rnngen.evaluate import EvalConfig
    from rnngen.promote import PromoteConfig
    from rnngen.tracking import TrackingConfig

    params = load_params(path) if path.is_file() else {}
    built = gather(tracking=lambda: section(TrackingConfig, params, "tracking"),
                   promote=lambda: section(PromoteConfig, params, "promote"),
                   evaluate=lambda: section(EvalConfig, params, "evaluate"))
    return Defaults(built["tracking"].model_name, built["promote"].alias, built["evaluate"], built["promote"])


def _load_model(args: argparse.Namespace) -> Any:
    from rnngen import registry

    d = defaults(args.params)
    return registry.load(args.model or d.model_uri, d.model_name)


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


# ------------------------------------------------------------------------------ sample


def cmd_sample(args: argparse.Namespace) -> None:
    import torch

    from rnngen.files import atomic_file
    from rnngen.pictures import save_grid

    loaded = _load_model(args)
    gen = torch.Generator(device=loaded.model.device).manual_seed(args.seed)
    with torch.no_grad():
        images = loaded.model.sample(args.n, generator=gen, temperature=args.temperature).cpu()
    with atomic_file(args.out) as tmp:
        save_grid(images, tmp, nrow=args.nrow or math.ceil(math.sqrt(args.n)))
    print(f"{args.n} samples of {loaded.source} (seed {args.seed}, temperature {args.temperature:g}) -> {args.out}")


# ----------------------------------------------------------------------------- inpaint


def load_mask(spec: str, n: int, seed: int) -> Any:
    """Boolean "missing" mask ``(n, 1, 28, 28)``: a kind from rnngen.inpaint, or an image file
    whose white pixels (>= 128) are hidden (read as every image is: grey, 28x28)."""
    import torch

    from rnngen import data, inpaint

    if spec in MASK_KINDS:
        return inpaint.make_mask(spec, n, torch.Generator().manual_seed(seed))
    mask = torch.from_numpy(data.read_image(spec)) >= 128  # (28, 28)
    if not mask.any():
        raise data.DataError(f"mask {spec} hides no pixel: white (>= 128) marks the pixels to complete")
    return mask.view(1, 1, 28, 28).expand(n, 1, 28, 28).clone()


def cmd_inpaint(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from rnngen import data, inpaint, pictures
    from rnngen.files import atomic_file

    if args.image:
        x_u8 = torch.from_numpy(np.stack([data.read_image(p) for p in args.image]))
        what = ", ".join(args.image)
    else:
        x_test, _ = data.load_split(args.split, "test")
        bad = [i for i in args.test_index if not 0 <= i < len(x_test)]
        if bad:
            raise data.DataError(f"--test-index {bad[0]}: the test split in {args.split} has {len(x_test)} images")
        x_u8 = x_test[args.test_index]
        what = f"test images {args.test_index} of {args.split}"
    original = data.to_unit(x_u8)  # (n, 1, 28, 28)
    mask = load_mask(args.mask, len(original), args.seed)
    loaded = _load_model(args)
    gen = torch.Generator(device=loaded.model.device).manual_seed(args.seed)
    completed = inpaint.inpaint(loaded.model, original, mask, args.iterations, gen).cpu()
    with atomic_file(args.out) as tmp:
        pictures.inpainting_panel(original, mask, completed, tmp)
    print(f"inpainted {what} ({args.mask}, {args.iterations} iterations) with {loaded.source} -> {args.out}")


# ---------------------------------------------------------------------------- evaluate


def evaluate_config(args: argparse.Namespace, base: Any) -> Any:
    """params.yaml's ``evaluate.*`` with the flags given on the command line replacing it."""
    flags = {"seed": args.seed, "k": args.k, "batch_size": args.batch_size, "max_images": args.max_images,
             "n_quality": args.n_quality, "inpaint_images": args.inpaint_images,
             "inpaint_iterations": args.iterations}
    cfg = dataclasses.replace(base, **{k: v for k, v in flags.items() if v is not None})
    if cfg.problems():
        raise _usage_error("; ".join(cfg.problems()))
    return cfg


def evaluate_images(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluate stage's metrics (rnngen.evaluate.report) on the test split (``--split``:
    the same numbers as reports/metrics.json at the same settings) or on the user's images."""
    import torch

    from rnngen import classifier as clf
    from rnngen import data
    from rnngen.evaluate import report

    d = defaults(args.params)
    cfg = evaluate_config(args, d.evaluate)
    if args.split is not None:
        x, y = data.load_split(args.split, "test")
        user = data.UserData(x, y, None, None, f"the test split of {args.split} ({len(x)} images)")
    else:
        user = data.load_user_data(args.data)
    n = min(len(user.x), cfg.max_images or len(user.x))
    if n < 2:
        raise data.DataError(f"{user.description}: need at least 2 images (a covariance for the FCD)")
    loaded = _load_model(args)  # a bad model name fails before a classifier is trained
    classifier_path = args.classifier or (clf.PROJECT_CLASSIFIER if clf.PROJECT_CLASSIFIER.is_file() else None)
    if classifier_path is not None:
        judge, judge_note = clf.load_classifier(classifier_path), str(classifier_path)
    else:
        judge, judge_note = clf.fallback_classifier(user.x_train if user.x_train is not None else user.x,
                                                    user.y_train, cfg.seed, args.classifier_epochs)
    x = user.x[:n]
    y = user.y[:n] if user.y is not None else torch.zeros(n, dtype=torch.long)
    # the test split is binarized as the model was trained; a user's grey images once, seeded
    binarization = loaded.binarization if args.split is not None or loaded.binarization == "none" else "dynamic"
    with tempfile.TemporaryDirectory() as pictures:
        metrics = report(loaded.model, x, y, judge, cfg, binarization, Path(pictures), progress=False)
        if args.pictures:
            shutil.copytree(pictures, args.pictures, dirs_exist_ok=True)
    if user.y is None:  # no labels: accuracies against label 0 mean nothing
        metrics = {k: v for k, v in metrics.items() if "accuracy" not in k}
    return {
        "model": loaded.source,
        "data": user.description,
        "labelled": user.y is not None,
        "binarization": f"{binarization} (images binarized once with seed {cfg.seed})",
        "classifier": judge_note,
        **metrics,
    }


def cmd_evaluate(args: argparse.Namespace) -> None:
    from rnngen.files import write_json

    result = evaluate_images(args)
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=2))


# ----------------------------------------------------------------------------- promote


def cmd_promote(args: argparse.Namespace) -> None:
    from rnngen import promote

    d = defaults(args.params)
    cfg = d.promote
    changes: dict[str, Any] = {}
    if args.margin is not None:
        changes["margin"] = args.margin
    if args.alias:
        changes["alias"] = args.alias
    if args.tolerance:
        changes["tolerances"] = {**cfg.tolerances, **dict(args.tolerance)}
    cfg = dataclasses.replace(cfg, **changes)
    if cfg.problems():
        raise _usage_error("; ".join(cfg.problems()))
    rescore = None
    if args.split.is_dir():  # re-scores a champion that was evaluated on another test set
        rescore = promote.likelihood_rescorer(args.split, d.evaluate.batch_size)
    decision = promote.promote(
        cfg, args.report, run_json=args.run_json, metrics_json=args.metrics, version=args.version,
        name=args.name or (None if args.version is None else d.model_name), rescore=rescore, force=args.force,
        default_name=d.model_name,
    )
    print(args.report.read_text(), end="")
    print(f"promotion: {decision.outcome} (report: {args.report})", file=sys.stderr)


# -------------------------------------------------------------------------------- info


def cmd_info(args: argparse.Namespace) -> None:
    from rnngen import registry

    d = defaults(args.params)
    print(json.dumps(registry.model_info(args.name or d.model_name, args.alias or d.alias), indent=2))


# ------------------------------------------------------------------------------ server


def cmd_server(args: argparse.Namespace) -> None:
    from rnngen import server

    server.serve(args.dir, args.pg_port, args.port, args.host)


# ------------------------------------------------------------------------------ parser


def _command(sub: Any, name: str, help_text: str, examples: str, func: Callable[[argparse.Namespace], None]) -> Any:
    p = sub.add_parser(
        name, help=help_text, description=help_text, epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    p.add_argument("--params", type=Path, default=Path("params.yaml"),
                   help="where the defaults come from: tracking.model_name, promote.alias, evaluate.* "
                        "(default: %(default)s; code defaults when it is absent)")
    return p


def _model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="models:/NAME@ALIAS, models:/NAME/VERSION, a version number, or a checkpoint "
                        "path (.pt file or the train stage's models/ folder); default: "
                        "models:/<tracking.model_name>@<promote.alias> from --params, i.e. models:/rnngen@champion")


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
                   help="< 1 gives cleaner, less varied images: the VAEs and DRAW scale their prior's "
                        "standard deviation by it, PixelRNN divides its logits by it (default: %(default)s)")
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
                   help="rounds of the pseudo-Gibbs sampler of the latent-variable models; PixelRNN "
                        "completes in one raster pass and ignores it (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--out", type=_png_out, default=Path("inpainting.png"), help="PNG to write (default: %(default)s)")

    p = _command(sub, "evaluate", "score a model on the test split or on images you bring; prints JSON: NLL "
                 "bounds (nats/image, bits/dim), Fréchet classifier distance, inpainting errors and accuracy", """\
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
""", cmd_evaluate)
    _model_option(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", type=Path, default=None, help="split stage output: score its test split")
    src.add_argument("--data", type=Path, help="folder of IDX .gz files or of PNG/JPEG images")
    p.add_argument("--k", type=_positive_int, default=None,
                   help="importance samples for the IWAE bound (default: evaluate.k)")
    p.add_argument("--classifier", type=Path, default=None,
                   help="classifier file (rnngen.classifier.save_classifier) for FCD and accuracy")
    p.add_argument("--classifier-epochs", type=_positive_int, default=3,
                   help="epochs when a classifier is trained on the given data (default: %(default)s)")
    p.add_argument("--n-quality", type=_positive_int, default=None,
                   help="samples and real images for the FCD, at most the images given (default: evaluate.n_quality)")
    p.add_argument("--inpaint-images", type=_positive_int, default=None,
                   help="images completed under each mask (default: evaluate.inpaint_images)")
    p.add_argument("--iterations", type=_positive_int, default=None,
                   help="pseudo-Gibbs rounds per completion (default: evaluate.inpaint_iterations)")
    p.add_argument("--max-images", type=int, default=None,
                   help="score only the first N images, 0 = all (default: evaluate.max_images)")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="images per forward pass (default: evaluate.batch_size)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: evaluate.seed)")
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
    p.add_argument("--split", type=Path, default=Path("data/split"),
                   help="test split for re-scoring a champion evaluated on other data (default: %(default)s)")
    p.add_argument("--margin", type=float, default=None, help="nats the primary metric must improve by")
    p.add_argument("--tolerance", type=_tolerance_arg, action="append", metavar="METRIC=VALUE",
                   help="how much worse METRIC may get (repeatable)")
    p.add_argument("--alias", default=None, help="alias to move (default: promote.alias)")
    p.add_argument("--version", default=None, help="challenger version (default: the one in --run-json)")
    p.add_argument("--name", default=None, help="registered model name, with --version (default: tracking.model_name)")
    p.add_argument("--force", action="store_true", help="move the alias whatever the metrics say")

    p = _command(sub, "info", "show which version holds the champion alias and its held-out metrics (JSON)", """\
  rnngen info
  rnngen info --name rnngen --alias champion
  MLFLOW_TRACKING_URI=http://mlflow:5000 rnngen info
""", cmd_info)
    p.add_argument("--name", default=None, help="registered model name (default: tracking.model_name)")
    p.add_argument("--alias", default=None, help="alias to look up (default: promote.alias)")

    text = "start a team's tracking server and tuning database: PostgreSQL + mlflow server (until Ctrl-C)"
    p = sub.add_parser("server", help=text, description=text, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="""examples:
  rnngen server                                   # then, in the shell that runs the pipeline:
  export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
  export RNNGEN_OPTUNA_STORAGE=postgresql+psycopg2://rnngen@127.0.0.1:5433/optuna
  rnngen server --dir /srv/rnngen --port 5001 --pg-port 5434

PostgreSQL listens on 127.0.0.1 only and trusts local connections; needs the PostgreSQL server
(apt-get install postgresql) and the driver (pip install -e '.[server]').""")
    p.set_defaults(func=cmd_server)
    p.add_argument("--dir", type=Path, default=Path(".rnngen-server"),
                   help="folder of the PostgreSQL cluster, the logs and the artifacts (default: %(default)s)")
    p.add_argument("--port", type=int, default=5000, help="mlflow server port (default: %(default)s)")
    p.add_argument("--pg-port", type=int, default=5433, help="PostgreSQL port (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface mlflow server listens on (default: %(default)s; 0.0.0.0 for a team)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr readable
    return guard(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
