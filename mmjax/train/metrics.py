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
  """Appends one JSON object per logged step to `workdir/metrics.jsonl`.

  Only process 0 writes files; every process logs the scalars so multi-host runs can be
  compared line by line.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = False, is_primary: bool = True):
    self.is_primary = is_primary
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if is_primary and tensorboard:
      from tensorboardX import SummaryWriter  # optional at run time only when asked for
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: Mapping[str, Any], *, kind: str = 'train') -> None:
    row = {'step': int(step), 'kind': kind}
    row.update({k: _scalar(v) for k, v in scalars.items()})
    logging.info('%s step %d: %s', kind, step,
                 ', '.join(f'{k}={v:.6g}' if isinstance(v, float) else f'{k}={v}'
                           for k, v in row.items() if k not in ('step', 'kind')))
    if not self.is_primary:
      return
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
