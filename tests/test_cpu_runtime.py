"""The Numba runtime under the cpu backend: the disk cache and the thread pool.

* A read-only install (r2n's files and HOME unwritable, NUMBA_CACHE_DIR and
  XDG_CACHE_HOME unset) still runs: the kernels compile in memory, with one
  DiskCacheWarning, instead of failing at import with Numba's "no locator
  available". Checked for real in a child process that cannot write there:
  as an ordinary user the permission bits stop it; as root the child drops
  CAP_DAC_OVERRIDE first, so that they stop root too.
* Under load (another process holding a core), GNU OpenMP's idle threads
  must not spin (libgomp's default is 300000 spins, ~18 ms on the
  development VM): r2n loads Numba's OpenMP layer with OMP_WAIT_POLICY =
  r2n.cpu._jit.WAIT_POLICY ("PASSIVE": no spin) unless the user chose a
  wait policy, and leaves the environment as it was. Checked through
  libgomp's own report of its settings (OMP_DISPLAY_ENV), in a fresh
  process; the timings are in benchmarks/under_load.py, not here. Loading
  those settings starts no threads, so importing the kernels still leaves
  ``fork`` safe until a kernel runs (the rule README's "Threads and
  processes" states).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Linux capability numbers and prctl option (linux/capability.h, linux/prctl.h).
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2
_PR_CAPBSET_DROP = 24


def _drop_file_override_caps():
    """preexec_fn for root: remove the capabilities that let root ignore file
    permissions from the bounding set, so the exec'd child lacks them."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _make_read_only(top):
    """chmod a-w on every file and directory under (and including) top."""
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)
        os.chmod(dirpath, 0o555)


def _make_writable(top):
    """Undo _make_read_only on the directories (so that rmtree can delete)."""
    for dirpath, dirnames, _ in os.walk(top):
        os.chmod(dirpath, 0o755)
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)


# Runs in the read-only child: checks that it really cannot write where Numba
# looks, then a float32 conv on the cpu backend (twice: one warning in all)
# against the float64 reference.
_CHILD = r"""
import os, sys, warnings
import numpy as np

site, home = sys.argv[1], sys.argv[2]
for d in (os.path.join(site, "r2n", "cpu"), home):
    try:
        open(os.path.join(d, "probe"), "w").close()
    except OSError:
        continue
    sys.exit(f"precondition: {d} is writable")

import r2n
assert r2n.__file__.startswith(site), r2n.__file__

rng = np.random.default_rng(7)
x = rng.standard_normal((1, 6, 7, 9))
w = rng.standard_normal((9, 2, 3, 3))
b = rng.standard_normal(9)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = r2n.conv2d(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32),
                     padding=1, groups=3, backend="cpu")
    out = r2n.conv2d(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32),
                     padding=1, groups=3, backend="cpu")
    import r2n._bench.residual  # r2n bench's own kernels: the same decorator
ref = r2n.conv2d(x, w, b, padding=1, groups=3, backend="reference")
from r2n.cpu import DiskCacheWarning

err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
assert err <= 1e-5, err
ours = [c for c in caught if issubclass(c.category, DiskCacheWarning)]
others = [str(c.message) for c in caught if not issubclass(c.category, DiskCacheWarning)]
assert len(ours) == 1, [str(c.message) for c in ours]
assert "NUMBA_CACHE_DIR" in str(ours[0].message)
assert not others, others
print("ok", err)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="file permissions and prctl as on Linux")
def test_read_only_install_compiles_without_disk_cache():
    base = tempfile.mkdtemp(prefix="r2n-readonly-")
    try:
        site = os.path.join(base, "site")
        home = os.path.join(base, "home")
        shutil.copytree(
            os.path.join(ROOT, "r2n"),
            os.path.join(site, "r2n"),
            ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"),
        )
        os.makedirs(home)
        _make_read_only(site)
        _make_read_only(home)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NUMBA_", "PYTHON", "XDG_")) and k != "HOME"
        }
        env.update(PYTHONPATH=site, HOME=home, PYTHONDONTWRITEBYTECODE="1")
        as_root = os.geteuid() == 0
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, site, home],
                env=env,
                cwd=home,
                capture_output=True,
                text=True,
                timeout=600,
                preexec_fn=_drop_file_override_caps if as_root else None,
            )
        except subprocess.SubprocessError as exc:  # preexec_fn failed: no CAP_SETPCAP
            pytest.skip(f"root here cannot drop CAP_DAC_OVERRIDE, so nothing is read-only: {exc}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.startswith("ok"), proc.stdout + proc.stderr
    finally:
        _make_writable(base)
        shutil.rmtree(base)


def test_kernels_keep_the_disk_cache_where_it_can_be_written():
    """The fallback is only for read-only installs: in a writable checkout the
    kernels cache on disk as before (Numba's FunctionCache, not its NullCache)."""
    from numba.core.caching import FunctionCache

    from r2n.cpu import microkernel
    from r2n.cpu.conv import v4_simd

    if not os.access(os.path.dirname(v4_simd.__file__), os.W_OK):
        pytest.skip("r2n/cpu/conv is not writable here")
    assert isinstance(v4_simd._conv_simd_kernel._cache, FunctionCache)
    assert isinstance(microkernel.block_layout._cache, FunctionCache)


# Runs in a fresh child: starts r2n's thread pool by running a kernel, prints
# what the environment holds afterwards and Numba's threading layer / OpenMP
# vendor; libgomp prints its settings to stderr (OMP_DISPLAY_ENV) as it loads.
_POOL_CHILD = r"""
import os
import numpy as np
import r2n
x = np.random.default_rng(3).standard_normal((1, 2, 5, 7)).astype(np.float32)
r2n.relu(x, backend="cpu")
import numba
vendor = ""
if numba.threading_layer() == "omp":
    from numba.np.ufunc import omppool
    vendor = omppool.openmp_vendor
print(numba.threading_layer(), vendor, os.environ.get("OMP_WAIT_POLICY"))
"""


def _pool_child(**env_changes):
    """(stdout, the GOMP_SPINCOUNT lines of libgomp's report) of _POOL_CHILD."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(OMP_DISPLAY_ENV="verbose", PYTHONPATH=ROOT, **env_changes)
    proc = subprocess.run(
        [sys.executable, "-c", _POOL_CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    layer, vendor, *_ = proc.stdout.split()
    if (layer, vendor) != ("omp", "GNU"):
        pytest.skip(f"Numba's threading layer here is {layer} {vendor}, not GNU OpenMP")
    lines = [ln.strip() for ln in proc.stderr.splitlines() if "GOMP_SPINCOUNT" in ln]
    return proc.stdout, lines


def test_idle_openmp_threads_sleep_instead_of_spinning():
    from r2n.cpu._jit import WAIT_POLICY

    assert WAIT_POLICY == "PASSIVE"
    stdout, lines = _pool_child()
    assert lines == ["GOMP_SPINCOUNT = '0'"], lines  # libgomp's figure for PASSIVE
    assert stdout.split()[2] == "None", "r2n left OMP_WAIT_POLICY in the environment"


@pytest.mark.parametrize(
    "name, value", [("GOMP_SPINCOUNT", "5000"), ("OMP_WAIT_POLICY", "ACTIVE")]
)
def test_openmp_wait_policy_of_the_user_wins(name, value):
    stdout, lines = _pool_child(**{name: value})
    want = "5000" if name == "GOMP_SPINCOUNT" else "30000000000"  # ACTIVE: libgomp's 3e10
    assert lines == [f"GOMP_SPINCOUNT = '{want}'"], lines


# Imports r2n's kernel modules (which load Numba's OpenMP layer with r2n's
# settings) without running one, forks, and runs a kernel in the child: GNU
# OpenMP is not fork-safe once its threads run, and Numba then kills the child.
_FORK_CHILD = r"""
import os
import numpy as np
import r2n.cpu.conv, r2n.cpu.elementwise
x = np.random.default_rng(5).standard_normal((2, 3, 5, 7))
pid = os.fork()
if pid == 0:
    out = r2n.relu(x, backend="cpu")
    os._exit(0 if np.array_equal(out, np.maximum(x, 0)) else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_importing_the_kernels_keeps_fork_safe():
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [sys.executable, "-c", _FORK_CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "0", proc.stdout + proc.stderr
