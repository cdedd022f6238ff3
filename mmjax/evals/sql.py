"""Safe execution of untrusted (model-written) SQL on SQLite files or PostgreSQL, for text-to-SQL evaluation.

`execute(db, sql)` runs one query in a sandboxed worker process and returns an `ExecResult`; `SqlPool` runs many
in parallel (`map`, order kept, tqdm bar). `db` is a SQLite file path, or a `postgresql://` URI naming a read-only
role. The sandbox (see sql_worker.py): read-only, immutable open with `PRAGMA query_only` and an authorizer that
denies writes, ATTACH/DETACH, PRAGMAs other than schema introspection (table_info and kin), transactions and
`load_extension`; a deadline inside SQLite (progress handler) or PostgreSQL (statement_timeout) plus a worker killed
at the wall-clock limit; an address-space limit; a row cap. Unlike the official Spider and BIRD evaluators, whose
timeouts cannot interrupt a query stuck in C code, every call returns within timeout_s + KILL_GRACE_S (plus a
worker start after a kill).
"""
from __future__ import annotations

import atexit
import os
import threading

from mmjax.evals.sql_pool import ERROR_KINDS, KILL_GRACE_S, ExecResult, SqlPool

__all__ = ['ERROR_KINDS', 'KILL_GRACE_S', 'ExecResult', 'SqlPool', 'execute']

_shared: SqlPool | None = None
_shared_lock = threading.Lock()


def execute(db_path: str | os.PathLike, sql: str, *, timeout_s: float = 30.0, max_rows: int = 100_000) -> ExecResult:
  """The result of `sql` on `db_path` (SQLite file or postgresql:// URI), run in a sandboxed worker.

  Calls share one long-lived worker process (started on first use, replaced after a kill), so a call costs a
  round trip, not a process start; calls from several threads take turns. For throughput use `SqlPool.map`.
  """
  global _shared
  if timeout_s <= 0 or max_rows < 0:
    raise ValueError(f'execute: need timeout_s > 0 and max_rows >= 0; got {timeout_s} and {max_rows}')
  with _shared_lock:
    if _shared is None:
      _shared = SqlPool(1, progress=False)
      atexit.register(_shared.close)
    return _shared.run([(db_path, sql)], timeout_s, max_rows)[0]
