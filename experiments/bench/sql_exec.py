"""SQL executor benchmark (issue 18): the sandboxed pool of `mmjax.evals.sql` against the official evaluators'
approach, on the same generated databases and queries, side by side in one run.

  python -m experiments.bench.sql_exec            # 8 databases, 2000 queries
  python -m experiments.bench.sql_exec --quick    # 4 databases, 300 queries, for a smoke run

The databases are Spider-sized shops (500 customers, 50 products, 4000 orders indexed by customer; each from its
own seed); the queries are text-to-SQL shapes (filter, join + GROUP BY, ORDER BY + LIMIT, nested, HAVING) over
them, each on a random database. Rows:
- sequential sqlite3: what test-suite-sql-eval and BIRD's evaluation.py do per query, in one process: connect,
  execute, fetchall, close (no sandbox, no timeout that can fire).
- `execute` one by one: the same calls through the shared sandboxed worker (a pipe round trip each).
- `SqlPool.map` with 1, 2 and all CPU workers (start-up excluded, reported apart).
Overhead per query is `execute`'s time minus sequential sqlite3's; beside it, a query's time inside the worker (its
own `seconds`: authorizer, progress handler, row cap, on a connection the worker keeps) against the official
per-query time, and the rest (pickling, the pipe round trip, scheduling). Each row is the median of `--repeats`
interleaved passes. Prints markdown.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import sqlite3
import statistics
import tempfile
import time

from mmjax.evals.sql import SqlPool, execute

SHAPES = [
    'SELECT name, city FROM customers WHERE age > {n}',
    'SELECT count(*) FROM orders WHERE quantity >= {k}',
    'SELECT c.city, count(*), sum(o.quantity * p.price) FROM orders o JOIN customers c ON o.customer_id = c.id '
    'JOIN products p ON o.product_id = p.id GROUP BY c.city',
    'SELECT p.name, sum(o.quantity) AS units FROM orders o JOIN products p ON o.product_id = p.id '
    'GROUP BY p.id ORDER BY units DESC LIMIT 5',
    'SELECT name FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE quantity > {k}) ORDER BY name',
    'SELECT category, avg(price) FROM products GROUP BY category HAVING count(*) > {k}',
    'SELECT name, price FROM products WHERE price BETWEEN {n} AND {n} + 20 ORDER BY price',
    'SELECT c.name FROM customers c WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id)',
]
CITIES = ['Oslo', 'Lima', 'Pune', 'Accra', 'Quito', 'Hanoi', 'Perth', 'Cork']
CATEGORIES = ['toys', 'books', 'tools', 'food', 'garden']


def make_databases(folder: str, count: int, seed: int) -> list[str]:
  """`count` shop databases in `folder`, each from its own seed."""
  paths = []
  for d in range(count):
    rng = random.Random(seed + d)
    path = os.path.join(folder, f'shop_{d}.sqlite')
    conn = sqlite3.connect(path)
    conn.executescript("""
      CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT, age INTEGER);
      CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, category TEXT, price REAL);
      CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, product_id INTEGER, quantity INTEGER);
      CREATE INDEX orders_by_customer ON orders(customer_id);
    """)
    conn.executemany('INSERT INTO customers VALUES (?, ?, ?, ?)', [
        (i, f'customer {i}', rng.choice(CITIES), rng.randint(18, 90)) for i in range(500)])
    conn.executemany('INSERT INTO products VALUES (?, ?, ?, ?)', [
        (i, f'product {i}', rng.choice(CATEGORIES), round(rng.uniform(1, 200), 2)) for i in range(50)])
    conn.executemany('INSERT INTO orders VALUES (?, ?, ?, ?)', [
        (i, rng.randrange(500), rng.randrange(50), rng.randint(1, 10)) for i in range(4000)])
    conn.commit()
    conn.close()
    paths.append(path)
  return paths


def make_jobs(paths: list[str], count: int, seed: int) -> list[tuple[str, str]]:
  rng = random.Random(seed)
  return [(rng.choice(paths), rng.choice(SHAPES).format(n=rng.randint(20, 150), k=rng.randint(1, 9)))
          for _ in range(count)]


def sequential_sqlite(jobs: list[tuple[str, str]]) -> list[float]:
  """The official evaluators' loop; returns each query's seconds."""
  times = []
  for db, sql in jobs:
    start = time.perf_counter()
    conn = sqlite3.connect(db)
    conn.text_factory = lambda b: b.decode(errors='ignore')
    conn.execute(sql).fetchall()
    conn.close()
    times.append(time.perf_counter() - start)
  return times


def _started_pool(workers: int, db: str) -> SqlPool:
  pool = SqlPool(workers, progress=False)
  pool.map([(db, 'SELECT 1')] * workers)
  return pool


def timed(fn) -> tuple[float, object]:
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  databases, queries = (4, 300) if args.quick else (8, 2000)
  cpus = os.cpu_count() or 1
  with tempfile.TemporaryDirectory() as folder:
    paths = make_databases(folder, databases, args.seed)
    jobs = make_jobs(paths, queries, args.seed)
    execute(paths[0], 'SELECT 1')  # the shared worker's start is not a per-query cost
    seconds: dict[str, list[float]] = {}
    direct_per_query, worker_per_query = [], []
    pool_start = {}
    pools = {w: None for w in sorted({1, 2, cpus})}
    for w in pools:
      pool_start[w], pools[w] = timed(lambda: _started_pool(w, paths[0]))
    for _ in range(args.repeats):  # interleaved, so that each row sees the same machine load
      total, direct = timed(lambda: sequential_sqlite(jobs))
      seconds.setdefault('sequential sqlite3 (official evaluators)', []).append(total)
      direct_per_query.append(sum(direct) / len(jobs))
      total, results = timed(lambda: [execute(db, sql) for db, sql in jobs])
      assert all(r.ok for r in results), next(r.error for r in results if not r.ok)
      seconds.setdefault('`execute`, one by one', []).append(total)
      worker_per_query.append(sum(r.seconds for r in results) / len(jobs))
      for w, pool in pools.items():
        seconds.setdefault(f'`SqlPool.map`, {w} worker{"s" if w > 1 else ""}', []).append(timed(
            lambda: pool.map(jobs))[0])
    for pool in pools.values():
      pool.close()
  base = statistics.median(seconds['sequential sqlite3 (official evaluators)'])
  print(f'SQL executor, {queries} queries on {databases} generated databases, median of {args.repeats} passes; '
        f'{platform.processor() or platform.machine()}, {cpus} CPUs, Python {platform.python_version()}, '
        f'SQLite {sqlite3.sqlite_version}, {datetime.date.today()}\n')
  print('| approach | queries/s | ms/query | vs sequential |')
  print('|---|---|---|---|')
  for name, values in seconds.items():
    median = statistics.median(values)
    print(f'| {name} | {queries / median:.0f} | {1000 * median / queries:.3f} | {base / median:.2f}x |')
  overhead = statistics.median(seconds['`execute`, one by one']) / queries - base / queries
  inside, direct = statistics.median(worker_per_query), statistics.median(direct_per_query)
  print(f'\n- `execute` overhead per query: {1000 * overhead:+.3f} ms. A query takes {1000 * inside:.3f} ms inside '
        f'the worker (sandboxed, on a kept connection) against {1000 * direct:.3f} ms for the official connect, '
        f'execute, fetchall, close; the remaining {1000 * (overhead + direct - inside):.3f} ms are pickling, the '
        'pipe round trip and process scheduling.')
  print('- Pool start-up (construction and a first map of one trivial query per worker): '
        + ', '.join(f'{w} worker{"s" if w > 1 else ""} {s:.2f} s' for w, s in pool_start.items()) + '.')


if __name__ == '__main__':
  main()
