"""The benchmarks/*.py scripts in tests, without a GPU: imported as modules
(their functions tested directly) or run as commands (``--dry-run``)."""

from __future__ import annotations

import contextlib
import importlib.util
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


@contextlib.contextmanager
def benchmark_script(name: str, block_cupy: bool = False):
    """benchmarks/<name>.py imported as module ``name``, registered in
    ``sys.modules`` while in use (dataclasses look their module up), with
    benchmarks/ on ``sys.path`` while it imports (as when run: the scripts
    import their shared module, gpu_tc_common). ``block_cupy``: importing
    cupy raises ImportError meanwhile, proving the script imports without it."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    saved_path = list(sys.path)
    saved_cupy = sys.modules.get("cupy", False)
    sys.path.insert(0, str(BENCHMARKS))
    sys.modules[name] = module
    if block_cupy:
        sys.modules["cupy"] = None  # "import cupy" raises ImportError
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path[:] = saved_path
        del sys.modules[name]
        if block_cupy:
            if saved_cupy is False:
                del sys.modules["cupy"]
            else:
                sys.modules["cupy"] = saved_cupy


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    """``python benchmarks/<name>.py *args`` from the repo root, its output captured."""
    return subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
