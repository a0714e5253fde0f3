"""Model-free numerics: arrays in, arrays out, no :class:`~jaxal.model.Model`.

- :mod:`~jaxal.ops.linalg`: jittered Cholesky, solves, symmetrisation.
- :mod:`~jaxal.ops.spectral`: the smallest positive eigenvalue and its zero rule.
- :mod:`~jaxal.ops.kmeanspp`: k-means++ seeding, dense and factored (BADGE).
- :mod:`~jaxal.ops.kcenter`: greedy k-center (coreset).
- :mod:`~jaxal.ops.entropy`: entropies of probability vectors.
- :mod:`~jaxal.ops.random`: host-side draws seeded from a JAX key, and ``split`` as one program.
"""
