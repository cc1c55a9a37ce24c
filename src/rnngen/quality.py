"""Sample quality without Inception weights, judged by a classifier trained on real digits.

Both sides are the same kind of image, the kind the classifier was trained on: by default
binary samples drawn from p(x) (``sample_binary``) against the real test images binarized
once (seeded), with a classifier trained on binarized images; with ``classifier.binarize:
false``, the models' grey pictures (``sample``: Bernoulli means) against grey levels.

- Fréchet classifier distance (FCD): the Fréchet distance of Heusel et al. 2017 (FID)
  between Gaussians fitted to the classifier's penultimate features of samples and of real
  test images. The estimate is biased upwards at small n, so both sides always hold the same
  number of images and only numbers at equal n compare.
- Classifier score: the Inception Score formula of Salimans et al. 2016,
  exp(E_x KL(p(y|x) || p(y))), on the classifier's probabilities: 1 when every image gets
  the same prediction, the number of classes for confident predictions spread evenly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from rnngen.classifier import DigitClassifier, as_images, as_judged, features, probabilities
from rnngen.frechet import frechet_distance
from rnngen.models import GenerativeModel


def classifier_score(probs: Tensor | np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))) over the rows of ``(N, C)`` probabilities (one split)."""
    p_y_x = torch.as_tensor(probs, dtype=torch.float64)  # p(y|x), one row per image
    p_y = p_y_x.mean(0, keepdim=True)  # marginal over the set
    kl = (torch.xlogy(p_y_x, p_y_x) - torch.xlogy(p_y_x, p_y)).sum(1)  # xlogy: 0 log 0 = 0
    return float(kl.mean().exp())


@torch.no_grad()
def draw_samples(model: GenerativeModel, n: int, seed: int, batch_size: int = 250, *, binary: bool = False,
                 y: Tensor | None = None) -> Tensor:
    """``n`` samples ``(n, 1, 28, 28)`` on the CPU from a generator seeded on the model's device:
    grey pictures (``sample``), or with ``binary`` draws of p(x) (``sample_binary``); of
    classes ``y`` ``(n,)`` for a conditional model."""
    model.eval()
    gen = torch.Generator(device=model.device).manual_seed(seed)
    draw = model.sample_binary if binary else model.sample
    parts = [draw(min(batch_size, n - i), generator=gen, y=None if y is None else y[i : i + batch_size]).cpu()
             for i in range(0, n, batch_size)]
    return torch.cat(parts)


def sample_quality(
    model: GenerativeModel,
    classifier: DigitClassifier,
    real_images: Tensor | np.ndarray,
    n: int,
    seed: int,
    *,
    batch_size: int = 250,
    labels: Tensor | None = None,
) -> dict[str, float]:
    """FCD, classifier scores and mean confidences of ``n`` samples against ``n`` real images.
    With the real images' ``labels`` (a conditional model) each sample is drawn of the class of
    its real counterpart, so both sides hold the same classes, ``asked_accuracy`` is the
    share of samples the classifier takes for the class asked (overall, and per class as
    ``asked_accuracy_<class>``), and ``fcd_<class>`` the FCD within each class.

    ``real_images`` are grey levels (or binary images); a seeded random subset of ``n`` is
    taken and put in the classifier's kind (:func:`rnngen.classifier.as_judged`), and the samples
    are drawn in that kind too (see the module docstring).
    """
    real = as_images(real_images)
    if not 2 <= n <= len(real):
        raise ValueError(f"sample quality: n must be between 2 and the {len(real)} real images given, got {n}")
    pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:n]
    real = as_judged(classifier, real[pick], seed)
    asked = None if labels is None else torch.as_tensor(labels)[pick].long()
    fake = draw_samples(model, n, seed, batch_size, binary=classifier.binary, y=asked)
    p_fake, p_real = probabilities(classifier, fake), probabilities(classifier, real)
    f_fake, f_real = features(classifier, fake), features(classifier, real)
    out = {} if asked is None else asked_accuracy(p_fake, asked) | per_class_fcd(f_fake, f_real, asked)
    return out | {
        "fcd": frechet_distance(f_fake, f_real),
        "classifier_score_samples": classifier_score(p_fake),
        "classifier_score_real": classifier_score(p_real),
        "confidence_samples": p_fake.max(1).values.mean().item(),
        "confidence_real": p_real.max(1).values.mean().item(),
        "n_quality": float(n),
    }


def per_class_fcd(f_fake: Tensor, f_real: Tensor, asked: Tensor) -> dict[str, float]:
    """``fcd_<class>``: the FCD of the samples asked of each class against the real images of
    that class (the same images, one for one). About n / classes images a side, so more biased
    upwards than the overall figure: compare them with each other, at equal n."""
    return {f"fcd_{int(c)}": frechet_distance(f_fake[asked == c], f_real[asked == c])
            for c in torch.unique(asked) if int((asked == c).sum()) >= 2}


def asked_accuracy(p: Tensor, asked: Tensor) -> dict[str, float]:
    """The share of samples whose most probable class (``p`` ``(n, classes)``) is the one asked
    for, overall and per asked class."""
    hit = (p.argmax(1) == asked).float()
    out = {"asked_accuracy": hit.mean().item()}
    out |= {f"asked_accuracy_{int(c)}": hit[asked == c].mean().item() for c in torch.unique(asked)}
    return out
