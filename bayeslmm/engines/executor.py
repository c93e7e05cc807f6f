"""Many fits at once: one executor for every repeated-fit workload, on this machine or on Dask.

Power analysis, fits of one model to many responses, K-fold and exact leave-one-out refits, the
parametric bootstrap and simulation-based calibration all run many independent fits. They all go
through :func:`run_tasks`, which calls ``function(shared, task, seed)`` once per task and returns the
results in task order:

- ``function`` is a top-level function (it is sent to other processes by reference), ``shared`` what
  every task needs (plain data: a frame, a formula string, prior overrides, numbers), ``task`` what
  differs between tasks, and ``seed`` the task's own seed.
- **Serial** (``workers=1``, or a single task): in this process, one task after the other.
- **Local processes** (the default: ``workers=None`` uses every core this process may run on): a pool
  of worker processes started with the ``spawn`` method (numba and threads do not survive ``fork``),
  kept for later calls, so only the first call pays the start-up (2-3 s: Python, the imports and the
  compiled kernels, loaded once per worker by :func:`~bayeslmm.engines.compiled.load_all`).
  ``shared`` is written once to a temporary file that each worker reads once, not sent with every task.
- **Dask** (``client=``, a :class:`distributed.Client` or a scheduler address): the same tasks on a
  Dask cluster; ``shared`` is scattered to every worker once, the kernels load on a worker's first task.

Results do not depend on where tasks run: each task is seeded by its own seed (for new work, a child of
one :class:`numpy.random.SeedSequence`, :func:`spawn_seeds`), never by a generator shared between tasks,
and a task uses one thread in a local worker process (threads do not change a fit's draws, they only compete
for cores). A task that raises is reported as a :class:`TaskFailure` with its seed (the other results
are kept); Ctrl-C cancels what has not started, ends every worker process and raises
:class:`KeyboardInterrupt`, so no process outlives the call. A progress bar
(:class:`~bayeslmm.engines.progress.Progress`) counts finished tasks.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import pickle
import shutil
import signal
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bayeslmm.engines.progress import Progress
from bayeslmm.engines.sampling import check_random_seed, resolve_progressbar
from bayeslmm.errors import BayeslmmError

__all__ = [
    "TaskFailure",
    "TaskResults",
    "run_tasks",
    "spawn_seeds",
    "seed_integer",
    "describe_seed",
    "task_threads",
    "default_workers",
    "check_executor_arguments",
    "shutdown",
]


# ============================================================================== results
@dataclass(frozen=True)
class TaskFailure:
    """A task that raised: which one, its seed, and the error.

    Attributes
    ----------
    index : int
        Position of the task in the list given to :func:`run_tasks`.
    task : str
        ``repr`` of the task (cut to 200 characters).
    seed : object
        The task's seed; the same task with the same seed raises again (serially: ``workers=1``).
    error : str
        The exception's type name, e.g. ``"DataError"``.
    message : str
        The exception's message.
    traceback : str
        The formatted traceback, from the process where the task ran.
    """

    index: int
    task: str
    seed: Any
    error: str
    message: str
    traceback: str = field(repr=False, default="")

    def __str__(self) -> str:
        return f"task {self.index} ({self.task}, seed {describe_seed(self.seed)}): {self.error}: {self.message}"


@dataclass
class TaskResults:
    """What :func:`run_tasks` returns.

    Attributes
    ----------
    results : list
        One entry per task, in task order: the task's return value, or None where it failed.
    failures : list of TaskFailure
        The tasks that raised, in task order.
    executor : str
        Where they ran, e.g. ``"2 local processes"``, ``"serial"`` or ``"Dask (tcp://..., 4 workers)"``.
    seconds : float
        Wall time of the whole call.
    """

    results: list
    failures: list[TaskFailure]
    executor: str
    seconds: float

    @property
    def n_failed(self) -> int:
        """Number of failed tasks."""
        return len(self.failures)

    def failure_message(self, what: str = "tasks") -> str:
        """One line for a warning: how many failed, and the first failure with its seed."""
        if not self.failures:
            return ""
        first = self.failures[0]
        return (
            f"{self.n_failed} of {len(self.results)} {what} failed and are left out; the first: {first}"
        )


# ============================================================================== seeds
def spawn_seeds(random_seed: int | None, n: int) -> tuple[list[np.random.SeedSequence], int]:
    """One independent seed per task: the children of ``SeedSequence(random_seed)``.

    Parameters
    ----------
    random_seed : int, optional
        None draws fresh entropy (returned, so that the run can be repeated).
    n : int
        Number of tasks.

    Returns
    -------
    seeds : list of numpy.random.SeedSequence, length n
        ``numpy.random.default_rng(seeds[i])`` is task ``i``'s generator, whatever runs it.
    entropy : int
        The root's entropy: ``random_seed`` itself when given.
    """
    seed = check_random_seed(random_seed)
    root = np.random.SeedSequence(seed)
    return root.spawn(n), int(root.entropy)


def describe_seed(seed: Any) -> str:
    """A seed on one line: ``SeedSequence(entropy=1, spawn_key=(3,))`` rebuilds a task's seed."""
    if isinstance(seed, np.random.SeedSequence):
        return f"SeedSequence(entropy={seed.entropy}, spawn_key={tuple(int(k) for k in seed.spawn_key)})"
    return repr(seed)


def seed_integer(seed: np.random.SeedSequence) -> int:
    """A 32-bit integer seed derived from a task's seed (for samplers that take an int)."""
    return int(seed.generate_state(1, dtype=np.uint32)[0])


# ============================================================================== arguments
def default_workers() -> int:
    """Worker processes of the default executor: the cores this process may run on (1 inside a worker)."""
    if _in_worker():
        return 1
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_executor_arguments(client: Any, workers: Any) -> None:
    """Raise before any work when ``client`` or ``workers`` cannot be used.

    Raises
    ------
    TypeError
        ``workers`` is not a positive integer, ``client`` is neither a Dask client nor an address,
        or both are given.
    ImportError
        ``client`` is given but dask.distributed is not installed.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int | np.integer) or workers < 1):
        raise TypeError(f"workers must be a positive integer (1 runs the tasks in this process), got {workers!r}")
    if client is None:
        return
    if workers is not None:
        raise TypeError("give either workers= (local processes) or client= (a Dask cluster), not both")
    if isinstance(client, str):
        _import_distributed()
        return
    if not (hasattr(client, "map") and hasattr(client, "scatter") and hasattr(client, "scheduler_info")):
        raise TypeError(
            f"client must be a dask.distributed.Client or a scheduler address such as 'tcp://10.0.0.1:8786', "
            f"got {type(client).__name__}"
        )


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise ImportError(
            "client= runs the fits on a Dask cluster and needs dask.distributed: pip install 'bayeslmm[dask]'"
        ) from None
    return distributed


# ============================================================================== the entry point
def run_tasks(
    function: Callable[[Any, Any, Any], Any],
    tasks: Sequence[Any],
    seeds: Sequence[Any],
    *,
    shared: Any = None,
    client: Any = None,
    workers: int | None = None,
    progressbar: bool | None = None,
    description: str = "Fitting",
    unit: str = "fits",
) -> TaskResults:
    """Run ``function(shared, task, seed)`` for every task, serially, in local processes or on Dask.

    Parameters
    ----------
    function : callable
        A module-level function (sent to other processes by reference) taking ``(shared, task, seed)``.
    tasks : sequence, length n
        What differs between calls; picklable for processes and Dask.
    seeds : sequence, length n
        One seed per task (see :func:`spawn_seeds`); passed to ``function`` and reported with failures.
    shared : object, optional
        What every task needs; sent once per worker (a file for local processes, scattered for Dask).
    client : dask.distributed.Client or str, optional
        Run on this Dask cluster (a client, or the address of a scheduler, connected to and closed here).
    workers : int, optional
        Local worker processes; 1 runs in this process. Default: every core (:func:`default_workers`).
        A single task always runs in this process.
    progressbar : bool, optional
        A bar over the tasks; None decides as the samplers do
        (:func:`~bayeslmm.engines.sampling.resolve_progressbar`).
    description, unit : str
        The bar's text, e.g. ``"Power simulations"`` and ``"fits"``.

    Returns
    -------
    TaskResults
        ``results`` in task order (None for a failed task), ``failures`` with their seeds.

    Raises
    ------
    ValueError
        ``tasks`` and ``seeds`` differ in length.
    TypeError, ImportError
        See :func:`check_executor_arguments`.
    KeyboardInterrupt
        Ctrl-C: tasks not started are cancelled and every worker process is ended first.
    BayeslmmError
        Local worker processes could not start (e.g. a script without ``if __name__ == "__main__":``).
    """
    check_executor_arguments(client, workers)
    tasks, seeds = list(tasks), list(seeds)
    if len(tasks) != len(seeds):
        raise ValueError(f"run_tasks needs one seed per task, got {len(seeds)} seeds for {len(tasks)} tasks")
    started = time.perf_counter()
    outcomes: list = [None] * len(tasks)
    with Progress(len(tasks), description, unit, enabled=resolve_progressbar(progressbar)) as bar:
        counter = _Counter(bar)
        if client is not None and tasks:
            where = _run_dask(function, tasks, seeds, shared, client, outcomes, counter)
        else:
            n_workers = default_workers() if workers is None else int(workers)  # the pool's size is kept for reuse
            if n_workers <= 1 or len(tasks) <= 1:
                where = "serial"
                for index, (task, seed) in enumerate(zip(tasks, seeds)):
                    outcomes[index] = _call(function, shared, task, seed, index, remote=False)
                    counter.done(outcomes[index])
            else:
                where = _run_processes(function, tasks, seeds, shared, n_workers, outcomes, counter)
    results = [outcome[1] if outcome is not None and outcome[0] else None for outcome in outcomes]
    failures = [outcome[1] for outcome in outcomes if outcome is not None and not outcome[0]]
    return TaskResults(results, failures, where, time.perf_counter() - started)


class _Counter:
    """Counts finished and failed tasks on the progress bar."""

    def __init__(self, bar: Progress) -> None:
        self.bar, self.finished, self.failed = bar, 0, 0

    def done(self, outcome: tuple) -> None:
        self.finished += 1
        self.failed += not outcome[0]
        self.bar.update(self.finished, f"{self.failed} failed" if self.failed else "")


# ============================================================================== one task
_STATE = threading.local()  # ``in_task``: this thread runs a task for a worker (pool or Dask)
_READY = False
_READY_LOCK = threading.Lock()


def _in_worker() -> bool:
    return getattr(_STATE, "in_task", False)


def task_threads() -> int | None:
    """Threads a task may use for its chains: 1 in a worker (the workers share the cores), else None (all)."""
    return 1 if _in_worker() else None


def _call(function, shared, task, seed, index: int, remote: bool) -> tuple[bool, Any]:
    """Run one task; ``(True, result)`` or ``(False, TaskFailure)``. Warnings of the task are not shown."""
    try:
        if remote:
            _load_kernels()
            shared = _resolve_shared(shared)
        _STATE.in_task = remote
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return True, function(shared, task, seed)
    except Exception as exc:  # noqa: BLE001 -- a failed task is reported, the others go on
        return False, _failure(index, task, seed, exc, "".join(traceback.format_exception(exc)))
    finally:
        _STATE.in_task = False


def _failure(index: int, task: Any, seed: Any, exc: BaseException, trace: str = "") -> TaskFailure:
    text = repr(task)
    return TaskFailure(
        index=index,
        task=text if len(text) <= 200 else text[:197] + "...",
        seed=seed,
        error=type(exc).__name__,
        message=str(exc),
        traceback=trace,
    )


def _load_kernels() -> None:
    """Once per worker process: the compiled kernels loaded (the native library, or numba's cache)."""
    global _READY
    if _READY:
        return
    with _READY_LOCK:
        if not _READY:
            from bayeslmm.engines.compiled import load_all

            load_all()
            _READY = True


# ============================================================================== shared data
@dataclass(frozen=True)
class _SharedFile:
    """``shared`` pickled once to a file; each worker process reads it once (:func:`_resolve_shared`)."""

    token: str
    path: str


_SHARED_CACHE: dict[str, Any] = {}


def _resolve_shared(shared: Any) -> Any:
    if not isinstance(shared, _SharedFile):
        return shared
    if shared.token not in _SHARED_CACHE:
        with open(shared.path, "rb") as handle:
            value = pickle.load(handle)
        while len(_SHARED_CACHE) >= 2:  # a worker keeps the data of the current call and the one before
            _SHARED_CACHE.pop(next(iter(_SHARED_CACHE)))
        _SHARED_CACHE[shared.token] = value
    return _SHARED_CACHE[shared.token]


# ============================================================================== local processes
_POOL: ProcessPoolExecutor | None = None
_POOL_SIZE = 0


def _initialize_worker() -> None:
    """Start of a worker process: Ctrl-C is the parent's business; one thread per library; kernels loaded."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[name] = "1"
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    _load_kernels()


def _pool(n_workers: int) -> ProcessPoolExecutor:
    """The pool of ``n_workers`` processes, started on first use and kept for later calls."""
    global _POOL, _POOL_SIZE
    if _POOL is not None and (_POOL_SIZE != n_workers or getattr(_POOL, "_broken", False)):
        shutdown()
    if _POOL is None:
        _POOL = ProcessPoolExecutor(
            max_workers=n_workers, mp_context=multiprocessing.get_context("spawn"), initializer=_initialize_worker
        )
        _POOL_SIZE = n_workers
    return _POOL


def shutdown(kill: bool = False) -> None:
    """End the local worker processes (they are otherwise kept for the next call, and end with Python).

    Parameters
    ----------
    kill : bool
        Terminate them now, even in the middle of a task (what Ctrl-C does).
    """
    global _POOL, _POOL_SIZE
    pool, _POOL, _POOL_SIZE = _POOL, None, 0
    if pool is None:
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    if kill:
        for process in processes:
            process.terminate()
    pool.shutdown(wait=not kill, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


atexit.register(shutdown)


def _run_processes(function, tasks, seeds, shared, n_workers: int, outcomes: list, counter: _Counter) -> str:
    """Run the tasks on the local pool; fills ``outcomes``; returns the executor's description."""
    directory = tempfile.mkdtemp(prefix="bayeslmm-")
    try:
        reference = None
        if shared is not None:
            reference = _SharedFile(uuid.uuid4().hex, os.path.join(directory, "shared.pickle"))
            with open(reference.path, "wb") as handle:
                pickle.dump(shared, handle, protocol=pickle.HIGHEST_PROTOCOL)
        pool = _pool(n_workers)
        pending = {
            pool.submit(_call, function, reference, task, seed, index, True): index
            for index, (task, seed) in enumerate(zip(tasks, seeds))
        }
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    index = pending.pop(future)
                    outcomes[index] = _outcome(future, tasks[index], seeds[index], index, counter)
                    counter.done(outcomes[index])
        except BaseException:
            shutdown(kill=True)  # Ctrl-C (or an error here): nothing keeps running behind the caller's back
            raise
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return f"{n_workers} local processes"


def _outcome(future, task, seed, index: int, counter: _Counter) -> tuple[bool, Any]:
    """A finished future as ``(ok, value)``; a dead pool is an error before the first result, else a failure."""
    try:
        return future.result()
    except BrokenProcessPool as exc:
        if counter.finished == 0:
            shutdown(kill=True)
            raise BayeslmmError(
                "the local worker processes stopped before returning anything. In a script, put the code that "
                "runs the fits under `if __name__ == \"__main__\":` (worker processes start by importing the "
                "script); otherwise pass workers=1 to run in this process"
            ) from exc
        died = RuntimeError("a worker process died (out of memory, or a crash) while this task was queued or running")
        return False, _failure(index, task, seed, died)
    except Exception as exc:  # noqa: BLE001 -- e.g. a result that cannot be sent back
        return False, _failure(index, task, seed, exc)


# ============================================================================== Dask
def _run_dask(function, tasks, seeds, shared, client, outcomes: list, counter: _Counter) -> str:
    """Run the tasks on a Dask cluster; fills ``outcomes``; returns the executor's description."""
    distributed = _import_distributed()
    own = isinstance(client, str)
    if own:
        client = distributed.Client(client)
    futures = []
    try:
        n_workers = len(client.scheduler_info().get("workers", {}))
        reference = None if shared is None else client.scatter(shared, broadcast=True, hash=False)
        futures = client.map(
            _call,
            [function] * len(tasks),
            [reference] * len(tasks),
            tasks,
            seeds,
            list(range(len(tasks))),
            remote=True,
            pure=False,
        )
        index_of = {future.key: index for index, future in enumerate(futures)}
        for future in distributed.as_completed(futures):
            index = index_of[future.key]
            try:
                outcomes[index] = future.result()
            except Exception as exc:  # noqa: BLE001 -- a worker lost with its task, say
                outcomes[index] = (False, _failure(index, tasks[index], seeds[index], exc))
            counter.done(outcomes[index])
        return f"Dask ({client.scheduler.address}, {n_workers} workers)"
    except BaseException:
        if futures:
            client.cancel(futures)
        raise
    finally:
        if own:
            client.close()
