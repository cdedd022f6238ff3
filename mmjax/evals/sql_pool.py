"""A pool of sandboxed SQL worker processes (`sql_worker.py`) with wall-clock kills, and the result type.

Workers are reused across queries (a fresh one costs an interpreter start, 50-300 ms): a query kills its worker
only when the worker outlives the query's timeout by `KILL_GRACE_S`, and the pool then starts a replacement at once
and sends the jobs that were queued behind the killed one elsewhere. One job runs per worker, with at most
`PIPELINE_DEPTH - 1` more waiting in its pipe; a job's timeout counts from when its worker starts it.
Workers are plain subprocesses of `python -I -S` (fork+exec), which is safe under a parent running JAX threads and
does not re-import the parent's `__main__` as multiprocessing's spawn and forkserver would.
"""
from __future__ import annotations

import dataclasses
import os
import select
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from mmjax.evals.sql_worker import POSTGRES_PREFIXES, receive, send

KILL_GRACE_S = 0.5  # beyond a query's timeout_s before its worker is killed: SQLite's own deadline fires first
PIPELINE_DEPTH = 2  # jobs sent to a worker ahead of its replies
PIPELINE_MAX_SQL = 8192  # characters: a queued request must fit the pipe's buffer (64 KiB on Linux)
ERROR_KINDS = ('timeout', 'denied', 'syntax', 'runtime', 'too_many_rows')
_WORKER = Path(__file__).with_name('sql_worker.py')


@dataclasses.dataclass(frozen=True)
class ExecResult:
  """The outcome of one query.

  ok: the query ran to the end and returned at most max_rows rows. rows: its rows as tuples (empty unless ok).
  error: a one-line message (empty when ok). error_kind: '' when ok, else one of 'timeout' (its deadline passed;
  the worker may have been killed), 'denied' (a write, ATTACH/DETACH, PRAGMA, extension, transaction or several
  statements), 'syntax' (does not compile: parse error, unknown table or column), 'runtime' (failed while running,
  out of memory, missing database, worker died), 'too_many_rows' (more than max_rows). seconds: wall-clock time.
  """
  ok: bool
  rows: list[tuple]
  error: str = ''
  error_kind: str = ''
  seconds: float = 0.0


class _Worker:
  """One worker process and the parent's ends of its two pipes; `ready` once it has sent its greeting."""

  def __init__(self, memory_mb: int):
    child_read, self.requests = os.pipe()
    self.replies, child_write = os.pipe()
    os.set_inheritable(self.requests, False)
    os.set_inheritable(self.replies, False)
    self.process = subprocess.Popen(
        [sys.executable, '-I', '-S', str(_WORKER), str(child_read), str(child_write), str(memory_mb)],
        pass_fds=(child_read, child_write), stdin=subprocess.DEVNULL)
    os.close(child_read)
    os.close(child_write)
    self.ready = False
    self.postgres = False  # psycopg loaded

  def kill(self) -> None:
    """Sends SIGKILL without waiting: tearing down a large address space takes a while; `reaped` collects it."""
    self.process.kill()
    os.close(self.requests)
    os.close(self.replies)

  def reaped(self, block: bool = False) -> bool:
    """Whether the killed process is gone (collected, so it leaves no zombie)."""
    return (self.process.wait() if block else self.process.poll()) is not None


class SqlPool:
  """`workers` sandboxed SQL processes evaluating queries in parallel; `map` keeps the order of its jobs.

  A job is `(db, sql)`: `db` is a SQLite file path, or a `postgresql://` URI (naming a read-only role) for the
  PostgreSQL backend. Each query gets `timeout_s` seconds (SQLite's progress handler or PostgreSQL's
  statement_timeout; the worker is killed and replaced at timeout_s + KILL_GRACE_S), at most `max_rows` rows and a
  worker with `memory_mb` MiB of address space. Use it as a context manager, or call `close()`.
  """

  def __init__(self, workers: int | None = None, *, timeout_s: float = 30.0, max_rows: int = 100_000,
               memory_mb: int = 2048, progress: bool = True):
    if timeout_s <= 0 or max_rows < 0 or memory_mb < 64:
      raise ValueError(f'SqlPool: need timeout_s > 0, max_rows >= 0 and memory_mb >= 64; got {timeout_s}, '
                       f'{max_rows}, {memory_mb}')
    self.timeout_s, self.max_rows, self.memory_mb, self.progress = timeout_s, max_rows, memory_mb, progress
    self._workers = [_Worker(memory_mb) for _ in range(workers or os.cpu_count() or 1)]
    self._dying: list[_Worker] = []  # killed, not yet reaped

  def map(self, jobs: Iterable[tuple[str | os.PathLike, str]], desc: str = 'sql') -> list[ExecResult]:
    """The results of `jobs` ((db, sql) pairs) in their order, with a tqdm bar when `progress`."""
    return self.run(jobs, self.timeout_s, self.max_rows, desc=desc, progress=self.progress)

  def run(self, jobs: Iterable[tuple[str | os.PathLike, str]], timeout_s: float, max_rows: int, *,
          desc: str = 'sql', progress: bool = False) -> list[ExecResult]:
    """`map` with this call's own timeout and row cap."""
    pending = deque((i, (os.fspath(db), sql)) for i, (db, sql) in enumerate(jobs))
    jobs_by_index = dict(pending)
    postgres = any(db.startswith(POSTGRES_PREFIXES) for _, (db, _) in pending)
    results: list[ExecResult | None] = [None] * len(pending)
    queued = {slot: deque() for slot in range(len(self._workers))}  # slot -> job indices sent, oldest running
    started: dict[int, float] = {}  # slot -> when its oldest queued job started
    with tqdm(total=len(results), desc=desc, unit='query', disable=not progress, dynamic_ncols=True) as bar:

      def finish(slot: int, result: tuple, requeue: bool = False) -> None:
        """Records the result of `slot`'s running job; a lost worker's other jobs go back to the front."""
        results[queued[slot].popleft()] = ExecResult(*result)
        if requeue:
          pending.extendleft((i, jobs_by_index[i]) for i in reversed(queued[slot]))
          queued[slot].clear()
        if queued[slot]:
          started[slot] = time.monotonic()
        bar.update(1)

      while pending or any(queued.values()):
        if postgres:  # a worker imports psycopg before its first PostgreSQL job, outside any query's time
          for slot, worker in enumerate(self._workers):
            if worker.ready and not worker.postgres and not queued[slot]:
              try:
                send(worker.requests, 'load_postgres')
                worker.ready, worker.postgres = False, True
              except OSError:  # it died while idle
                self._replace(slot)
        # Every idle worker gets a job first; then, once all workers are up (a starting one must not find its
        # share queued elsewhere), a second one waits in the pipe behind each running job, so that a worker never
        # idles while the parent is busy (only a short one: writing it must not block on a full pipe).
        all_ready = all(w.ready for w in self._workers)
        for depth in range(PIPELINE_DEPTH if all_ready else 1):
          for slot, worker in enumerate(self._workers):
            if (pending and worker.ready and len(queued[slot]) == depth
                and (depth == 0 or len(pending[0][1][1]) < PIPELINE_MAX_SQL)):
              index, (db, sql) = pending.popleft()
              try:
                send(worker.requests, (db, sql, timeout_s, max_rows))
              except OSError:  # it died: if idle, replace it now; if busy, the EOF below reports its job
                pending.appendleft((index, (db, sql)))
                if not queued[slot]:
                  self._replace(slot)
                continue
              if depth == 0:
                started[slot] = time.monotonic()
              queued[slot].append(index)
        kill_at = min((started[s] + timeout_s + KILL_GRACE_S for s, q in queued.items() if q), default=None)
        waiting = [w.replies for s, w in enumerate(self._workers) if queued[s] or not w.ready]
        ready, _, _ = select.select(waiting, [], [], None if kill_at is None else max(0.0, kill_at - time.monotonic()))
        for slot, worker in enumerate(self._workers):
          seconds = time.monotonic() - started.get(slot, 0.0)
          if worker.replies in ready:
            message = self._receive(slot)
            if message is None:
              code = worker.process.poll()
              self._replace(slot)
              finish(slot, (False, [], f'worker died (exit code {code})', 'runtime', seconds), requeue=True)
            elif message != 'ready':
              finish(slot, message)
          elif queued[slot] and seconds >= timeout_s + KILL_GRACE_S:
            self._replace(slot)
            finish(slot, (False, [], f'killed after {seconds:.1f} s (timeout {timeout_s} s)', 'timeout', seconds),
                   requeue=True)
    return results

  def _receive(self, slot: int) -> tuple | str | None:
    """What worker `slot` sent: 'ready' (then it is marked ready), a result tuple, or None if it died."""
    worker = self._workers[slot]
    try:
      message = receive(worker.replies)
    except (EOFError, OSError):
      message = None
    if message == 'ready':
      worker.ready = True
    elif message is None and not worker.ready:
      code = worker.process.wait()
      raise RuntimeError(f'{_WORKER}: SQL worker exited with code {code} before it was ready (see its stderr)')
    return message

  def _replace(self, slot: int) -> None:
    self._workers[slot].kill()
    self._dying = [w for w in self._dying if not w.reaped()] + [self._workers[slot]]
    self._workers[slot] = _Worker(self.memory_mb)

  def close(self) -> None:
    """Ends every worker."""
    for worker in self._workers:
      worker.kill()
    for worker in self._workers + self._dying:
      worker.reaped(block=True)
    self._workers, self._dying = [], []

  def __enter__(self) -> SqlPool:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
