"""Orbax checkpoints holding the train state, the data iterator state and the config.

Saves are asynchronous and atomic: orbax writes a step into a temporary directory and
renames it when every item is on disk, and only renamed (finalised) steps are ever listed.
A process killed at any moment therefore leaves either a complete step or a temporary
directory that restore ignores and the next manager removes.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from mmjax.train.optimizer import path_str


class IncompatibleCheckpointError(ValueError):
  """The workdir holds a checkpoint whose state does not fit the current config."""


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with mmjax's three items."""

  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True):
    # orbax needs absolute paths; URLs such as gs://bucket/run are absolute already.
    self.directory = epath.Path(directory if '://' in str(directory) else os.path.abspath(directory))
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(every), 1),
        max_to_keep=int(keep) if keep and keep > 0 else None,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        create=True,
    )
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(), 'data': ocp.JsonCheckpointHandler(),
                       'config': ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: Mapping[str, Any], config: Mapping[str, Any],
           *, force: bool = False) -> bool:
    """Starts an (async) save of `step`; returns whether a save was started."""
    return self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(dict(data_state)),
            config=ocp.args.JsonSave(_jsonable(config)),
        ),
        force=force,
    )

  def check_compatible(self, step: int, abstract_state: Any, config: Mapping[str, Any]) -> None:
    """Raises IncompatibleCheckpointError naming every mismatching array or path."""
    meta = self.manager.item_metadata(step)['state']
    if meta is None:
      raise IncompatibleCheckpointError(f'The checkpoint at step {step} in {self.directory} has no train state.')
    want = _shapes(abstract_state)
    have = _shapes(meta)
    if 'opt_state' in meta and 'opt_states' not in meta:
      raise IncompatibleCheckpointError(
          f'The checkpoint at step {step} in {self.directory} has the train-state layout of an older mmjax '
          '(opt_state, ema_params) and cannot be resumed; start a new --workdir with '
          f'--config.init_from={self.directory.parent} to keep its params.')
    problems, others = [], 0
    for k in sorted(set(want) | set(have)):
      if k not in have:
        line = f'  {k}: missing from the checkpoint (config expects {want[k]})'
      elif k not in want:
        line = f'  {k}: in the checkpoint {have[k]} but not in the config'
      elif tuple(want[k]) != tuple(have[k]):
        line = f'  {k}: checkpoint shape {tuple(have[k])} vs config shape {tuple(want[k])}'
      else:
        continue
      if k.startswith(('params/', 'extra/')) or k in ('step', 'rng'):
        problems.append(line)
      else:  # optimiser and EMA states mirror the params: count them only
        others += 1
    if others:
      problems.append(f'  ... and {others} optimiser/EMA state arrays that differ accordingly')
    if problems:
      saved = self.restore_config(step)
      diff = _config_diff(saved, _jsonable(config)) if saved is not None else []
      msg = [f'The checkpoint at step {step} in {self.directory} was written by an incompatible config:']
      msg += problems[:50] + ([f'  ... and {len(problems) - 50} more'] if len(problems) > 50 else [])
      if diff:
        msg.append('Config keys that differ (checkpoint -> now):')
        msg += [f'  {d}' for d in diff[:20]]
      msg.append('Use another --workdir, or restore the original config. Nothing in the workdir was changed.')
      raise IncompatibleCheckpointError('\n'.join(msg))

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores `step` into `abstract_state`'s shapes, dtypes and shardings (a `TrainState.saved()` tree)."""
    out = self.manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                data=ocp.args.JsonRestore()),
    )
    return out['state'], dict(out['data'] or {})

  def restore_config(self, step: int) -> dict[str, Any] | None:
    try:
      return dict(self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config'])
    except Exception as e:  # an unreadable config only loses the diff in an error message
      logging.warning('Could not read the config of checkpoint %d: %s', step, e)
      return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, 'shape'))[0]
  return {path_str(p): tuple(getattr(x, 'shape', ())) for p, x in leaves}


def _jsonable(x: Any) -> Any:
  if hasattr(x, 'to_dict'):
    x = x.to_dict()
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.generic,)):
    return x.item()
  if isinstance(x, (str, int, float, bool)) or x is None:
    return x
  return repr(x)


def _config_diff(a: Any, b: Any, prefix: str = '') -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _config_diff(a.get(k, '<absent>'), b.get(k, '<absent>'), f'{prefix}{k}.')
    return out
  return [] if json.dumps(a) == json.dumps(b) else [f'{prefix[:-1]}: {a!r} -> {b!r}']
