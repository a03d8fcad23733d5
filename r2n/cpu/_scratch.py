"""Reusable buffers of the cpu backend: per thread, bounded, and never a source of state.

A model's forward pass runs the same layers on the same shapes again and
again. Allocating their intermediates (padded chunks, the bottleneck's t1 and
t2, the prepared layers' outputs) on every call costs time and page faults,
so :func:`scratch` hands out the same array for the same request until it is
evicted. Three rules make that safe:

1. **Initial contents never matter.** A buffer's contents when it is handed
   out are whatever an earlier call left (or the creator's fill). Every user
   writes every element it later reads, in the same call, before reading it:
   a border that must be zero is zeroed by the call (O(border), in a launch
   the call makes anyway), never "left zero since creation". The key is
   then only what decides the buffer's *size* (role, shape, dtype), and no
   earlier call, of whatever shape, can change a result. (Rule 1 is checked
   by tests/test_stateful.py, which interleaves shapes, and by a test that
   fills every cached buffer with NaN between calls.)
2. **Per thread.** Each Python thread has its own buffers, so layers and
   ops may run in several threads at once; nothing is locked.
3. **Bounded.** A thread keeps at most :data:`SCRATCH_ENTRIES` buffers,
   least recently used first out: those of its last 2-3 input shapes of a
   whole network. :func:`clear_scratch` (``r2n.clear_scratch``) drops every
   thread's buffers at once; a thread's buffers are also freed when the
   thread ends.

A buffer handed out must be dead before the same thread asks for the same
key again: roles are private to one user (a block's internals, or one
prepared layer's output through :func:`owner_token`), and no user asks twice
for one role while it still needs the first answer.

This module imports only NumPy, so ``r2n.clear_scratch()`` never imports Numba.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import OrderedDict

import numpy as np

#: Buffers kept per thread, least recently used evicted first. One forward
#: pass (224x224) uses 55 of them in res2net50_26w_4s (47 MiB at batch 1), 64
#: in res2net50d (53 MiB) and 106 in tresnet_m (39 MiB; every pool, blur and
#: SE output is one): a thread keeps the buffers of its last 2-4 input
#: shapes, so alternating between two shapes allocates nothing (an LRU
#: smaller than one cycle of shapes would miss every time).
SCRATCH_ENTRIES = 256


class _ThreadBuffers:
    """One thread's cache. :func:`clear_scratch` replaces ``buffers`` (never
    mutates it), so a thread in the middle of :func:`scratch` keeps a valid
    dictionary."""

    __slots__ = ("buffers", "__weakref__")

    def __init__(self):
        self.buffers = OrderedDict()


_LOCAL = threading.local()
_EVERY_THREAD: weakref.WeakSet = weakref.WeakSet()  # live threads' caches, for clear_scratch
_EVERY_THREAD_LOCK = threading.Lock()
_OWNERS = itertools.count()


def _this_thread() -> _ThreadBuffers:
    mine = getattr(_LOCAL, "buffers", None)
    if mine is None:
        mine = _LOCAL.buffers = _ThreadBuffers()
        with _EVERY_THREAD_LOCK:
            _EVERY_THREAD.add(mine)
    return mine


def scratch(role, shape, dtype, make=np.empty):
    """A reusable buffer of this thread: the same array for the same
    (role, shape, dtype) until it is evicted or cleared.

    Parameters
    ----------
    role : hashable naming the buffer's user (e.g. ``"chain.xp"``)
    shape, dtype : of the array
    make : ``make(shape, dtype)`` creates it when it is not cached. Its
        contents must not matter to any result (rule 1 of the module
        docstring); np.zeros only keeps denormals and NaN out of lanes whose
        results are discarded (r2n.cpu.conv.v5_winograd), for speed.

    Returns
    -------
    ndarray of ``shape`` and ``dtype``, C-contiguous, holding anything.
    """
    cache = _this_thread().buffers  # read once: clear_scratch may swap it
    key = (role, tuple(shape), np.dtype(dtype))
    buf = cache.get(key)
    if buf is None:
        buf = cache[key] = make(shape, dtype)
        while len(cache) > SCRATCH_ENTRIES:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return buf


def owner_token() -> int:
    """A number no other caller gets: a prepared layer's private role
    ``("out", token)`` for its reused outputs (unlike ``id()``, never reused)."""
    return next(_OWNERS)


_ON_CLEAR = []  # other per-shape caches' clear functions (see on_clear)


def on_clear(clear) -> None:
    """Have :func:`clear_scratch` also call ``clear()`` (a module's own
    per-shape cache, e.g. conv's tap offsets)."""
    _ON_CLEAR.append(clear)


def clear_scratch() -> None:
    """Free the cached buffers of every thread (intermediates and prepared
    layers' reused outputs) and the per-shape caches registered with
    :func:`on_clear`; later calls allocate again. Arrays a caller still
    holds stay valid: only the caches forget them."""
    with _EVERY_THREAD_LOCK:
        caches = list(_EVERY_THREAD)
    for cache in caches:
        cache.buffers = OrderedDict()
    for clear in _ON_CLEAR:
        clear()


def cached_bytes() -> int:
    """Bytes held by this thread's cached buffers (for tests and diagnostics)."""
    return sum(buf.nbytes for buf in _this_thread().buffers.values())
