"""optax optimisers from config sub-dicts: schedules, clipping, parameter groups, frozen-until.

An optimiser sub-dict (`config.optim`, or the keys an experiment's `optimizers` names) describes one optimiser:
the parameters it updates (`regex`, '' = all), its base rule (adamw | sgd), its schedule and clipping, and parameter
groups that select parameters by a regex over their '/'-joined path (first match wins; the rest form the 'default'
group). Each group has its own peak learning rate and schedule shape, is frozen (no update, no optimiser state), or
is frozen until update k (learning rate 0 and no state change for its first k updates, then its schedule runs over
the remaining updates, warmup included). Schedules are functions of the optimiser's own update count, which equals
the train step for the trainer's default step.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

DEFAULT_GROUP = 'default'
UNOWNED = ''  # label of the parameters an optimiser does not update (another optimiser's, or nobody's)

# Group keys, their types and the value that means "inherit from the optimiser".
GROUP_KEYS: dict[str, tuple[type, Any]] = {
    'regex': (str, ''), 'lr': (float, -1.0), 'frozen': (bool, False), 'frozen_until': (int, 0),
    'schedule': (str, ''), 'warmup_steps': (int, -1), 'end_lr_factor': (float, -1.0)}


def path_str(path) -> str:
  """'/'-joined name of a pytree key path."""
  parts = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return '/'.join(parts)


def optim_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The keys of one optimiser sub-dict (`config.optim`), with `overrides` applied."""
  c = ml_collections.ConfigDict()
  c.regex = ''  # the parameters this optimiser updates: a regex over their paths; '' selects all
  c.name = 'adamw'  # adamw | sgd
  c.lr = 1e-3
  c.schedule = 'cosine'  # cosine | linear | constant
  c.schedule_steps = 0  # updates the schedule spans; 0: config.total_steps
  c.warmup_steps = 0
  c.end_lr_factor = 0.0  # final lr as a fraction of the peak, for cosine/linear
  c.weight_decay = 0.0
  c.b1 = 0.9
  c.b2 = 0.999
  c.eps = 1e-8
  c.momentum = 0.9  # sgd only
  c.clip_norm = 1.0  # 0 disables clipping
  c.groups = ml_collections.ConfigDict()  # {name: group(...)}
  c.group_spec = ''  # groups from the command line, e.g. 'vision=^vision/:lr=2e-6;proj=^proj/:frozen_until=100'
  for k, v in overrides.items():
    c[k] = v
  return c


def group(regex: str, lr: float | None = None, frozen: bool = False, *, frozen_until: int = 0,
          schedule: str = '', warmup_steps: int | None = None,
          end_lr_factor: float | None = None) -> ml_collections.ConfigDict:
  """One parameter group for `optim.groups`; unset schedule keys inherit the optimiser's."""
  return ml_collections.ConfigDict({
      'regex': regex, 'lr': -1.0 if lr is None else float(lr), 'frozen': bool(frozen),
      'frozen_until': int(frozen_until), 'schedule': schedule,
      'warmup_steps': -1 if warmup_steps is None else int(warmup_steps),
      'end_lr_factor': -1.0 if end_lr_factor is None else float(end_lr_factor)})


def _typed(key: str, value: str, where: str) -> Any:
  kind = GROUP_KEYS[key][0]
  try:
    if kind is bool:
      if value.lower() not in ('1', '0', 'true', 'false', 'yes', 'no'):
        raise ValueError(value)
      return value.lower() in ('1', 'true', 'yes')
    return kind(value)
  except ValueError:
    raise ValueError(f'{where}: {key}={value!r} is not a valid {kind.__name__}') from None


def parse_group_spec(spec: str, where: str = 'config.optim.group_spec') -> dict[str, dict[str, Any]]:
  """'name=regex[:key=value...][;name=...]' -> {name: {key: value}} (the keys of `group`).

  Trailing ':word=value' parts are options; the regex before them may hold ':' otherwise (e.g. '(?:a|b)'). An empty
  regex ('vision=:lr=1e-5') changes the options of a group the config already defines.
  """
  out: dict[str, dict[str, Any]] = {}
  for entry in filter(None, (e.strip() for e in spec.split(';'))):
    name, sep, rest = entry.partition('=')
    name = name.strip()
    if not sep or not name:
      raise ValueError(f"{where}: entry {entry!r} must look like 'name=regex[:key=value...]'")
    parts = rest.split(':')
    options: dict[str, Any] = {}
    while len(parts) > 1 and re.fullmatch(r'\s*[a-z_]+\s*=.*', parts[-1]):
      key, _, value = parts.pop().partition('=')
      key = key.strip()
      if key not in GROUP_KEYS or key == 'regex':
        raise ValueError(f'{where} entry {name!r}: unknown key {key!r}; valid: '
                         f'{", ".join(k for k in GROUP_KEYS if k != "regex")}')
      options[key] = _typed(key, value.strip(), f'{where} entry {name!r}')
    if parts[0]:
      options['regex'] = ':'.join(parts)
    out[name] = options
  return out


@dataclasses.dataclass(frozen=True)
class GroupSpec:
  """One resolved parameter group."""
  name: str
  regex: str
  lr: float  # peak learning rate
  schedule: str
  warmup_steps: int
  end_lr_factor: float
  frozen: bool
  frozen_until: int


def resolve_groups(optim: Mapping[str, Any], where: str = 'config.optim') -> list[GroupSpec]:
  """The groups of `optim.groups` updated by `optim.group_spec`, in match order, the default group last."""
  groups: dict[str, dict[str, Any]] = {}
  for name, g in dict(optim.get('groups') or {}).items():
    g = dict(g)
    unknown = sorted(set(g) - set(GROUP_KEYS))
    if unknown:
      raise ValueError(f'{where}.groups.{name}: unknown key {unknown[0]!r}; valid: {", ".join(GROUP_KEYS)}')
    groups[name] = g
  for name, options in parse_group_spec(optim.get('group_spec') or '', f'{where}.group_spec').items():
    if name not in groups and not options.get('regex'):
      raise ValueError(f'{where}.group_spec: new group {name!r} needs a regex ({name}=REGEX:...)')
    groups[name] = {**groups.get(name, {}), **options}
  if DEFAULT_GROUP in groups:
    raise ValueError(f'{where}.groups may not define a group named {DEFAULT_GROUP!r}')
  out = []
  for name, g in list(groups.items()) + [(DEFAULT_GROUP, {'regex': ''})]:
    g = {k: g.get(k, default) for k, (_, default) in GROUP_KEYS.items()}
    if name != DEFAULT_GROUP:
      try:
        re.compile(g['regex'])
      except re.error as e:
        raise ValueError(f'{where}.groups.{name}.regex {g["regex"]!r} is not a valid regex: {e}') from e
    inherit = lambda key: optim[key] if g[key] in ('', -1, -1.0) else g[key]  # noqa: E731
    if int(g['frozen_until']) < 0:
      raise ValueError(f'{where}.groups.{name}.frozen_until must be >= 0, got {g["frozen_until"]}')
    out.append(GroupSpec(name, g['regex'], float(inherit('lr')), str(inherit('schedule')),
                         int(inherit('warmup_steps')), float(inherit('end_lr_factor')), bool(g['frozen']),
                         int(g['frozen_until'])))
  return out


def _schedule(kind: str, peak_lr: float, warmup: int, end_factor: float, total_steps: int) -> optax.Schedule:
  decay_steps = max(int(total_steps) - warmup, 1)
  if kind == 'cosine':
    main = optax.cosine_decay_schedule(peak_lr, decay_steps, alpha=end_factor)
  elif kind == 'linear':
    main = optax.linear_schedule(peak_lr, peak_lr * end_factor, decay_steps)
  elif kind == 'constant':
    main = optax.constant_schedule(peak_lr)
  else:
    raise ValueError(f"optim.schedule must be 'cosine', 'linear' or 'constant', got {kind!r}")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, peak_lr, warmup), main], [warmup])


def make_schedule(optim, peak_lr: float, total_steps: int) -> optax.Schedule:
  """Warmup (linear from 0) followed by cosine / linear decay or a constant, over `total_steps` updates."""
  return _schedule(optim.schedule, peak_lr, int(optim.warmup_steps), float(optim.end_lr_factor), total_steps)


def _group_schedule(g: GroupSpec, total_steps: int) -> optax.Schedule:
  """lr of group `g` at update `count`: 0 for its first `frozen_until` updates, then its schedule over the rest."""
  inner = _schedule(g.schedule, g.lr, g.warmup_steps, g.end_lr_factor, max(total_steps - g.frozen_until, 1))
  if not g.frozen_until:
    return inner
  return lambda count: jnp.where(count >= g.frozen_until, inner(jnp.maximum(count - g.frozen_until, 0)), 0.0)


def _base_tx(optim) -> optax.GradientTransformation:
  """The optimiser's rule without its learning rate."""
  if optim.name == 'adamw':
    # Decay matrices only: norms' scales and biases are left alone.
    return optax.chain(optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps),
                       optax.add_decayed_weights(optim.weight_decay,
                                                 mask=lambda p: jax.tree.map(lambda x: jnp.ndim(x) > 1, p)))
  if optim.name == 'sgd':
    return optax.trace(decay=optim.momentum) if optim.momentum else optax.identity()
  raise ValueError(f"optim.name must be 'adamw' or 'sgd', got {optim.name!r}")


def _scheduled(base: optax.GradientTransformation, lr: optax.Schedule,
               frozen_until: int) -> optax.GradientTransformationExtraArgs:
  """`base` scaled by -lr(count); before update `frozen_until` its state does not change."""

  def update(updates, state, params=None, *, count, **extra):
    del extra
    out, new_state = base.update(updates, state, params)
    if frozen_until:
      active = count >= frozen_until
      new_state = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_state, state)
    rate = lr(count)
    return jax.tree.map(lambda u: (-rate * u).astype(u.dtype), out), new_state

  return optax.GradientTransformationExtraArgs(base.init, update)


class OptState(NamedTuple):
  """One optimiser's state: how many updates it applied, and its optax state."""
  count: jax.Array  # int32 scalar
  tx: Any


@dataclasses.dataclass(frozen=True, eq=False)  # compared and hashed by identity: a static field of TrainState
class Optimizer:
  """One named optimiser: its optax transform and how it labels, masks and logs its parameters."""
  name: str
  where: str  # its config key, for messages
  regex: str  # the parameters it owns ('' = all)
  groups: tuple[GroupSpec, ...]  # match order, default last
  tx: optax.GradientTransformationExtraArgs  # update(grads, state, params, count=...)
  schedules: Mapping[str, optax.Schedule]  # per non-frozen group, of the update count

  @property
  def frozen(self) -> tuple[str, ...]:
    return tuple(g.name for g in self.groups if g.frozen)

  def labels(self, params: Any) -> Any:
    """Tree of group names, one per parameter (UNOWNED for parameters outside `regex`)."""
    return assign_groups(params, {g.name: {'regex': g.regex} for g in self.groups if g.name != DEFAULT_GROUP},
                         owned=self.regex)

  def sizes(self, params: Any) -> dict[str, int]:
    """Parameter count of every group that holds parameters (UNOWNED excluded), in match order."""
    counts: dict[str, int] = {}
    for lab, x in zip(jax.tree.leaves(self.labels(params)), jax.tree.leaves(params)):
      if lab != UNOWNED:
        counts[lab] = counts.get(lab, 0) + int(x.size)
    return {g.name: counts[g.name] for g in self.groups if g.name in counts}

  def check(self, params: Any) -> None:
    """Raises ValueError when the optimiser, or one of its groups, selects no parameter."""
    sizes = self.sizes(params)
    example = path_str(jax.tree_util.tree_flatten_with_path(params)[0][0][0]) if jax.tree.leaves(params) else ''
    if not sizes:
      raise ValueError(f'{self.where}.regex {self.regex!r} matches no parameter; paths look like {example!r}')
    for g in self.groups:
      if g.name != DEFAULT_GROUP and g.name not in sizes:
        raise ValueError(f'{self.where}.groups.{g.name}: regex {g.regex!r} matches no parameter (or only '
                         f'parameters an earlier group takes); paths look like {example!r}')

  def init(self, params: Any) -> OptState:
    return OptState(jnp.zeros((), jnp.int32), self.tx.init(params))

  def mask(self, grads: Any, count: jax.Array) -> Any:
    """The gradient this optimiser applies: zero for parameters it does not update now. Zeros of frozen and
    unowned parameters do not depend on the gradient, so XLA skips computing it."""
    until = {g.name: g.frozen_until for g in self.groups if g.frozen_until}
    frozen = set(self.frozen) | {UNOWNED}

    def one(g, lab):
      if lab in frozen:
        return jnp.zeros_like(g)
      if lab in until:
        return jnp.where(count >= until[lab], g, jnp.zeros_like(g))
      return g

    return jax.tree.map(one, grads, self.labels(grads))

  def update(self, grads: Any, state: OptState, params: Any) -> tuple[Any, OptState, dict[str, jax.Array]]:
    """(new params, new state, metrics): metrics hold 'grad_norm' (of the applied gradient, before clipping)
    and 'lr' (the default group's), and per group 'grad_norm/<group>' and 'lr/<group>' when there are several."""
    grads = self.mask(grads, state.count)
    updates, tx_state = self.tx.update(grads, state.tx, params, count=state.count)
    labels = self.labels(params)
    moving = {g.name for g in self.groups if not g.frozen}
    new_params = jax.tree.map(lambda p, u, lab: (p + u).astype(p.dtype) if lab in moving else p,
                              params, updates, labels)
    present = [g.name for g in self.groups if g.name in set(jax.tree.leaves(labels))]
    trainable = [n for n in present if n in moving]
    main = DEFAULT_GROUP if DEFAULT_GROUP in trainable else (trainable or [DEFAULT_GROUP])[0]
    metrics = {'grad_norm': optax.global_norm(grads), 'lr': self.schedules[main](state.count)}
    if len(present) > 1:
      for name, norm in group_norms(grads, labels, trainable).items():
        metrics[f'grad_norm/{name}'] = norm
      for name in trainable:
        metrics[f'lr/{name}'] = self.schedules[name](state.count)
    return new_params, OptState(state.count + 1, tx_state), metrics


def make_optimizer(optim, total_steps: int, *, name: str = 'main', where: str = 'config.optim') -> Optimizer:
  """Builds the optimiser that the sub-dict `optim` (keys of `optim_config()`) describes."""
  if optim.get('regex'):
    try:
      re.compile(optim.regex)
    except re.error as e:
      raise ValueError(f'{where}.regex {optim.regex!r} is not a valid regex: {e}') from e
  groups = resolve_groups(optim, where)
  steps = int(optim.get('schedule_steps') or 0) or int(total_steps)
  base = _base_tx(optim)
  schedules, transforms = {}, {UNOWNED: optax.set_to_zero()}
  for g in groups:
    if g.frozen:
      transforms[g.name] = optax.set_to_zero()
      continue
    schedules[g.name] = _group_schedule(g, steps)
    transforms[g.name] = _scheduled(base, schedules[g.name], g.frozen_until)
  owned = optim.get('regex') or ''
  labels = lambda params: assign_groups(  # noqa: E731
      params, {g.name: {'regex': g.regex} for g in groups if g.name != DEFAULT_GROUP}, owned=owned)
  # Clipping keeps no state; the stateless identity in its place keeps the state's layout, so that a resumed run
  # may change clip_norm (0 included).
  clip = optax.clip_by_global_norm(float(optim.clip_norm)) if optim.clip_norm and optim.clip_norm > 0 else \
      optax.identity()
  tx = optax.chain(clip, optax.partition(transforms, labels))
  return Optimizer(name, where, owned, tuple(groups), tx, schedules)


def assign_groups(params: Any, groups: Mapping[str, Any], owned: str = '') -> Any:
  """Tree of group names, one per parameter: the first group whose regex matches its path, else the default
  group; UNOWNED for parameters that the regex `owned` (when given) does not match."""
  owner = re.compile(owned) if owned else None
  compiled = [(name, re.compile(g['regex'])) for name, g in groups.items()]

  def label(path, _):
    p = path_str(path)
    if owner is not None and not owner.search(p):
      return UNOWNED
    return next((name for name, rx in compiled if rx.search(p)), DEFAULT_GROUP)

  return jax.tree_util.tree_map_with_path(label, params)


def group_norms(grads: Any, labels: Any, names) -> dict[str, jax.Array]:
  """Global L2 norm of the gradient within each group."""
  out = {}
  for name in names:
    sel = jax.tree.map(lambda g, lab, n=name: g if lab == n else jnp.zeros((), g.dtype), grads, labels)
    out[name] = optax.global_norm(sel)
  return out


def mirror_shardings(abstract_state: Any, abstract_params: Any, param_shardings: Any, default: Any) -> Any:
  """Shardings for an optimiser state: a leaf that mirrors a parameter (its key path ends with the parameter's
  path and it has the parameter's shape) takes the parameter's sharding; every other leaf takes `default`."""
  table = {}
  for (path, p), s in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0], jax.tree.leaves(
      param_shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))):
    table[tuple(path_str([k]) for k in path)] = (tuple(p.shape), s)

  def one(path, leaf):
    names = tuple(path_str([k]) for k in path)
    for i in range(len(names)):
      hit = table.get(names[i:])
      if hit is not None and hit[0] == tuple(leaf.shape):
        return hit[1]
    return default

  return jax.tree_util.tree_map_with_path(one, abstract_state)
