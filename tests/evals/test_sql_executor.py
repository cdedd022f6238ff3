"""mmjax.evals.sql: results equal plain sqlite3's, errors are classified, the row cap holds, and the pool keeps
order, runs in parallel and replaces a worker that was killed or died."""
import os
import signal
import sqlite3
import threading
import time

import pytest

from mmjax.evals.sql import KILL_GRACE_S, ExecResult, SqlPool, execute

# One SQLite instruction (a naive substring search, O(haystack * needle) byte compares with little memory) that runs
# for many seconds: the progress handler cannot interrupt it, so only the wall-clock kill ends it.
SLOW_INSTRUCTION = "SELECT instr(printf('%.*c', 4000000, 'a'), printf('%.*c', 200000, 'a') || 'b')"
RUNAWAY = 'WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r'


def make_db(path, rows: int = 60) -> str:
  """A small shop database at `path`: customers (some cities NULL), orders with real amounts, and an index."""
  conn = sqlite3.connect(path)
  conn.executescript("""
    CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT);
    CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id), amount REAL);
    CREATE INDEX orders_by_customer ON orders(customer_id);
  """)
  conn.executemany('INSERT INTO customers VALUES (?, ?, ?)',
                   [(i, f'customer {i}', None if i % 5 == 0 else ['Oslo', 'Lima', 'Pune'][i % 3]) for i in range(rows)])
  conn.executemany('INSERT INTO orders VALUES (?, ?, ?)', [(i, i % rows, i * 1.25) for i in range(rows)])
  conn.commit()
  conn.close()
  return str(path)


@pytest.fixture(scope='module')
def db(tmp_path_factory):
  return make_db(tmp_path_factory.mktemp('sql') / 'shop.sqlite')


QUERIES = [
    'SELECT name, city FROM customers ORDER BY id',
    'SELECT city, count(*), avg(o.amount) FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY city',
    'SELECT count(*) FROM customers WHERE city IS NULL',
    'SELECT 1.0, 1, NULL, x\'00ff\'',
    'SELECT * FROM customers WHERE id < 0',
    'PRAGMA table_info(orders)',
]


@pytest.mark.parametrize('sql', QUERIES)
def test_execute_returns_what_sqlite_returns(db, sql):
  direct = sqlite3.connect(db)
  expected = direct.execute(sql).fetchall()
  direct.close()
  result = execute(db, sql)
  assert result == ExecResult(True, expected, '', '', result.seconds)
  assert 0 <= result.seconds < 5


@pytest.mark.parametrize('sql, kind', [
    ('SELEC name FROM customers', 'syntax'),
    ('', 'syntax'),  # an empty prediction never matches an empty gold result
    ('  -- only a comment\n', 'syntax'),
    ('SELECT nope FROM customers', 'syntax'),
    ('SELECT * FROM missing_table', 'syntax'),
    ('SELECT abs(-9223372036854775807 - 1)', 'runtime'),
    ('DELETE FROM orders', 'denied'),
    ('SELECT 1; SELECT 2', 'denied'),
    (RUNAWAY, 'timeout'),
])
def test_errors_are_classified(db, sql, kind):
  result = execute(db, sql, timeout_s=0.5)
  assert not result.ok and result.rows == [] and result.error_kind == kind and result.error


def test_missing_database_is_named(tmp_path):
  result = execute(tmp_path / 'nope.sqlite', 'SELECT 1')
  assert result.error_kind == 'runtime' and 'nope.sqlite' in result.error


def test_row_cap(db):
  assert execute(db, 'SELECT id FROM orders', max_rows=60).rows == [(i,) for i in range(60)]
  capped = execute(db, 'SELECT id FROM orders', max_rows=59)
  assert (capped.ok, capped.error_kind, capped.rows) == (False, 'too_many_rows', [])
  assert execute(db, 'SELECT id FROM orders WHERE id < 0', max_rows=0).ok


def test_undecodable_text_loses_its_bad_bytes(tmp_path):
  path = str(tmp_path / 'latin1.sqlite')
  conn = sqlite3.connect(path)
  conn.execute('CREATE TABLE t (name TEXT)')
  conn.execute("INSERT INTO t VALUES (CAST(x'4361666ee9' AS TEXT))")  # 'Café' in Latin-1
  conn.commit()
  conn.close()
  assert execute(path, 'SELECT name FROM t').rows == [('Cafn',)]


def test_pool_keeps_order(db):
  jobs = [(db, f'SELECT {i}, count(*) FROM orders WHERE id < {i}') for i in range(40)]
  with SqlPool(3, progress=False) as pool:
    results = pool.map(jobs)
  assert [r.rows for r in results] == [[(i, i)] for i in range(40)]


def test_pool_runs_workers_in_parallel(db):
  # Deadlines are wall-clock, so two 1 s runaways on two workers end together even on a busy machine.
  with SqlPool(2, timeout_s=1.0, progress=False) as pool:
    pool.map([(db, 'SELECT 1')] * 2)
    start = time.monotonic()
    results = pool.map([(db, RUNAWAY)] * 2)
    elapsed = time.monotonic() - start
  assert [r.error_kind for r in results] == ['timeout', 'timeout']
  assert elapsed < 1.9


def test_worker_killed_at_the_wall_clock_limit_is_replaced(db):
  with SqlPool(1, timeout_s=0.3, progress=False) as pool:
    first = pool._workers[0].process
    start = time.monotonic()
    slow, after = pool.map([(db, SLOW_INSTRUCTION), (db, 'SELECT count(*) FROM orders')])
    elapsed = time.monotonic() - start
    assert slow.error_kind == 'timeout' and slow.error.startswith('killed after')
    assert 0.3 + KILL_GRACE_S <= slow.seconds < 0.3 + KILL_GRACE_S + 0.5
    assert after.rows == [(60,)] and elapsed < 5
    assert pool._workers[0].process is not first
  assert first.returncode == -signal.SIGKILL


def test_worker_that_dies_is_replaced(db):
  with SqlPool(1, timeout_s=5.0, progress=False) as pool:
    pool.map([(db, 'SELECT 1')])
    pid = pool._workers[0].process.pid
    threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()
    died, after = pool.map([(db, RUNAWAY), (db, 'SELECT 2')])
  assert died.error_kind == 'runtime' and 'worker died' in died.error and died.seconds < 4
  assert after.rows == [(2,)]


def test_memory_limit_turns_a_memory_bomb_into_an_error(db):
  with SqlPool(1, memory_mb=256, timeout_s=10.0, progress=False) as pool:
    bomb, after = pool.map([(db, "SELECT length(zeroblob(400000000) || 'x')"), (db, 'SELECT 3')])
  assert bomb.error_kind == 'runtime' and 'memory' in bomb.error
  assert after.rows == [(3,)]


def test_worker_that_died_while_idle_is_replaced(db):
  with SqlPool(1, progress=False) as pool:
    pool.map([(db, 'SELECT 1')])
    os.kill(pool._workers[0].process.pid, signal.SIGKILL)
    pool._workers[0].process.wait()
    assert [r.rows for r in pool.map([(db, 'SELECT 4'), (db, 'SELECT 5')])] == [[(4,)], [(5,)]]
