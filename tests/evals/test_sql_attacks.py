"""Hostile queries against mmjax.evals.sql: every one returns its classified error within its timeout plus one
second, the database file stays byte-identical, and no file appears beside it (no -journal/-wal/-shm, no ATTACH or
VACUUM INTO target)."""
import hashlib
import os
import time

import pytest

from mmjax.evals.sql import SqlPool, execute
from tests.evals.test_sql_executor import RUNAWAY, SLOW_INSTRUCTION, make_db

TIMEOUT_S = 1.0

# (name, sql with {dir} for the database's folder, expected error kind)
ATTACKS = [
    ('drop table', 'DROP TABLE orders', 'denied'),
    ('drop index', 'DROP INDEX orders_by_customer', 'denied'),
    ('delete', 'DELETE FROM orders', 'denied'),
    ('update', "UPDATE customers SET name = 'pwned'", 'denied'),
    ('insert', "INSERT INTO customers VALUES (999, 'evil', NULL)", 'denied'),
    ('replace', "REPLACE INTO customers VALUES (1, 'evil', NULL)", 'denied'),
    ('create table', 'CREATE TABLE evil (x)', 'denied'),
    ('create temp table', 'CREATE TEMP TABLE evil AS SELECT * FROM customers', 'denied'),
    ('create view', 'CREATE VIEW evil AS SELECT 1', 'denied'),
    ('create trigger', 'CREATE TRIGGER evil AFTER INSERT ON orders BEGIN DELETE FROM customers; END', 'denied'),
    ('alter table', 'ALTER TABLE customers ADD COLUMN evil TEXT', 'denied'),
    ('attach file', "ATTACH DATABASE '{dir}/evil.sqlite' AS evil", 'denied'),
    ('attach memory', "ATTACH DATABASE ':memory:' AS scratch", 'denied'),
    ('detach', 'DETACH DATABASE main', 'denied'),
    ('pragma writable_schema', 'PRAGMA writable_schema = ON', 'denied'),
    ('pragma journal_mode', 'PRAGMA journal_mode = WAL', 'denied'),
    ('pragma query_only off', 'PRAGMA query_only = OFF', 'denied'),
    ('pragma user_version', 'PRAGMA user_version = 7', 'denied'),
    ('load_extension', "SELECT load_extension('{dir}/evil.so')", 'denied'),
    ('vacuum into', "VACUUM INTO '{dir}/copy.sqlite'", 'denied'),
    ('vacuum', 'VACUUM', 'denied'),
    ('reindex', 'REINDEX orders_by_customer', 'denied'),
    ('analyze', 'ANALYZE', 'denied'),
    ('begin', 'BEGIN IMMEDIATE', 'denied'),
    ('savepoint', 'SAVEPOINT s', 'denied'),
    ('stacked statements', 'SELECT 1; DROP TABLE orders', 'denied'),
    ('recursive cte that never ends', RUNAWAY, 'timeout'),
    ('huge cross join', 'SELECT count(*) FROM orders a, orders b, orders c, orders d, orders e', 'timeout'),
    ('one instruction that runs for minutes', SLOW_INSTRUCTION, 'timeout'),
    ('millions of rows', 'WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r LIMIT 5000000) '
     'SELECT i FROM r', 'too_many_rows'),
    ('cross join rows', 'SELECT * FROM orders a, orders b, orders c', 'too_many_rows'),
]


def _sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope='module')
def db(tmp_path_factory):
  path = make_db(tmp_path_factory.mktemp('attacks') / 'shop.sqlite')
  assert execute(path, 'SELECT 1').ok  # starts the shared worker, so no query below pays for that
  return path


@pytest.mark.parametrize('name, sql, kind', ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_is_stopped_and_leaves_the_database_alone(db, name, sql, kind):
  folder = os.path.dirname(db)
  digest, files = _sha256(db), sorted(os.listdir(folder))
  start = time.monotonic()
  result = execute(db, sql.format(dir=folder), timeout_s=TIMEOUT_S)
  elapsed = time.monotonic() - start
  assert (result.ok, result.error_kind, result.rows) == (False, kind, []), result.error
  assert elapsed < TIMEOUT_S + 1.0
  assert _sha256(db) == digest
  assert sorted(os.listdir(folder)) == files
  assert execute(db, 'SELECT count(*) FROM customers').rows == [(60,)]


def test_attacks_through_the_pool(db):
  folder = os.path.dirname(db)
  digest, files = _sha256(db), sorted(os.listdir(folder))
  with SqlPool(2, timeout_s=TIMEOUT_S, progress=False) as pool:
    results = pool.map([(db, sql.format(dir=folder)) for _, sql, _ in ATTACKS])
  assert [(r.ok, r.error_kind) for r in results] == [(False, kind) for _, _, kind in ATTACKS]
  assert max(r.seconds for r in results) < TIMEOUT_S + 1.0
  assert _sha256(db) == digest and sorted(os.listdir(folder)) == files
