"""One writer per workdir: a lock file naming the training run that holds it (host and pid).

A training run takes the lock before it reads or writes anything in its workdir and removes the file when it ends;
evaluation, conversion and generation never take it (they only read). While held, the file is also `flock`ed, so two
runs starting at the same moment cannot both take it. What the file names decides whether a lock left behind by a
run that died (SIGKILL, a lost machine) is stale: one from this host whose pid is gone is taken over with a warning;
one from another host cannot be checked from here and is refused, naming the holder and how to remove it.

On a multi-process run only process 0 takes the lock (the processes may share one filesystem); the others learn
from it whether it succeeded, so that all of them stop together when the workdir is taken.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

LOCK_NAME = 'writer.lock'
# errno of a filesystem without flock support: the file's contents alone then decide.
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class WorkdirLockedError(ValueError):
  """Another training run holds (or may hold) the workdir's lock; nothing in the workdir was changed."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # it exists, under another user
    return True
  return True


def _describe(holder: dict[str, Any]) -> str:
  """'host H, pid P, since YYYY-MM-DD HH:MM:SS' of a lock file's contents."""
  since = holder.get('since')
  when = ''
  if isinstance(since, (int, float)) and since > 0:
    when = time.strftime(', since %Y-%m-%d %H:%M:%S', time.localtime(since))
  return f"host {holder.get('host')!s}, pid {holder.get('pid')!s}{when}"


class WorkdirLock:
  """The lock file `workdir/writer.lock`: {"host", "pid", "since"} of the run that holds it."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self._fd: int | None = None

  def _refuse(self, why: str) -> WorkdirLockedError:
    return WorkdirLockedError(f'{self.workdir} is being trained by another run ({why}); a workdir has one writer: '
                              'wait for that run to end or use another --workdir. Nothing was changed.')

  def acquire(self) -> None:
    """Takes the lock or raises WorkdirLockedError naming the holder; takes over a stale one with a warning."""
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno not in _NO_FLOCK:
          os.close(fd)
          if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise self._refuse(self._live_holder()) from None
          raise
      try:  # the holder may have removed the file between our open and flock: lock the file at the path
        same = os.path.samestat(os.fstat(fd), os.stat(self.path))
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    try:
      self._take(fd)
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd

  def _live_holder(self) -> str:
    for _ in range(50):  # a run that has just taken the lock writes its name at once
      holder = self._read()
      if holder is not None:
        return _describe(holder)
      time.sleep(0.01)
    return f'a process that holds {self.path}'

  def _read(self) -> dict[str, Any] | None:
    try:
      with open(self.path) as f:
        holder = json.load(f)
    except (OSError, ValueError):
      return None
    return holder if isinstance(holder, dict) else None

  def _take(self, fd: int) -> None:
    holder = self._read()
    host = socket.gethostname()
    if holder is not None:
      pid = holder.get('pid')
      if holder.get('host') != host:
        raise WorkdirLockedError(
            f'{self.workdir} is locked by a training run on another machine ({_describe(holder)}), which cannot '
            f'be checked from {host}: if that run is no longer running, delete {self.path}; otherwise wait for it '
            'or use another --workdir. Nothing was changed.')
      if isinstance(pid, int) and pid != os.getpid() and _alive(pid):
        raise self._refuse(f'{_describe(holder)}; if that process is not an mmjax run, delete {self.path}')
      logging.warning('Taking over the lock %s of a run that is gone (%s).', self.path, _describe(holder))
    elif os.fstat(fd).st_size:
      logging.warning('Taking over the unreadable lock file %s (no run holds it).', self.path)
    data = json.dumps({'host': host, 'pid': os.getpid(), 'since': time.time()}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)

  def release(self) -> None:
    """Removes the lock file (if it is still ours) and drops the flock."""
    if self._fd is None:
      return
    try:
      if os.path.samestat(os.fstat(self._fd), os.stat(self.path)):
        os.unlink(self.path)
    except FileNotFoundError:
      pass
    finally:
      os.close(self._fd)
      self._fd = None


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[WorkdirLock | None]:
  """Holds the workdir's lock for the body (process 0 takes it; every process raises WorkdirLockedError if it
  could not be taken). Yields the lock on process 0, else None."""
  lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
  error: BaseException | None = None
  if lock is not None:
    try:
      lock.acquire()
    except Exception as e:  # told to the other processes below, then raised
      error = e
  if jax.process_count() > 1:
    ok = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not ok and error is None:
      error = WorkdirLockedError(f'process 0 could not take the lock of {workdir} (its log says why); '
                                 'nothing was changed.')
  if error is not None:
    raise error
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()
