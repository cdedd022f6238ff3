"""Metrics: JSON lines always, TensorBoard optionally, and a tqdm progress bar."""
from __future__ import annotations

import json
import logging as logging_std
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging


class _DropLibraryInfo(logging_std.Filter):
  """Drops INFO records from libraries that narrate every step of a save (orbax)."""

  def filter(self, record):
    return record.levelno > logging_std.INFO or '/orbax/' not in record.pathname


def quiet_library_logs() -> None:
  """Keeps orbax's per-save INFO lines out of the training log (warnings still show)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
    handler.addFilter(_DropLibraryInfo())


class MetricsWriter:
  """Appends one JSON object per logged step (and kind: train, eval, setup) to `workdir/metrics.jsonl`.

  Only process 0 writes files; every process logs the scalars so multi-host runs can be
  compared line by line. A resumed run first drops the rows of the steps it redoes (`drop_after`),
  so the file keeps one row per step and kind.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = False, is_primary: bool = True):
    self.is_primary = is_primary
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._kept: set[tuple[int, str]] = set()  # (step, kind) of the rows at the step a resumed run restarts from
    self._tb = None
    if is_primary and tensorboard:
      from tensorboardX import SummaryWriter  # optional at run time only when asked for
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def drop_after(self, step: int) -> None:
    """Drops the rows of steps after `step` (process 0), and any line a killed run left half written: a run
    resumed at `step` redoes those steps. A row written later for a (step, kind) kept at `step` replaces it."""
    if not self.is_primary or not os.path.exists(self.path):
      return
    rows = self._rows()
    kept = [row for row in rows if row['step'] <= step]
    self._kept = {(row['step'], row['kind']) for row in kept if row['step'] == step}
    with open(self.path) as f:
      lines = sum(1 for _ in f)
    if len(kept) < lines:
      logging.info('Dropped %d lines after step %d from %s: the resumed run redoes those steps.',
                   lines - len(kept), step, self.path)
      self._replace_file(kept)


  def _rows(self) -> list[dict[str, Any]]:
    rows = []
    with open(self.path) as f:
      for n, line in enumerate(f, 1):
        try:
          row = json.loads(line)
        except ValueError:
          logging.warning('Dropping line %d of %s: it is not JSON (a run was killed while writing it).', n, self.path)
          continue
        if isinstance(row, dict) and isinstance(row.get('step'), int):
          rows.append(row)
        else:
          logging.warning('Dropping line %d of %s: it is not a metrics row.', n, self.path)
    return rows

  def _replace_file(self, rows: list[dict[str, Any]]) -> None:
    """Rewrites the file atomically: a kill while rewriting leaves the old file whole."""
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(json.dumps(row) + '\n' for row in rows)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path)

  def write(self, step: int, scalars: Mapping[str, Any], *, kind: str = 'train') -> None:
    row = {'step': int(step), 'kind': kind}
    row.update({k: _scalar(v) for k, v in scalars.items()})
    logging.info('%s step %d: %s', kind, step,
                 ', '.join(f'{k}={v:.6g}' if isinstance(v, float) else f'{k}={v}'
                           for k, v in row.items() if k not in ('step', 'kind')))
    if not self.is_primary:
      return
    if (row['step'], kind) in self._kept:  # e.g. the final eval of a finished run that was started again
      self._kept.discard((row['step'], kind))
      self._replace_file([r for r in self._rows() if (r['step'], r['kind']) != (row['step'], kind)])
    with open(self.path, 'a') as f:

      f.write(json.dumps(row) + '\n')
    if self._tb is not None:
      for k, v in row.items():
        if k not in ('step', 'kind') and isinstance(v, (int, float)):
          self._tb.add_scalar(f'{kind}/{k}', v, step)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _scalar(v: Any) -> Any:
  v = np.asarray(v)
  if v.ndim:
    raise ValueError(f'metrics must be scalars, got shape {v.shape}')
  return v.item()


class Progress:
  """A tqdm bar with steps/s, examples/s and ETA (process 0 only)."""

  def __init__(self, *, start: int, total: int, batch_size: int, enabled: bool):
    self.batch_size = batch_size
    self._bar = None
    if enabled:
      from tqdm import tqdm
      self._bar = tqdm(total=total, initial=start, unit='step', dynamic_ncols=True, smoothing=0.1)
    self._t = time.perf_counter()
    self._step = start

  def update(self, step: int, loss: float | None = None) -> None:
    if self._bar is None:
      return
    now = time.perf_counter()
    n = step - self._step
    self._bar.update(n)
    if n > 0 and now > self._t:
      post = {'ex/s': f'{n * self.batch_size / (now - self._t):.1f}'}
      if loss is not None:
        post['loss'] = f'{loss:.4f}'
      self._bar.set_postfix(post, refresh=False)
    self._t, self._step = now, step

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


# Dense bf16 peak FLOP/s per chip, by substring of `device_kind` (vendor spec sheets).
PEAK_FLOPS = (
    ('H200', 989e12), ('H100', 989e12), ('A100', 312e12), ('L4', 121e12),
    ('TPU v6', 918e12), ('TPU v5p', 459e12), ('TPU v5', 197e12), ('TPU v4', 275e12),
)


def peak_flops(device_kind: str) -> float | None:
  """Peak FLOP/s of one device, or None when unknown (e.g. CPUs)."""
  for name, flops in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return flops
  return None
