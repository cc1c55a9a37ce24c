"""``--image`` / ``--test-index``: the images a command works on, and the labels they carry."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rnngen import layout


def add_images(command: argparse.ArgumentParser) -> None:
    """--image or --test-index (with --split): the images a command works on; --label for a
    conditional model."""
    source = command.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", nargs="+", metavar="PNG", help="28x28 grayscale image file(s)")
    source.add_argument("--test-index", nargs="+", type=int, metavar="I", help="index(es) into the test split")
    command.add_argument("--split", type=Path, default=layout.SPLIT,
                         help="split stage output, for --test-index (default: %(default)s)")
    command.add_argument("--label", type=int, default=None,
                         help="a conditional model's class for every image (default with --test-index: "
                              "the test labels where the model needs one; a conditional PixelRNN infers it)")


def labels(args: argparse.Namespace, model: Any, n: int) -> Any:
    """The labels a conditional model takes for the images: --label for all, else the test
    split's for --test-index; None for an unconditional model (which refuses --label) and for one
    that also models p(x) (``class_optional``: it infers the class)."""
    from rnngen import data

    if args.label is not None:
        return args.label  # one class for every image: the model reads it (GenerativeModel.labels)
    if not model.needs_labels:
        return None
    if args.test_index is None:
        raise data.DataError(f"{model.name} is conditional: give the images' class with --label")
    return data.load_split(args.split, "test")[1][args.test_index]


def read_images(args: argparse.Namespace) -> tuple[Any, str]:
    """The images of :func:`add_images`' options in [0, 1], ``(n, 1, 28, 28)``, and what they are."""
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
