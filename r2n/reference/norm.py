"""Deprecated module name, kept importable for one release (r2n.reference is
public): batch_norm and fold_batch_norm moved to
:mod:`r2n.reference.elementwise` (issue 15: the same module families on every
backend)."""

from .elementwise import batch_norm, fold_batch_norm  # noqa: F401
