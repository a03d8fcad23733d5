"""The whole-network case: res2net50_26w_4s, r2n.models against timm.

r2n's network comes from ``r2n.models`` (built in parallel with this tool);
while that package is missing, every row of this case reports
"r2n.models not available" and nothing fails. PyTorch's row is timm's
``res2net50_26w_4s`` (``pretrained=False``: nothing is downloaded).
"""

from __future__ import annotations

from .cases import FLOAT32_BYTES, BenchCase, Skip, res2net50_flops

NAME = "res2net50_26w_4s"
#: Parameters of res2net50_26w_4s (1000 classes), for the minimal-bytes count.
PARAMS = 25_699_000


def _models():
    try:
        from .. import models
    except ImportError as exc:
        raise Skip("r2n.models not available") from exc
    if not hasattr(models, "create"):
        raise Skip("r2n.models not available (no create())")
    return models


class NetworkCase(BenchCase):
    """res2net50_26w_4s on (n, 3, hw, hw) inputs, random weights."""

    def reference(self, args, kwargs):
        _models()
        raise Skip("r2n.models not available")


def network_case(n: int, hw: int) -> BenchCase:
    """The whole-network case at batch n and hw x hw images."""

    def make(rng):
        return (rng.standard_normal((n, 3, hw, hw)),), {}

    nbytes = FLOAT32_BYTES * (n * 3 * hw * hw + PARAMS + n * 1000)
    return NetworkCase(
        NAME, f"N={n} 3x{hw}x{hw}", res2net50_flops(n, hw), nbytes, make, ("eager",), tol=1e-4
    )
