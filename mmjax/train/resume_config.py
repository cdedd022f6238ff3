"""Which config changes a resumed run accepts.

A run resumed from a checkpoint continues the run that wrote it, so the config stored in the checkpoint is diffed
against the new one, key by key (dotted keys of the leaves, e.g. `data.test_fraction`). Each changed key falls in
one of three classes, by the first row of `RULES` that matches it (a row names a key or a subtree: `mesh` matches
`mesh.data`; `*` is a wildcard):

  safe       how the run is logged, saved, laid out or computed, never what it learns from: accepted, with a
             warning naming the keys.
  stateless  changes what later steps do but stores nothing in the checkpoint (gradient clipping): accepted.
  refused    would silently corrupt the run (examples skipped, repeated or moved between splits, the learning
             rate jumping, stored arrays cast): refused unless `--allow_config_change=key,...` names the key (or a
             subtree above it); then accepted with a warning.

The keys of every optimiser sub-dict (any sub-dict holding `lr`, `schedule` and `clip_norm`: `optim`, or an
experiment's `optim_g` and `optim_d`) are matched as `optim.<key>`. A key in only one of the two configs counts as
changed (its other value shows as <absent>). A key the table does not know is refused: mmjax cannot tell what it
changes. A key added to `base_config()` needs a row here.

Decisions worth stating: `compute_dtype` is safe (the params and optimiser state stay in `param_dtype`; only the
precision of later steps changes), `param_dtype` is refused (restore would cast the stored weights and Adam moments
for good); `grad_accum_steps` is safe (the same examples per step, split into microbatches: the same mean gradient
up to rounding); `total_steps` and every schedule key are refused (the learning rate jumps), as are learning rates.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
from collections.abc import Collection, Mapping
from typing import Any

from absl import logging

SAFE, STATELESS, REFUSED = 'safe', 'stateless', 'refused'

# (keys or subtrees, class, why); the first row that matches a key classifies it.
RULES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (('log_every', 'eval_every', 'ckpt_every', 'keep_ckpts', 'progress_bar', 'tensorboard', 'profile_steps',
      'async_checkpointing'), SAFE, 'how the run is logged, evaluated and saved'),
    (('mesh', 'sharding_rules'), SAFE, 'how arrays are laid out on the devices; restore reshards the checkpoint'),
    (('compute_dtype',), SAFE, 'the precision of later steps; params and optimiser state keep param_dtype'),
    (('remat', 'remat_policy'), SAFE, 'recomputes activations in the backward pass: the same math'),
    (('xla_options',), SAFE, 'how XLA compiles the step: the same math, rounded as another program rounds it'),
    (('grad_accum_steps',), SAFE, 'microbatches of the same examples: the same mean gradient up to rounding'),
    (('init_from',), SAFE, "ignored when resuming: the checkpoint's params win"),
    (('variant',), SAFE, 'a label; the keys it sets are checked one by one'),
    (('eval', 'data.verify'), SAFE, 'evaluation and input checks only'),
    (('optim.clip_norm',), STATELESS, 'gradient clipping keeps no state'),
    (('batch_size',), REFUSED, 'the data iterator resumes at a batch count: another batch size skips or repeats '
     'examples'),
    (('seed',), REFUSED, 'reshuffles the data mid-epoch'),
    (('data',), REFUSED, 'changes which examples the steps see: a split or an order drawn anew'),
    (('param_dtype',), REFUSED, 'casts the stored params and optimiser state for good'),
    (('total_steps', 'optim.schedule', 'optim.schedule_steps', 'optim.warmup_steps', 'optim.end_lr_factor',
      'optim.groups.*.schedule', 'optim.groups.*.warmup_steps', 'optim.groups.*.end_lr_factor'), REFUSED,
     'the learning-rate schedule changes length or shape: the learning rate jumps'),
    (('optim.lr', 'optim.groups.*.lr'), REFUSED, 'the learning rate jumps'),
    (('optim.groups', 'optim.group_spec'), REFUSED, "changes the parameter groups' learning rates or freezing"),
    (('optim',), REFUSED, "changes the optimiser's update rule mid-run"),
    (('ema_decay', 'ema_regex'), REFUSED, 'changes what the stored EMA averages'),
    (('experiment', 'model'), REFUSED, 'changes the model; a change that keeps every shape would go unnoticed'),
    (('*',), REFUSED, 'mmjax cannot tell what this key changes'),
)
_OPTIMISER_KEYS = ('lr', 'schedule', 'clip_norm')


class _Absent:
  def __repr__(self) -> str:
    return '<absent>'


ABSENT = _Absent()  # the value of a key that one of the two configs lacks


class ConfigChangeError(ValueError):
  """A resumed run's config changes keys that would corrupt it, and --allow_config_change does not name them."""


@dataclasses.dataclass(frozen=True)
class Change:
  """One changed leaf key: its values in the checkpoint's config and now, its class and why."""
  key: str
  old: Any
  new: Any
  kind: str
  why: str

  def __str__(self) -> str:
    return f'{self.key}: {self.old!r} -> {self.new!r} ({self.why})'


def _leaves(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_leaves(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _optimiser_prefixes(tree: Mapping[str, Any], prefix: str = '') -> set[str]:
  """Dotted keys of the sub-dicts that hold an optimiser's keys."""
  out = set()
  for k, v in tree.items():
    if isinstance(v, Mapping):
      if all(key in v for key in _OPTIMISER_KEYS):
        out.add(f'{prefix}{k}')
      out |= _optimiser_prefixes(v, f'{prefix}{k}.')
  return out


def _matches(key: str, pattern: str) -> bool:
  """`pattern` names `key` or a subtree above it."""
  return any(fnmatch.fnmatchcase(k, pattern) for k in _heads(key))


def _heads(key: str) -> list[str]:
  parts = key.split('.')
  return ['.'.join(parts[:i]) for i in range(1, len(parts) + 1)]


def classify(key: str, optimisers: Collection[str] = ('optim',)) -> tuple[str, str]:
  """(class, why) of a changed dotted `key`; `optimisers` are the dotted keys of the optimiser sub-dicts."""
  for prefix in sorted(optimisers, key=len, reverse=True):
    if key.startswith(prefix + '.'):
      key = 'optim.' + key[len(prefix) + 1:]
      break
  for patterns, kind, why in RULES:
    if any(_matches(key, p) for p in patterns):
      return kind, why
  raise AssertionError('RULES ends with a catch-all row')


def changes(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[Change]:
  """Every leaf key whose value differs between the checkpoint's config `stored` and `current` (JSON-like dicts),
  classified, in key order."""
  old, new = _leaves(stored), _leaves(current)
  optimisers = _optimiser_prefixes(stored) | _optimiser_prefixes(current)
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, ABSENT), new.get(key, ABSENT)
    if a is not ABSENT and b is not ABSENT and json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True):
      continue
    out.append(Change(key, a, b, *classify(key, optimisers)))
  return out


def is_allowed(key: str, allowed: Collection[str]) -> bool:
  """`allowed` names `key` or a subtree above it (`data` allows `data.test_fraction`)."""
  return any(head in allowed for head in _heads(key))


def check(stored: Mapping[str, Any], current: Mapping[str, Any], allowed: Collection[str] = (), *,
          where: str = 'the checkpoint') -> list[Change]:
  """Applies the policy: raises ConfigChangeError listing every refused change that `allowed` does not name (with
  the fix), else logs the accepted changes (a warning for safe and allowed ones) and returns every change.

  Raises ValueError when `allowed` names a key that neither config holds (a typo).
  """
  keys = set(_leaves(stored)) | set(_leaves(current))
  unknown = [a for a in allowed if not any(is_allowed(k, (a,)) for k in keys)]
  if unknown:
    raise ValueError(f'--allow_config_change names {", ".join(unknown)}, which neither the config nor the one '
                     f'stored in {where} holds')
  found = changes(stored, current)
  blocked = [c for c in found if c.kind == REFUSED and not is_allowed(c.key, allowed)]
  if blocked:
    names = ','.join(c.key for c in blocked)
    raise ConfigChangeError('\n'.join(
        [f'Resuming from {where} would change config keys that corrupt the run (checkpoint -> now):']
        + [f'  {c}' for c in blocked]
        + [f'Restore their values, use another --workdir, or accept the change with --allow_config_change={names}. '
           'Nothing in the workdir was changed.']))
  warned = [c for c in found if c.kind != STATELESS]
  if warned:
    logging.warning('Resuming from %s with changed config keys (checkpoint -> now): %s', where,
                    '; '.join(str(c) for c in warned))
  for c in found:
    if c.kind == STATELESS:
      logging.info('Resuming with %s', c)
  return found
