"""The Numba runtime under the cpu backend: the disk cache and the thread pool.

* A read-only install (r2n's files and HOME unwritable, NUMBA_CACHE_DIR and
  XDG_CACHE_HOME unset) still runs: the kernels compile in
  memory, with one DiskCacheWarning, instead of failing at import with
  Numba's "no locator available". Checked for real in a child process that
  cannot write there: as an ordinary user the permission bits stop it; as root
  the child drops CAP_DAC_OVERRIDE first, so that they stop root too.
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
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, site, home],
            env=env,
            cwd=home,
            capture_output=True,
            text=True,
            timeout=600,
            preexec_fn=_drop_file_override_caps if as_root else None,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.startswith("ok"), proc.stdout + proc.stderr
    finally:
        _make_writable(base)
        shutil.rmtree(base)


def test_kernels_keep_the_disk_cache_where_it_can_be_written():
    """The fallback is only for read-only installs: in a writable checkout the
    kernels cache on disk as before (Numba's FunctionCache, not its NullCache)."""
    from numba.core.caching import FunctionCache

    from r2n.cpu import conv

    if not os.access(os.path.dirname(conv.__file__), os.W_OK):
        pytest.skip("r2n/cpu is not writable here")
    assert isinstance(conv._conv_simd_kernel._cache, FunctionCache)
    assert isinstance(conv.block_layout._cache, FunctionCache)
