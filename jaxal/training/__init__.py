"""Training a :class:`~jaxal.model.Model`'s network: supervised, semi-supervised, frozen.

- :mod:`~jaxal.training.train`: supervised training (cross-entropy or squared loss),
  warm / cold / shrink-and-perturb restarts, evaluation.
- :mod:`~jaxal.training.ssl`: semi-supervised trainers (pseudo-label, mean teacher,
  FixMatch).
- :mod:`~jaxal.training.augment`: the weak/strong augmentations the SSL trainers use.
- :mod:`~jaxal.training.frozen`: a frozen pretrained encoder with a trainable head.

The submodules are imported by name (``from jaxal.training import train``); this
package does not re-export their functions, so ``jaxal.training.train`` is always the module.
"""

from jaxal.training import augment, frozen, ssl, train  # noqa: F401
