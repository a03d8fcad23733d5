"""Deprecated module name, kept importable for one release (r2n.reference is
public): the activations moved to :mod:`r2n.reference.elementwise` (issue 15: the same
module families on every backend)."""

from .elementwise import leaky_relu, relu, sigmoid  # noqa: F401
