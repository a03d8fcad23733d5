"""PyTorch for the torch rows and oracles, imported once, OpenMP workers passive.

``import_torch`` sets ``OMP_WAIT_POLICY=PASSIVE`` before the first import: idle
OpenMP workers would otherwise spin and steal the cores of the next row's
timing (see ``benchmarks/conftest.py``). Used by ``r2n bench``, ``r2n check``,
``r2n ladder`` and the torch modules of :mod:`r2n._bench.torch_blocks`.
"""

from __future__ import annotations

import os

_TORCH: list = []


def import_torch():
    """torch if installed (imported once, idle OpenMP workers passive), else None."""
    if not _TORCH:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import torch

            # Float32 rows are checked at 1e-5: TF32 convs/matmuls would not pass.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            _TORCH.append(torch)
        except ImportError:
            _TORCH.append(None)
    return _TORCH[0]
