"""mmjax.evals.sql's PostgreSQL backend against a real server (tests/evals/postgres_server.py): results, the
same error classification as SQLite, writes refused, statement_timeout and the row cap, and a query's own SET
not outliving it."""
import time
from decimal import Decimal

import psycopg
import pytest

from mmjax.evals.sql import SqlPool, execute
from tests.evals.postgres_server import postgres_server  # noqa: F401 (fixture)

TIMEOUT_S = 1.0


@pytest.fixture(scope='module')
def server(postgres_server):  # noqa: F811
  return postgres_server


def _admin_rows(server, sql):
  with psycopg.connect(server.admin_dsn) as conn:
    return conn.execute(sql).fetchall()


@pytest.mark.parametrize('sql', [
    'SELECT name, city FROM customers ORDER BY id',
    'SELECT c.city, count(*), sum(o.amount) FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.city '
    'ORDER BY c.city',
    'SELECT 1.0, 1, NULL',
    'SELECT * FROM customers WHERE id < 0',
])
def test_results_match_the_server(server, sql):
  result = execute(server.reader_dsn, sql)
  assert result.ok and result.rows == [tuple(r) for r in _admin_rows(server, sql)]


def test_values_keep_their_types(server):
  assert execute(server.reader_dsn, 'SELECT sum(amount) FROM orders').rows == [(Decimal(sum(range(1, 101))) * 3 / 2,)]


@pytest.mark.parametrize('sql, kind', [
    ('DROP TABLE orders', 'denied'),
    ('DELETE FROM orders', 'denied'),
    ("UPDATE customers SET name = 'pwned'", 'denied'),
    ("INSERT INTO customers VALUES (999, 'evil', NULL)", 'denied'),
    ('CREATE TABLE evil (x integer)', 'denied'),
    ('SELECT 1; DROP TABLE orders', 'denied'),
    ("COPY orders TO '/tmp/mmjax-evil.csv'", 'denied'),
    ("SELECT pg_read_file('/etc/passwd')", 'denied'),
    ('SELEC 1', 'syntax'),
    ('', 'syntax'),
    ('-- only a comment', 'syntax'),
    ('SELECT nope FROM orders', 'syntax'),
    ('SELECT 1 / 0', 'runtime'),
    ('SELECT pg_sleep(30)', 'timeout'),
    ('WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r', 'timeout'),
    ('SELECT * FROM orders a, orders b, orders c', 'too_many_rows'),
])
def test_errors_are_classified(server, sql, kind):
  start = time.monotonic()
  result = execute(server.reader_dsn, sql, timeout_s=TIMEOUT_S, max_rows=1000)
  assert (result.ok, result.error_kind, result.rows) == (False, kind, []), result.error
  assert '\n' not in result.error
  assert time.monotonic() - start < TIMEOUT_S + 1.0


def test_nothing_changed(server):
  for sql in ('DROP TABLE orders', 'DELETE FROM orders', "UPDATE customers SET name = 'pwned'"):
    execute(server.reader_dsn, sql)
  assert _admin_rows(server, 'SELECT count(*), count(DISTINCT name) FROM customers') == [(20, 20)]
  assert _admin_rows(server, 'SELECT count(*) FROM orders') == [(100,)]


def test_a_query_cannot_lift_the_timeout_for_the_next(server):
  lifted = execute(server.reader_dsn, 'SET statement_timeout = 0')  # ran, but returns no result set
  assert (lifted.ok, lifted.error_kind) == (False, 'syntax')
  result = execute(server.reader_dsn, 'SELECT pg_sleep(30)', timeout_s=TIMEOUT_S)
  assert result.error_kind == 'timeout'


def test_pool_keeps_order(server):
  with SqlPool(2, timeout_s=TIMEOUT_S, progress=False) as pool:
    results = pool.map([(server.reader_dsn, f'SELECT {i}, count(*) FROM orders WHERE id <= {i}') for i in range(12)])
  assert [r.rows for r in results] == [[(i, i)] for i in range(12)]


def test_unreachable_server_is_a_runtime_error(server):
  dsn = server.reader_dsn.replace(f':{server.port}/', ':1/')
  result = execute(dsn, 'SELECT 1')
  assert result.error_kind == 'runtime' and 'cannot connect' in result.error
