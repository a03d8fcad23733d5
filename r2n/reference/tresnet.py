"""Deprecated module name, kept importable for one release (r2n.reference is
public): TResNet's layers moved to :mod:`r2n.reference.layers` (issue 15: the same
module families on every backend)."""

from .layers import blur_pool2d, space_to_depth, squeeze_excite  # noqa: F401
