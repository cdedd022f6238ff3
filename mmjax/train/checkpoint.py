"""Orbax checkpoints holding the train state, the data iterator state and the config.

Saves are asynchronous and atomic: orbax writes a step into a temporary directory and
renames it when every item is on disk. A process killed at any moment therefore leaves
either a complete step or a temporary directory that restore ignores and the next writer
removes.

Reading never writes: the steps are listed and restored from the files themselves (no
`CheckpointManager`, which would create `checkpoints/` and remove other runs' temporary
directories), so evaluation can read a workdir beside its live training run. The manager
that saves is made at the first save, by the run that holds the workdir's lock. A step
that does not restore raises CorruptCheckpointError naming the file, so that the trainer
can fall back to the step before it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from mmjax.train import resume_config
from mmjax.train.optimizer import path_str


class IncompatibleCheckpointError(ValueError):
  """The workdir holds a checkpoint whose state does not fit the current config."""


class CorruptCheckpointError(ValueError):
  """A step directory is incomplete or unreadable; the message names the file."""


SET_ASIDE = 'checkpoints_set_aside'  # beside checkpoints/: steps a resumed run moved out of its way, kept
_ITEM_FILE = 'metadata'  # the file JsonCheckpointHandler writes into its item directory
_FINISHED = '_METADATA'  # written into a PyTree item directory when its arrays are all on disk


class Checkpointer:
  """mmjax's three items (state, data, config) under `directory`: saves through an `ocp.CheckpointManager` made at
  the first save; steps are listed and restored read-only. `read_only=True` refuses to save."""

  def __init__(self, directory: str, *, every: int = 1, keep: int = 0, async_save: bool = True,
               read_only: bool = False, allow_config_change: Collection[str] | None = None):
    # orbax needs absolute paths; URLs such as gs://bucket/run are absolute already.
    self.directory = epath.Path(directory if '://' in str(directory) else os.path.abspath(directory))
    self.read_only = read_only
    # None: restoring checks shapes only (evaluation); else a resumed run's config changes are policed
    # (mmjax.train.resume_config), allowing the keys named.
    self.allow_config_change = allow_config_change
    self._options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(every), 1),
        max_to_keep=int(keep) if keep and keep > 0 else None,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        create=True,
    )
    self._manager: ocp.CheckpointManager | None = None

  @property
  def manager(self) -> ocp.CheckpointManager:
    """The saving manager; making it creates `directory` and removes temporary directories of unfinished saves,
    so only the workdir's lock holder may."""
    if self.read_only:
      raise RuntimeError(f'{self.directory} was opened read-only')
    if self._manager is None:
      self._manager = ocp.CheckpointManager(
          self.directory, options=self._options,
          item_handlers={'state': ocp.StandardCheckpointHandler(), 'data': ocp.JsonCheckpointHandler(),
                         'config': ocp.JsonCheckpointHandler()})
    return self._manager

  def steps(self) -> list[int]:
    """Every step directory (a numeric name; temporary directories of saves in progress are not), oldest first,
    complete or not."""
    if not self.directory.is_dir():
      return []
    return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir())

  def problem(self, step: int) -> str | None:
    """Why step `step` cannot be restored, naming the file, from a look at its files (cheap); None if it looks
    complete. Restoring can still fail on a damaged array file."""
    root = self.directory / str(step)
    if not root.is_dir():
      return f'{root} does not exist'
    if not any(root.iterdir()):
      return f'{root} is empty'
    if not (root / 'state').is_dir():
      return f'{root / "state"} is missing'
    if not (root / 'state' / _FINISHED).exists():
      return f'{root / "state" / _FINISHED} is missing (the save of the train state did not finish)'
    try:
      self._data(step)
    except CorruptCheckpointError as e:
      return str(e)
    return None

  def latest_step(self) -> int | None:
    """The newest step that looks complete (`problem` is None)."""
    return next((s for s in reversed(self.steps()) if self.problem(s) is None), None)

  def _data(self, step: int) -> dict[str, Any]:
    """The data item of `step`: {'iterator': iterator state JSON}; CorruptCheckpointError naming the file."""
    path = self.directory / str(step) / 'data' / _ITEM_FILE
    data = _read_json(path)
    if not isinstance(data, dict) or 'iterator' not in data:
      raise CorruptCheckpointError(f'{path} holds no data iterator state (a JSON object with an "iterator" key)')
    if isinstance(data['iterator'], str):  # the iterator's own state, itself JSON
      try:
        json.loads(data['iterator'])
      except ValueError as e:
        raise CorruptCheckpointError(f'{path}: its iterator state is not valid JSON ({e})') from None
    return data

  def state_metadata(self, step: int) -> Any:
    """The saved train state's tree of array metadata (shapes, dtypes), read-only."""
    path = self.directory / str(step) / 'state'
    if not (path / _FINISHED).exists():
      raise CorruptCheckpointError(f'{path / _FINISHED} is missing (the save of the train state did not finish)')
    handler = ocp.StandardCheckpointHandler()
    try:
      return handler.metadata(path).tree
    except Exception as e:  # any failure to read it is a damaged file; the error names it
      raise CorruptCheckpointError(f'{path} does not restore: its array metadata does not read '
                                   f'({_first_line(e)})') from None
    finally:
      handler.close()

  def set_aside(self, steps: list[int], why: Mapping[int, str]) -> None:
    """Moves step directories out of the saving manager's way into `../checkpoints_set_aside/` (kept, never
    deleted), logging each with its reason."""
    target = self.directory.parent / SET_ASIDE
    for step in steps:
      target.mkdir(parents=True, exist_ok=True)
      dest = target / str(step)
      n = 0
      while dest.exists():
        n += 1
        dest = target / f'{step}.{n}'
      (self.directory / str(step)).rename(dest)
      logging.warning('Set aside step %d as %s (%s); nothing was deleted.', step, dest, why.get(step, ''))

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
    meta = self.state_metadata(step)
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
    if self.allow_config_change is not None:
      saved = self.restore_config(step)
      if saved is not None:  # else restore_config warned that the changes cannot be checked
        resume_config.check(saved, _jsonable(config), self.allow_config_change,
                            where=f'the checkpoint at step {step} in {self.directory}')

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores `step` into `abstract_state`'s shapes, dtypes and shardings (a `TrainState.saved()` tree), reading
    only; CorruptCheckpointError naming the file when the step is incomplete or does not restore."""
    why = self.problem(step)
    if why is not None:
      raise CorruptCheckpointError(why)
    path = self.directory / str(step) / 'state'
    handler = ocp.StandardCheckpointHandler()
    try:
      state = handler.restore(path, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # a missing or damaged array file; the caller falls back
      raise CorruptCheckpointError(f'{path} does not restore: {_first_line(e)}') from None
    finally:
      handler.close()
    return state, self._data(step)

  def restore_config(self, step: int) -> dict[str, Any] | None:
    try:
      return dict(_read_json(self.directory / str(step) / 'config' / _ITEM_FILE))
    except (CorruptCheckpointError, TypeError, ValueError) as e:  # an unreadable config only loses the diff
      logging.warning('Could not read the config of checkpoint %d: %s', step, e)
      return None

  def wait(self) -> None:
    if self._manager is not None:
      self._manager.wait_until_finished()

  def close(self) -> None:
    if self._manager is not None:
      self._manager.wait_until_finished()
      self._manager.close()


def _first_line(e: BaseException) -> str:
  text = str(e).strip() or type(e).__name__
  return text.splitlines()[0][:300]


def _read_json(path: epath.Path) -> Any:
  """The JSON in `path`; CorruptCheckpointError naming it when it is missing, empty or not JSON."""
  try:
    text = path.read_text()
  except FileNotFoundError:
    raise CorruptCheckpointError(f'{path} is missing') from None
  if not text.strip():
    raise CorruptCheckpointError(f'{path} is empty')
  try:
    return json.loads(text)
  except ValueError as e:
    raise CorruptCheckpointError(f'{path} is not valid JSON ({e})') from None



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
