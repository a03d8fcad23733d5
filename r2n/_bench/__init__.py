"""Helpers of ``r2n bench``, ``r2n ladder`` and ``r2n profile`` (see :mod:`r2n.cli`).

====================  ==========================================================
module                what
====================  ==========================================================
``timing``            medians of wall time (CPU) or CUDA events (CuPy, torch),
                      relative error, conversion of nested arguments
``machine``           this machine's measured peaks: sgemm GFLOP/s, copy GB/s;
                      NumPy's BLAS thread count; how busy other processes are
``residual``          the residual-connection steps (split, add, concatenate)
                      as parallel Numba kernels, for the speedup model
``torch_import``      torch, imported once with idle OpenMP workers passive
``torch_models``      PyTorch versions of the chain and bottleneck (eager with
                      BatchNorm, and BN-folded), shared with ``r2n check``
``torch_blocks``      the official Res2Net / timm Bottle2neck as torch modules
                      (the eager rows; the tests' oracles too)
``cases``             the benchmark shapes, their FLOPs and minimal bytes
``network``           the whole res2net50_26w_4s (r2n.models against timm)
``suite``             the cases ``r2n bench`` runs (op cases and the network)
``ladder_cases``      the shapes of ``r2n ladder``: Res2Net-50 defaults, --shape
``profile``           ``r2n profile``: timed layers, ONNX Runtime's nodes
``model``             the Res2Net-accelerator speedup model
``plot``              the PNGs: speedup bars and a roofline chart; ladder bars
====================  ==========================================================

Nothing here is imported by ``import r2n``.
"""
