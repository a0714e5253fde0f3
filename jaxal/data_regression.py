"""Regression data sets with real-valued targets, built offline.

Each loader returns raw ``(x_train, y_train, x_test, y_test)`` float arrays;
:func:`jaxal.data.load` standardises inputs and targets with the training statistics
and packs them into a :class:`jaxal.data.Dataset` with ``task="regression"``. So every
RMSE jaxal reports for these sets is in units of the training targets' standard
deviation: an RMSE of 1.0 is no better than predicting the training mean, whatever
the set.

- ``diabetes``: scikit-learn's diabetes data (442 patients, 10 features, disease
  progression after one year); a seeded 75/25 split.
- ``friedman1``, ``friedman2``, ``friedman3``: scikit-learn's Friedman generators
  (10, 4 and 4 features; smooth non-linear targets plus Gaussian noise), drawn from
  the seed; option ``num_samples`` (default 2,500), an 80/20 split. Friedman #1's
  target depends on 5 of its 10 features, so half the inputs are distractors.
- ``digits_angle``: an image regression task built from scikit-learn's 8×8 digits:
  each image is rotated by an angle drawn uniformly from ``[-max_angle, max_angle]``
  degrees (default 60; bilinear interpolation, zeros outside), and the target is
  the angle. Inputs ``[n, 8, 8, 1]``, so the MLP and the CNN both take them; option
  ``rotations`` makes several rotated copies of each training image (default 1). The
  split is by source image, so no test digit is seen rotated in training.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LOADERS", "friedman", "diabetes", "digits_angle"]


def _split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation cut into (train rows, test rows)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def diabetes(seed: int = 0, test_fraction: float = 0.25) -> tuple[np.ndarray, ...]:
    """scikit-learn's diabetes regression set, split 75/25 from ``seed``."""
    from sklearn.datasets import load_diabetes

    _check_fraction(test_fraction)
    d = load_diabetes()
    tr, te = _split(d.data.shape[0], test_fraction, seed)
    return d.data[tr], d.target[tr], d.data[te], d.target[te]


def friedman(which: int, seed: int = 0, num_samples: int = 2500, noise: float = 1.0) -> tuple[np.ndarray, ...]:
    """Friedman #``which`` (1, 2 or 3) with ``num_samples`` rows drawn from ``seed``, split 80/20.

    ``noise`` is the standard deviation of the Gaussian noise added to the target, in
    the generator's units for #1 (whose noiseless target has std ≈ 4.9) and as a
    fraction of the noiseless target's std for #2 and #3 (whose scales are 10³ and 1).
    """
    from sklearn import datasets

    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 10:
        raise ValueError(f"num_samples must be an integer >= 10, got {num_samples!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    if which == 1:
        x, y = datasets.make_friedman1(num_samples, n_features=10, noise=float(noise), random_state=seed)
    else:
        make = datasets.make_friedman2 if which == 2 else datasets.make_friedman3
        x, y = make(num_samples, noise=0.0, random_state=seed)
        y = y + float(noise) * y.std() * rng.standard_normal(y.shape)
    tr, te = _split(num_samples, 0.2, seed + 1)
    return x[tr], y[tr], x[te], y[te]


def digits_angle(seed: int = 0, max_angle: float = 60.0, rotations: int = 1,
                 test_fraction: float = 0.25) -> tuple[np.ndarray, ...]:
    """Rotated 8×8 digits; the target is the rotation angle in degrees (see the module docstring)."""
    from scipy.ndimage import rotate
    from sklearn.datasets import load_digits

    _check_fraction(test_fraction)
    if isinstance(max_angle, bool) or not isinstance(max_angle, (int, float)) or not 0 < max_angle <= 180:
        raise ValueError(f"max_angle must be a number in (0, 180] degrees, got {max_angle!r}")
    if isinstance(rotations, bool) or not isinstance(rotations, int) or rotations < 1:
        raise ValueError(f"rotations must be a positive integer, got {rotations!r}")
    images = load_digits().images.astype(np.float64) / 16.0
    tr, te = _split(images.shape[0], test_fraction, seed)
    rng = np.random.default_rng([seed, 0x616E676C])

    def rotated(rows: np.ndarray, copies: int) -> tuple[np.ndarray, np.ndarray]:
        src = np.repeat(rows, copies)
        angles = rng.uniform(-max_angle, max_angle, size=src.shape[0])
        x = np.stack([rotate(images[i], a, reshape=False, order=1, mode="constant", cval=0.0)
                      for i, a in zip(src, angles)])
        return x[..., None], angles

    x_tr, y_tr = rotated(tr, rotations)
    x_te, y_te = rotated(te, 1)
    return x_tr, y_tr, x_te, y_te


def _check_fraction(test_fraction: float) -> None:
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")


def _friedman1(seed: int = 0, num_samples: int = 2500, noise: float = 1.0) -> tuple[np.ndarray, ...]:
    return friedman(1, seed, num_samples, noise)


def _friedman2(seed: int = 0, num_samples: int = 2500, noise: float = 0.1) -> tuple[np.ndarray, ...]:
    return friedman(2, seed, num_samples, noise)


def _friedman3(seed: int = 0, num_samples: int = 2500, noise: float = 0.1) -> tuple[np.ndarray, ...]:
    return friedman(3, seed, num_samples, noise)


LOADERS = {"diabetes": diabetes, "friedman1": _friedman1, "friedman2": _friedman2, "friedman3": _friedman3,
           "digits_angle": digits_angle}
