"""A CPU emulator for r2n's CUDA kernels (see README.md): ``from cuda_emu import EmuExecutor``."""

from .emulator import (
    EmuError,
    EmuExecutor,
    EmuModule,
    EmuOutOfBoundsError,
    EmuRaceError,
    cache_dir,
    compile_module,
)

__all__ = [
    "EmuError",
    "EmuExecutor",
    "EmuModule",
    "EmuOutOfBoundsError",
    "EmuRaceError",
    "cache_dir",
    "compile_module",
]
