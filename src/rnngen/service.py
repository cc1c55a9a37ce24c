"""The registered model in service: one MLflow ``python_function`` model that scores, draws
and repairs images, and the three functions behind it, which the CLI calls too.

``mlflow models serve -m models:/rnngen@champion`` answers ``POST /invocations`` with a JSON
body ``{"inputs": ..., "params": {"task": ...}}``:

- ``score`` (the default): ``inputs`` are binarized images, ``(B, 28, 28)``, ``(B, 1, 28, 28)``
  or ``(B, 784)``; the answer is each image's negative log-likelihood in nats (exact for
  PixelRNN, else the importance-weighted bound with :data:`SCORE_K` samples, seeded). A model
  without a likelihood (a GAN) refuses it with a 400 that says so.
- ``sample``: ``n`` new images (``seed``, ``temperature``; a conditional PixelRNN also
  ``guidance``, else its own), exactly what ``rnngen sample --seed`` draws; ``inputs`` are
  ignored (send ``[]``).
- ``inpaint``: ``inputs`` are images in [0, 1]; ``mask`` names a kind of hole
  (:data:`rnngen.inpaint.MASKS`) or ``mask_pixels`` lists 784 (one mask for every image) or
  784 x B zeros and ones, 1 = hidden; ``effort`` and ``seed`` as ``rnngen inpaint``. The
  answer is the completed images, observed pixels exactly as sent.

A conditional model (``model.<name>.conditional``) takes ``labels``: one class for every image
of the request, or one per image (``sample``: per drawn image); an unconditional one refuses them.
A conditional PixelRNN answers without them too, as p(x), the mixture over its classes (it draws
a class, or infers it from what it sees); the others need them.

``sample`` and ``inpaint`` answer ``(B, 28, 28)`` arrays, or with ``"format": "png"`` one
base64 PNG per image. A request the service cannot answer raises an MLflow
``INVALID_PARAMETER_VALUE`` error, which the scoring server turns into a 400 whose message says
what to change; the limits below keep one request from holding the server for minutes.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnngen import inpaint
from rnngen.data import PIXELS, SIDE
from rnngen.models import GenerativeModel
from rnngen.models.base import LabelError, Labels, NoLikelihoodError, SamplingError

TASKS = ("score", "sample", "inpaint")
#: importance samples per image behind the served score
SCORE_K = 16
#: images per score or inpaint request
MAX_IMAGES = 256
#: images per sample request
MAX_SAMPLES = 64
#: sampler work per image per inpaint request
MAX_EFFORT = 64
#: images x effort per inpaint request: 22.5 s for the default PixelRNN on one serving worker's
#: thread (docs/serving.md), a third of the scoring server's 60 s request timeout
MAX_WORK = 4096
#: the params a request may carry, with their defaults (types as MLflow's ParamSpec names them)
PARAMS: dict[str, tuple[str, Any]] = {
    "task": ("string", "score"),
    "n": ("long", 16),
    "seed": ("long", 0),
    "temperature": ("double", 1.0),
    "mask": ("string", "centre_square"),
    "mask_pixels": ("long", []),
    "effort": ("long", 32),
    "format": ("string", "array"),
    "labels": ("long", []),
    "guidance": ("double", -1.0),  # < 0: the model's own (model.pixelrnn.guidance)
}


class RequestError(ValueError):
    """A request the service refuses; the message says what to change."""


# ------------------------------------------------------------------ the three uses


def draw(model: GenerativeModel, n: int, seed: int, temperature: float = 1.0, y: Labels = None,
         guidance: float | None = None) -> Tensor:
    """``n`` new images (Bernoulli means, ``(n, 1, 28, 28)``, CPU), seeded; of classes ``y``
    (:meth:`~rnngen.models.GenerativeModel.labels`) for a conditional model, with
    classifier-free ``guidance`` when given (else the model's own)."""
    y = model.labels(y, n)
    if guidance is not None:
        model = model.with_sampling(guidance=guidance)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    with torch.no_grad():
        return model.eval().sample(n, generator=generator, temperature=temperature, y=y).cpu()


def repair(model: GenerativeModel, x: Tensor, mask: Tensor, effort: int, seed: int, y: Labels = None) -> Tensor:
    """``x`` with its pixels under ``mask`` completed (Bernoulli means, observed pixels as given)."""
    y = model.labels(y, len(x))
    generator = torch.Generator(device=model.device).manual_seed(seed)
    return inpaint.inpaint(model, x, mask, effort, generator, y=y).means.cpu()


def score(model: GenerativeModel, x: Tensor, y: Labels = None) -> np.ndarray:
    """Each binarized image's negative log-likelihood in nats, ``(B,)``, seeded (of p(x | y)
    for a conditional model)."""
    y = model.labels(y, len(x))
    gen = torch.Generator(device=model.device).manual_seed(0)
    with torch.no_grad():
        logw = model.eval().log_weights(x.to(model.device), SCORE_K, generator=gen, y=y).double()
        nll = -(torch.logsumexp(logw, 0) - math.log(SCORE_K))
    return nll.float().cpu().numpy()


# ------------------------------------------------------------------------- requests


def _images(model_input: Any, task: str) -> Tensor:
    """The request's images as ``(B, 1, 28, 28)`` float32, or a :class:`RequestError`."""
    try:
        array = np.asarray(model_input, dtype=np.float32)
    except (TypeError, ValueError):
        raise RequestError(f"task {task!r}: inputs must be an array of numbers (images of 28x28 pixels)") from None
    if array.size == 0:
        raise RequestError(f"task {task!r} needs images in inputs: an array of shape (B, 28, 28)")
    if array.shape[1:] not in ((PIXELS,), (SIDE, SIDE), (1, SIDE, SIDE)):
        raise RequestError(f"task {task!r}: images must be 28x28; send shape (B, 28, 28), (B, 1, 28, 28) or "
                           f"(B, 784), got {tuple(array.shape)}")
    x = torch.from_numpy(array.reshape(-1, 1, SIDE, SIDE).copy())
    if len(x) > MAX_IMAGES:
        raise RequestError(f"task {task!r}: at most {MAX_IMAGES} images per request, got {len(x)}; split the batch")
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise RequestError(f"task {task!r}: pixels must be in [0, 1] (divide 8-bit images by 255)")
    return x


def _mask(params: dict[str, Any], n: int) -> Tensor:
    pixels = np.asarray(params["mask_pixels"])
    if pixels.size:
        if pixels.size not in (PIXELS, n * PIXELS) or not np.isin(pixels, (0, 1)).all():
            raise RequestError(f"mask_pixels must hold 784 (one mask for every image) or 784 x {n} zeros and "
                               f"ones, 1 = hidden; got {pixels.size} values")
        mask = torch.from_numpy(pixels.astype(bool)).view(-1, 1, SIDE, SIDE).expand(n, 1, SIDE, SIDE).clone()
    elif params["mask"] in inpaint.MASKS:
        mask = inpaint.make_mask(params["mask"], n, torch.Generator().manual_seed(int(params["seed"])))
    else:
        raise RequestError(f"unknown mask {params['mask']!r}; choose one of {', '.join(inpaint.MASKS)}, "
                           "or send mask_pixels")
    if not mask.flatten(1).any(1).all():
        raise RequestError("the mask hides no pixel of some image: nothing to repair (1 in mask_pixels = hidden)")
    return mask


def _bounded(params: dict[str, Any], name: str, low: float, high: float) -> Any:
    value = params[name]
    if not low <= value <= high:
        raise RequestError(f"{name} must be in [{low:g}, {high:g}], got {value}")
    return value


def _pictures(images: Tensor, fmt: str) -> Any:
    """``(B, 28, 28)`` float32 array, or one base64 PNG (8-bit grey) per image."""
    array = images.view(-1, SIDE, SIDE).numpy().astype(np.float32)
    if fmt == "array":
        return array
    from PIL import Image

    out = []
    for image in array:
        buffer = io.BytesIO()
        Image.fromarray((image * 255).round().astype(np.uint8), mode="L").save(buffer, format="PNG")
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


def answer(model: GenerativeModel, model_input: Any, params: dict[str, Any] | None = None) -> Any:
    """One request: ``params`` over :data:`PARAMS`' defaults; raises :class:`RequestError`."""
    try:
        return _answer(model, model_input, params)
    except LabelError as exc:  # a label the model cannot take: the caller's to fix
        raise RequestError(str(exc).replace("give each image a label", "send labels")) from None
    except NoLikelihoodError as exc:  # score asked of a GAN
        raise RequestError(f"task 'score': {exc}") from None
    except SamplingError as exc:  # guidance asked of a model without it
        raise RequestError(f"task 'sample': {exc}") from None


def _answer(model: GenerativeModel, model_input: Any, params: dict[str, Any] | None) -> Any:
    p = {name: default for name, (_, default) in PARAMS.items()} | (params or {})
    task, fmt = p["task"], p["format"]
    if task not in TASKS:
        raise RequestError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if fmt not in ("array", "png"):
        raise RequestError(f"unknown format {fmt!r}; choose array or png")
    if task == "sample":
        n = _bounded(p, "n", 1, MAX_SAMPLES)
        temperature = _bounded(p, "temperature", 1e-3, 10.0)
        guidance = None if p["guidance"] < 0 else float(_bounded(p, "guidance", 0.0, 20.0))
        return _pictures(draw(model, int(n), int(p["seed"]), float(temperature), p["labels"], guidance), fmt)
    x = _images(model_input, task)
    if task == "score":
        if not ((x == 0) | (x == 1)).all():
            raise RequestError("task 'score' needs binarized pixels (0 or 1): the likelihood is of binary images; "
                               "threshold grey images at 0.5 first")
        return score(model, x, p["labels"])
    effort = _bounded(p, "effort", 1, MAX_EFFORT)
    if len(x) * effort > MAX_WORK:
        raise RequestError(f"inpaint: images x effort must be at most {MAX_WORK}, got {len(x)} x {effort}; "
                           "send fewer images per request or lower effort")
    return _pictures(repair(model, x, _mask(p, len(x)), int(effort), int(p["seed"]), p["labels"]), fmt)


class Service:
    """What ``mlflow.pyfunc`` loads: :func:`answer`, with refusals as MLflow's 400 errors."""

    def __init__(self, model: GenerativeModel) -> None:
        self.model = model.eval()

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return answer(self.model, model_input, params)
        except RequestError as exc:
            raise MlflowException.invalid_parameter_value(str(exc)) from None


def signature() -> Any:
    """The logged signature: no input schema (``sample`` takes none; :func:`_images` checks the
    others with messages that name the fix) and a ``ParamSchema`` of :data:`PARAMS`."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    specs = [ParamSpec(name, kind, default, shape=(-1,) if isinstance(default, list) else None)
             for name, (kind, default) in PARAMS.items()]
    return ModelSignature(inputs=None, params=ParamSchema(specs))

