"""The warning of a cpu backend without a disk cache (no Numba needed to import it).

Its own module so that ``r2n.cpu`` can export it without importing Numba, and
``r2n.cpu._jit`` can issue it without importing its package back.
"""

from __future__ import annotations


class DiskCacheWarning(RuntimeWarning):
    """Numba found no writable directory for the CPU kernels' disk cache: they
    compile in memory on first use in every process (issued once per process)."""
