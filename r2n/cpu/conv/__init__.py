"""conv2d on the CPU: the ladder of numbered steps, one file each (being moved here)."""

from __future__ import annotations

from .v4_simd import VARIANTS, conv2d

__all__ = ["VARIANTS", "conv2d"]
