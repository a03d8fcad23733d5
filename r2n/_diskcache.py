"""The warning of a cpu backend without a disk cache (no Numba needed to import it).

A module of its own, outside ``r2n.cpu``: ``r2n.cpu`` exports it without
importing a submodule (``import r2n.models`` loads no ``r2n.cpu.*``), and
``r2n.cpu._jit`` issues it without importing its package back.
"""

from __future__ import annotations


class DiskCacheWarning(RuntimeWarning):
    """Numba found no writable directory for the CPU kernels' disk cache: they
    compile in memory on first use in every process (issued once per process)."""
