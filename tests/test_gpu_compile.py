"""Every CUDA source compiles under NVRTC for sm_80 and sm_90, without register spills.

No GPU needed: NVRTC (``cupy_backends.cuda.libs.nvrtc``, from the
nvidia-cuda-nvrtc wheel) compiles to CUBIN on any machine. Each source in
r2n/gpu/kernels is compiled as CuPy's RawModule compiles it (the text of
``_runtime.kernel_source``, ``_runtime.NVRTC_OPTIONS``, plus the ``-ftz=true``
and ``-arch=sm_XX`` CuPy adds) with every name expression registered for it,
and with ``--ptxas-options=-v`` so that ptxas reports each kernel's spill
stores and loads. A kernel that spills fails unless it is listed in
``_runtime.ALLOWED_TO_SPILL`` (naive variants only).
"""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import r2n.gpu
from r2n.gpu import _runtime

nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="NVRTC is not installed")

ARCHS = ("80", "90")

# Register every area module's kernels (each module registers on import).
for _module in pkgutil.iter_modules(r2n.gpu.__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"r2n.gpu.{_module.name}")


def _sources_on_disk():
    return sorted(p.name for p in _runtime.KERNEL_DIR.glob("*.cu"))


def test_every_kernel_source_is_registered():
    assert sorted(_runtime.KERNELS) == _sources_on_disk()
    assert all(_runtime.KERNELS[f] for f in _runtime.KERNELS)


def compile_cubin(file: str, arch: str):
    """Compile ``file`` with all its name expressions; return (mangled names,
    ptxas log, the CUBIN's bytes)."""
    names = _runtime.names_of(file)
    prog = nvrtc.createProgram(_runtime.kernel_source(file), file, [], [])
    try:
        for name in names:
            nvrtc.addNameExpression(prog, name)
        options = (*_runtime.NVRTC_OPTIONS, "-ftz=true", f"-arch=sm_{arch}", "--ptxas-options=-v")
        try:
            nvrtc.compileProgram(prog, list(options))
        except nvrtc.NVRTCError as e:
            pytest.fail(f"NVRTC failed to compile {file} for sm_{arch}: {e}\n"
                        f"{nvrtc.getProgramLog(prog)}")  # fmt: skip
        cubin = nvrtc.getCUBIN(prog)
        assert len(cubin) > 0
        lowered = {name: nvrtc.getLoweredName(prog, name) for name in names}
        return lowered, nvrtc.getProgramLog(prog), cubin
    finally:
        nvrtc.destroyProgram(prog)


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)'")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_spills(log: str) -> dict[str, tuple[int, int]]:
    """mangled kernel name -> (spill store bytes, spill load bytes), from ptxas -v output."""
    spills, current = {}, None
    for line in log.splitlines():
        entry = _ENTRY.search(line)
        if entry:
            current = entry.group(1)
            continue
        found = _SPILLS.search(line)
        if found and current is not None:
            spills[current] = (int(found.group(1)), int(found.group(2)))
            current = None
    return spills


def test_spill_parser_reads_ptxas_output():
    log = (
        "ptxas info    : Compiling entry function '_Z3fooIfEvPT_' for 'sm_80'\n"
        "ptxas info    : Function properties for _Z3fooIfEvPT_\n"
        "ptxas         .     8 bytes stack frame, 12 bytes spill stores, 4 bytes spill loads\n"
    )
    assert ptxas_spills(log) == {"_Z3fooIfEvPT_": (12, 4)}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file", _sources_on_disk())
def test_source_compiles_for_arch_without_spills(file, arch):
    if file not in _runtime.KERNELS:
        pytest.fail(f"{file} is in r2n/gpu/kernels but no module registers its kernels")
    lowered, log, _ = compile_cubin(file, arch)
    spills = ptxas_spills(log)
    missing = [name for name, mangled in lowered.items() if mangled not in spills]
    assert not missing, f"ptxas reported nothing for {missing} (log:\n{log[:2000]})"
    spilling = {
        name: spills[mangled]
        for name, mangled in lowered.items()
        if spills[mangled] != (0, 0) and (file, name) not in _runtime.ALLOWED_TO_SPILL
    }
    assert not spilling, f"{file} sm_{arch}: kernels spill (store, load bytes): {spilling}"
