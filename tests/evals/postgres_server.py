"""A throwaway PostgreSQL server for tests: `postgres_server` starts one per test module and removes it afterwards.

initdb/pg_ctl come from PATH or /usr/lib/postgresql/<version>/bin. PostgreSQL refuses to run as root, so under
root they run as the `postgres` user (runuser), in a fresh data directory under the system temp folder (pytest's
own tmp folders are private to root), on a free localhost port with trust authentication. The fixture loads a
small schema (`SCHEMA` below) into the database `evaldb` and creates the login role `reader`, which may only
SELECT: `reader_dsn` is what the executor gets, `admin_dsn` (superuser) is for checking that nothing changed.
Skipped, with the reason, only where no server binary exists.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

import pytest

SCHEMA = """
CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL, city text);
CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer REFERENCES customers(id), amount numeric(8, 2));
INSERT INTO customers SELECT i, 'customer ' || i, CASE WHEN i % 2 = 0 THEN 'Oslo' ELSE 'Lima' END
  FROM generate_series(1, 20) AS i;
INSERT INTO orders SELECT i, 1 + i % 20, i * 1.5 FROM generate_series(1, 100) AS i;
"""


@dataclasses.dataclass(frozen=True)
class PostgresServer:
  """A running server: `reader_dsn` connects as the read-only role, `admin_dsn` as the superuser."""
  port: int
  data_dir: str
  reader_dsn: str
  admin_dsn: str


def server_binaries() -> str | None:
  """The folder holding initdb and pg_ctl, or None."""
  initdb = shutil.which('initdb')
  if initdb and shutil.which('pg_ctl'):
    return os.path.dirname(os.path.realpath(initdb))
  folders = sorted(glob.glob('/usr/lib/postgresql/*/bin'), key=lambda p: int(p.split('/')[-2]))
  return next((f for f in reversed(folders) if os.path.exists(f'{f}/initdb')), None)


def _as_server_user(args: list[str]) -> list[str]:
  return ['runuser', '-u', 'postgres', '--', *args] if os.geteuid() == 0 else args


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start_server(binaries: str) -> PostgresServer:
  """Creates a cluster, starts it and loads SCHEMA; the caller stops it with `stop_server`."""
  import psycopg

  data_dir = tempfile.mkdtemp(prefix='mmjax-postgres-')
  if os.geteuid() == 0:
    user = pwd.getpwnam('postgres')
    os.chown(data_dir, user.pw_uid, user.pw_gid)
  port = _free_port()
  run = lambda args: subprocess.run(_as_server_user(args), check=True, capture_output=True, text=True, timeout=120)
  try:
    run([f'{binaries}/initdb', '-D', data_dir, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8'])
    options = f'-p {port} -k {data_dir} -c listen_addresses=127.0.0.1 -c fsync=off'
    run([f'{binaries}/pg_ctl', 'start', '-w', '-t', '60', '-D', data_dir, '-l', f'{data_dir}/server.log', '-o',
         options])
  except subprocess.CalledProcessError as e:
    shutil.rmtree(data_dir, ignore_errors=True)
    raise RuntimeError(f'{e.cmd[-1]}: PostgreSQL failed to start: {e.stderr.strip() or e.stdout.strip()}') from None
  server = PostgresServer(port, data_dir, f'postgresql://reader@127.0.0.1:{port}/evaldb',
                          f'postgresql://postgres@127.0.0.1:{port}/evaldb')
  with psycopg.connect(f'postgresql://postgres@127.0.0.1:{port}/postgres', autocommit=True) as conn:
    conn.execute('CREATE DATABASE evaldb')
    conn.execute('CREATE ROLE reader LOGIN')
  with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
    conn.execute(SCHEMA)
    conn.execute('REVOKE CREATE ON SCHEMA public FROM PUBLIC')
    conn.execute('GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader')
  return server


def stop_server(server: PostgresServer, binaries: str) -> None:
  """Stops the server at once and deletes its data directory."""
  subprocess.run(_as_server_user([f'{binaries}/pg_ctl', 'stop', '-m', 'immediate', '-D', server.data_dir]),
                 capture_output=True, timeout=60)
  shutil.rmtree(server.data_dir, ignore_errors=True)


@pytest.fixture(scope='module')
def postgres_server():
  binaries = server_binaries()
  if binaries is None:
    pytest.skip('no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin')
  server = start_server(binaries)
  yield server
  stop_server(server, binaries)
