"""The sandbox process behind `mmjax.evals.sql`: runs one untrusted query at a time for its parent.

The parent starts it by path, `python -I -S sql_worker.py READ_FD WRITE_FD MEMORY_MB`, so that it imports a few
standard modules only (site-packages are added for the first PostgreSQL job, which needs psycopg): a fresh worker
is ready in tens of milliseconds, it never inherits the threads of a parent running JAX (no fork), and it never
re-imports the parent's `__main__` (no spawn). Hence this file imports nothing from mmjax, and the parent reuses its
`send`/`receive`. Protocol over the two pipes (length-prefixed pickles): the worker sends 'ready', then for each
request `(db, sql, timeout_s, max_rows)` one reply `(ok, rows, error, error_kind, seconds)`, and for the request
'load_postgres' (psycopg imported) 'ready' again. EOF ends it.

SQLite jobs (`db` is a file path): the file is opened read-only and immutable (`mode=ro&immutable=1`: no lock files,
no -journal/-wal/-shm beside it; the file must not change while a query runs), `PRAGMA query_only=ON`, temporary
tables and sort spills in memory, and an authorizer that allows reading tables, calling functions other than
`load_extension`, recursive CTEs, and the schema-introspection pragmas in `READ_PRAGMAS` (they take a table or index
name and change nothing); everything else is denied: writes, DDL, ATTACH/DETACH (and so VACUUM INTO, which attaches
its target), transactions, every other PRAGMA (reads included: they are of no use to a query and some have side
effects). A progress handler aborts the query at its deadline; the parent kills the whole process when even that
does not fire in time (a single long VM instruction, e.g. a huge string function). A worker keeps the last
`SQLITE_KEEP_OPEN` databases open (none of the above can be changed by a query, so a connection is safe to reuse).

PostgreSQL jobs (`db` is a `postgresql://` URI that should name a read-only role): each query runs in a
`READ ONLY` transaction with `SET LOCAL statement_timeout` that is always rolled back (so a query's own `SET` cannot
outlive it), as a single statement (the extended protocol refuses several); SELECT-like queries go through a
server-side cursor so that the row cap holds without the server sending every row. The session is kept per URI.

Process limits: address space `MEMORY_MB` (RLIMIT_AS), no file may grow (RLIMIT_FSIZE 0), no core files.
"""
import os
import pickle
import resource
import signal
import sqlite3
import struct
import sys
import time

PROGRESS_STEPS = 10_000  # SQLite VM instructions between deadline checks: ~0.1 ms apart
FETCH_CHUNK = 1_000  # rows per fetchmany: the row cap overshoots by at most this much memory
READ_PRAGMAS = frozenset({'table_info', 'table_xinfo', 'index_list', 'index_info', 'index_xinfo', 'foreign_key_list'})
_READ_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE})
_DENIED_FUNCTIONS = frozenset({'load_extension'})
POSTGRES_PREFIXES = ('postgresql://', 'postgres://')
_SELECT_WORDS = ('select', 'with', 'values', 'table', '(')
SQLITE_KEEP_OPEN = 32  # databases a worker keeps open
_SQLITE_OPEN: dict = {}  # (path, inode, mtime, size) -> _SqliteDatabase, least recently used first
_PG_CONNECTIONS: dict = {}
_HEADER = struct.Struct('!Q')  # payload bytes


def send(fd: int, message: object) -> None:
  """Writes `message` to the pipe `fd` as one length-prefixed pickle."""
  payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
  view = memoryview(_HEADER.pack(len(payload)) + payload)
  while view:
    view = view[os.write(fd, view):]


def receive(fd: int) -> object:
  """The next message on the pipe `fd`; EOFError when the other end has closed it."""
  (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
  return pickle.loads(_read_exactly(fd, size))


def _read_exactly(fd: int, size: int) -> bytes:
  chunks = []
  while size:
    chunk = os.read(fd, min(size, 1 << 20))
    if not chunk:
      raise EOFError('pipe closed')
    chunks.append(chunk)
    size -= len(chunk)
  return b''.join(chunks)


NO_QUERY = 'no query: the SQL is blank, a comment, or a statement that returns no result set'


class _NoQuery(Exception):
  """A PostgreSQL statement that ran but returned no result set (blank, comment-only, SET ...)."""


def run_sqlite(db: str, sql: str, timeout_s: float, max_rows: int) -> tuple:
  """(ok, rows, error, error_kind, seconds) of `sql` on the SQLite file `db`, read-only."""
  try:
    stat = os.stat(db)
  except OSError:
    return False, [], f'{db}: no such database file', 'runtime', 0.0
  # Open databases are kept (a Spider evaluation queries a few hundred files thousands of times); a file replaced
  # or changed at the same path gets a new connection, as `immutable` would otherwise serve stale pages.
  key = (os.path.realpath(db), stat.st_ino, stat.st_mtime_ns, stat.st_size)
  database = _SQLITE_OPEN.pop(key, None) or _SqliteDatabase(key[0])
  _SQLITE_OPEN[key] = database
  while len(_SQLITE_OPEN) > SQLITE_KEEP_OPEN:
    _SQLITE_OPEN.pop(next(iter(_SQLITE_OPEN))).conn.close()
  return database.run(sql, timeout_s, max_rows)


class _SqliteDatabase:
  """One read-only connection and the per-query state that its authorizer and progress handler read."""

  def __init__(self, path: str):
    self.deadline = 0.0
    self.denied: list[tuple] = []
    self.conn = sqlite3.connect(_file_uri(path) + '?mode=ro&immutable=1', uri=True, isolation_level=None)
    # As the official evaluators: undecodable text (present in Spider's databases) loses its bad bytes.
    self.conn.text_factory = lambda b: b.decode(errors='ignore')
    self.conn.execute('PRAGMA query_only=ON')
    self.conn.execute('PRAGMA temp_store=MEMORY')
    self.conn.set_authorizer(self._authorize)
    self.conn.set_progress_handler(lambda: time.monotonic() > self.deadline, PROGRESS_STEPS)

  def _authorize(self, action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    if action in _READ_ACTIONS:
      return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION and arg2.lower() not in _DENIED_FUNCTIONS:
      return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and arg1.lower() in READ_PRAGMAS:
      return sqlite3.SQLITE_OK
    self.denied.append((action, arg1, arg2))
    return sqlite3.SQLITE_DENY

  def run(self, sql: str, timeout_s: float, max_rows: int) -> tuple:
    start = time.monotonic()
    self.deadline, self.denied = start + timeout_s, []
    cursor = self.conn.cursor()
    try:
      cursor.execute(sql)
      if cursor.description is None:  # blank or comment-only SQL: no statement ran (writes are denied earlier)
        return False, [], NO_QUERY, 'syntax', time.monotonic() - start
      rows = _fetch_capped(cursor, max_rows)
    except MemoryError:
      return False, [], 'out of memory', 'runtime', time.monotonic() - start
    except sqlite3.Error as e:
      kind = _sqlite_kind(e, self.conn, sql, self.denied, time.monotonic() > self.deadline)
      message = f'timed out after {timeout_s:g} s' if kind == 'timeout' else _sqlite_message(e, self.denied)
      return False, [], message, kind, time.monotonic() - start
    finally:
      cursor.close()
    if rows is None:
      return False, [], f'more than {max_rows} rows', 'too_many_rows', time.monotonic() - start
    return True, rows, '', '', time.monotonic() - start


def _file_uri(path: str) -> str:
  """A SQLite `file:` URI for `path`: the characters that URIs reserve are percent-encoded."""
  return 'file:' + ''.join(f'%{ord(c):02X}' if c in '?#%' else c for c in os.path.realpath(path))


def _fetch_capped(cursor, max_rows: int) -> list | None:
  """All rows of `cursor`, or None once there are more than `max_rows`."""
  rows = []
  while chunk := cursor.fetchmany(FETCH_CHUNK):
    rows.extend(chunk)
    if len(rows) > max_rows:
      return None
  return rows


def _sqlite_kind(e: sqlite3.Error, conn: sqlite3.Connection, sql: str, denied: list, late: bool) -> str:
  name = getattr(e, 'sqlite_errorname', '')
  if name == 'SQLITE_INTERRUPT' and late:
    return 'timeout'
  if denied or name in ('SQLITE_AUTH', 'SQLITE_READONLY', 'SQLITE_PERM'):
    return 'denied'
  if isinstance(e, sqlite3.ProgrammingError):  # several statements in one string
    return 'denied'
  if name in ('SQLITE_NOMEM', 'SQLITE_TOOBIG'):
    return 'runtime'
  # Errors are rare, so only on this path pay for a compile-only pass: a statement that does not even compile
  # (parse error, unknown table or column, wrong arity) is 'syntax', one that compiles but failed while running
  # (integer overflow, malformed JSON, ...) is 'runtime'.
  try:
    conn.execute('EXPLAIN ' + sql)
  except sqlite3.Error:
    return 'syntax'
  return 'runtime'


def _sqlite_message(e: sqlite3.Error, denied: list) -> str:
  if denied:
    action, arg1, arg2 = denied[0]
    what = ' '.join(str(a) for a in (arg1, arg2) if a)
    return f'{e} (authorizer denied action {action}{": " + what if what else ""})'
  return str(e)


def run_postgres(dsn: str, sql: str, timeout_s: float, max_rows: int) -> tuple:
  """(ok, rows, error, error_kind, seconds) of `sql` on the PostgreSQL database at `dsn`, in a read-only
  transaction that is rolled back."""
  load_postgres()
  import psycopg

  start = time.monotonic()
  try:
    conn = _pg_connection(dsn)
  except psycopg.Error as e:
    return False, [], f'cannot connect to {_redact(dsn)}: {e}', 'runtime', time.monotonic() - start
  selecting = sql.lstrip().lower().startswith(_SELECT_WORDS)
  try:
    with conn.cursor() as setup:
      setup.execute(f'SET LOCAL statement_timeout = {max(1, round(timeout_s * 1000))}')
    if selecting:
      with conn.cursor(name='mmjax_query') as cursor:
        cursor.execute(sql)
        rows = _fetch_capped(cursor, max_rows)
    else:
      with conn.cursor() as cursor:
        cursor.execute(sql, prepare=True)
        if cursor.description is None:
          raise _NoQuery
        rows = _fetch_capped(cursor, max_rows)
  except MemoryError:
    rows, error = None, ('out of memory', 'runtime')
  except _NoQuery:
    rows, error = None, (NO_QUERY, 'syntax')
  except psycopg.Error as e:
    rows, error = None, ((str(e).strip().splitlines() or [type(e).__name__])[0], _postgres_kind(e))
  else:
    error = None if rows is not None else (f'more than {max_rows} rows', 'too_many_rows')
  try:
    conn.rollback()
  except psycopg.Error:
    _PG_CONNECTIONS.pop(dsn, None).close()
  if error:
    return False, [], error[0], error[1], time.monotonic() - start
  return True, [tuple(r) for r in rows], '', '', time.monotonic() - start


def load_postgres() -> None:
  """Imports psycopg (the parent asks for it before the first PostgreSQL job, so that no query's time pays it)."""
  if 'psycopg' not in sys.modules:
    import site  # started with -S: site-packages come in only now

    site.main()
    import psycopg  # noqa: F401


def _pg_connection(dsn: str):
  import psycopg

  conn = _PG_CONNECTIONS.get(dsn)
  if conn is None or conn.closed:
    # The server notices a killed worker within a second instead of running its query to the end.
    conn = psycopg.connect(dsn, connect_timeout=10,
                           options='-c default_transaction_read_only=on -c client_connection_check_interval=1000')
    conn.read_only = True
    _PG_CONNECTIONS[dsn] = conn
  return conn


def _postgres_kind(e) -> str:
  state = getattr(e, 'sqlstate', None) or ''
  if state == '57014':  # query_canceled: statement_timeout
    return 'timeout'
  if state in ('42501', '25006') or state.startswith('28'):  # insufficient privilege, read-only transaction
    return 'denied'
  if state == '42601' and 'multiple commands' in str(e):  # several statements in one string
    return 'denied'
  if state.startswith('42') or state.startswith('34'):  # syntax error or unknown name; invalid cursor name
    return 'syntax'
  return 'runtime'


def _redact(dsn: str) -> str:
  head, at, tail = dsn.rpartition('@')
  return f'{head.split("://")[0]}://***@{tail}' if at else dsn


def run_job(db: str, sql: str, timeout_s: float, max_rows: int) -> tuple:
  """One request: the backend is PostgreSQL for a postgres:// URI, SQLite otherwise."""
  if db.startswith(POSTGRES_PREFIXES):
    return run_postgres(db, sql, timeout_s, max_rows)
  return run_sqlite(db, sql, timeout_s, max_rows)


def limit_process(memory_mb: int) -> None:
  """Caps this process: `memory_mb` MiB of address space, no file growth, no core dump."""
  limit = memory_mb * 2**20
  resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
  resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def serve(read_fd: int, write_fd: int, memory_mb: int) -> None:
  """Answers requests from the parent until it closes the pipe."""
  limit_process(memory_mb)
  send(write_fd, 'ready')
  while True:
    try:
      request = receive(read_fd)
    except EOFError:
      return
    if request == 'load_postgres':
      load_postgres()
      send(write_fd, 'ready')
      continue
    db, sql, timeout_s, max_rows = request
    try:
      reply = run_job(db, sql, timeout_s, max_rows)
    except Exception as e:  # a bug or an unexpected library error must not take the worker down
      reply = False, [], f'{type(e).__name__}: {e}', 'runtime', 0.0
    send(write_fd, reply)


if __name__ == '__main__':
  serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
