"""Classify many images on a dask.distributed cluster, one model per worker process.

:func:`classify_on_dask` cuts the list of paths into batches of
``predictor.batch_size``, submits one task per batch, and yields one
:class:`~r2n.models.Prediction` per path, in input order, as soon as the
batches before it are done. Each worker process builds the model on its first
task and keeps it (``Predictor``'s per-process cache); a worker's task
threads share that one model, whose calls a lock serialises.

CPU threads: the CPU kernels of each task run on
``cores of the machine // worker processes on that machine`` threads (at
least 1), so the workers of one machine never run more kernel threads than it
has cores; ``Predictor(threads=n)`` fixes the number instead. Only the
``dask`` extra (``dask``, ``distributed``) is needed, on the client and the
workers; the image files and weights must be readable by the workers at the
paths given (a shared filesystem, or the same machine).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import socket
from collections.abc import Iterable, Iterator

from ._predictor import Prediction, Predictor


def _usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _where_am_i():
    """Run on every worker by ``client.run``: (machine, usable cores)."""
    return socket.gethostname(), _usable_cores()


def kernel_threads_per_worker(client) -> dict[str, int]:
    """Worker address -> CPU kernel threads, so that the worker processes of
    each machine share its cores: ``max(1, cores // processes on the machine)``."""
    facts = client.run(_where_am_i)  # address -> (host, cores)
    per_host = collections.Counter(host for host, _ in facts.values())
    return {addr: max(1, cores // per_host[host]) for addr, (host, cores) in facts.items()}


def _classify_batch(predictor: Predictor, paths: list, threads: dict) -> list[Prediction]:
    """One task: the Predictions of one batch, on this worker's share of its cores."""
    if predictor.threads is None:
        from distributed import get_worker

        # A worker that joined after the split gets 1 thread: never oversubscribes.
        n = threads.get(get_worker().address, 1)
        predictor = dataclasses.replace(predictor, threads=n)
    return predictor.predict_paths(paths)


def classify_on_dask(
    paths: Iterable,
    predictor: Predictor,
    client,
    *,
    max_in_flight: int | None = None,
) -> Iterator[Prediction]:
    """Classify images on a Dask cluster; yield the Predictions in input order.

    Parameters
    ----------
    paths : image paths, readable by the workers (a path that exists here is
        made absolute: workers may run in another directory)
    predictor : what to run (model, weights, backend, batch_size, topk, threads)
    client : a ``distributed.Client`` connected to the cluster
    max_in_flight : batches submitted ahead of the one being yielded (default:
        twice the cluster's task threads, at least 2): bounds the memory held
        by results not yet consumed

    Yields
    ------
    One Prediction per path, in the order of ``paths``; an image that cannot
    be read or decoded has ``error`` set and does not stop the others. Errors
    of the model itself (bad weights, a failing backend) are raised.

    Examples
    --------
    >>> from distributed import Client, LocalCluster
    >>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))
    >>> predictor = r2n.models.Predictor("res2net50_26w_4s", "w.safetensors")
    >>> for p in r2n.models.classify_on_dask(paths, predictor, client):
    ...     print(p.path, p.classes, p.probabilities, p.error)
    """
    paths = [os.path.abspath(p) if os.path.exists(p) else os.fspath(p) for p in paths]
    threads = kernel_threads_per_worker(client) if predictor.threads is None else {}
    if max_in_flight is None:
        task_threads = sum(client.nthreads().values())
        max_in_flight = max(2, 2 * task_threads)
    size = predictor.batch_size
    batches = iter(range(0, len(paths), size))
    pending = collections.deque()

    def submit_next() -> bool:
        start = next(batches, None)
        if start is None:
            return False
        batch = paths[start : start + size]
        pending.append(
            client.submit(_classify_batch, predictor, batch, threads, pure=False, retries=0)
        )
        return True

    while len(pending) < max_in_flight and submit_next():
        pass
    try:
        while pending:
            future = pending.popleft()
            predictions = future.result()  # in order: later batches keep running meanwhile
            future.release()
            submit_next()
            yield from predictions
    finally:  # the consumer stopped early or a task failed: cancel the rest
        for future in pending:
            future.cancel()
