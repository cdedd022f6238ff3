"""Schedules and parameter groups of mmjax.train.optimizer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.train import base_config, group, optim_config
from mmjax.train.optimizer import assign_groups, make_optimizer, make_schedule, parse_group_spec, resolve_groups
from tests.numerics import assert_close_programs


def _optim(**kw):
  c = base_config().optim
  for k, v in kw.items():
    c[k] = v
  return c


def test_warmup_then_cosine():
  sched = make_schedule(_optim(warmup_steps=10, schedule='cosine', end_lr_factor=0.1), 1.0, 110)
  assert_close_programs([sched(0), sched(5), sched(10)], [0.0, 0.5, 1.0])
  # halfway through the decay the cosine is at the midpoint between peak and end.
  assert_close_programs(sched(60), 0.55)
  assert_close_programs(sched(110), 0.1)


def test_linear_and_constant_and_bad_name():
  lin = make_schedule(_optim(schedule='linear'), 2.0, 10)
  assert_close_programs([lin(0), lin(5), lin(10)], [2.0, 1.0, 0.0])
  const = make_schedule(_optim(schedule='constant', warmup_steps=2), 3.0, 10)
  assert_close_programs([const(1), const(2), const(9)], [1.5, 3.0, 3.0])
  with pytest.raises(ValueError, match="schedule"):
    make_schedule(_optim(schedule='cosin'), 1.0, 10)


def test_groups_first_match_wins_and_default():
  params = {'vision': {'w': 0}, 'projector': {'w': 0}, 'llm': {'layers_0': {'w': 0}}}
  labels = assign_groups(params, {'vis': {'regex': '^vision/'}, 'proj': {'regex': 'projector|vision'}})
  assert labels == {'vision': {'w': 'vis'}, 'projector': {'w': 'proj'}, 'llm': {'layers_0': {'w': 'default'}}}


def test_per_group_lr_and_frozen_group():
  optim = _optim(name='sgd', momentum=0.0, schedule='constant', clip_norm=0.0, lr=1.0)
  optim.groups.slow = group('^slow/', lr=0.1)
  optim.groups.frozen = group('^frozen/', frozen=True)
  opt = make_optimizer(optim, total_steps=10)
  params = {'slow': {'w': jnp.ones(3)}, 'frozen': {'w': jnp.ones(3)}, 'fast': {'w': jnp.ones(3)}}
  grads = jax.tree.map(jnp.ones_like, params)
  new, state, metrics = opt.update(grads, opt.init(params), params)
  assert_close_programs(new['slow']['w'], 0.9)
  assert_close_programs(new['fast']['w'], 0.0)
  np.testing.assert_array_equal(new['frozen']['w'], 1.0)
  assert int(state.count) == 1
  assert opt.frozen == ('frozen',)
  assert set(opt.schedules) == {'slow', 'default'}
  assert float(metrics['lr/slow']) == pytest.approx(0.1) and 'grad_norm/frozen' not in metrics
  assert_close_programs(metrics['grad_norm'], np.sqrt(6.0))  # the frozen group's gradient is not applied


def test_group_schedule_overrides_and_frozen_until():
  optim = _optim(name='sgd', momentum=0.0, schedule='constant', clip_norm=0.0, lr=1.0)
  optim.groups.late = group('^late/', frozen_until=2, schedule='linear', warmup_steps=2)
  opt = make_optimizer(optim, total_steps=10)
  late = opt.schedules['late']
  # Frozen for 2 updates, then warmup over 2 and linear decay to 0 over the remaining 6 updates.
  assert_close_programs([late(c) for c in (0, 1, 2, 3, 4, 7, 10)], [0, 0, 0, 0.5, 1.0, 0.5, 0.0])
  params = {'late': {'w': jnp.ones(2)}, 'now': {'w': jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  state = opt.init(params)
  for _ in range(3):
    params, state, _ = opt.update(grads, state, params)
  np.testing.assert_array_equal(params['late']['w'], 1.0)
  assert_close_programs(params['now']['w'], -2.0)
  params, state, _ = opt.update(grads, state, params)  # update 3: warmup at 0.5
  assert_close_programs(params['late']['w'], 0.5)


def test_group_spec_parses_overrides_and_appends():
  assert parse_group_spec('vision=^vision/:lr=2e-6;proj=(?:a|b)/x:frozen_until=100:frozen=false') == {
      'vision': {'regex': '^vision/', 'lr': 2e-6},
      'proj': {'regex': '(?:a|b)/x', 'frozen_until': 100, 'frozen': False}}
  optim = _optim()
  optim.groups.vision = group('^vision_tower/', frozen=True)
  optim.group_spec = 'vision=:frozen=false:lr=1e-5;head=^head/:schedule=constant'
  groups = {g.name: g for g in resolve_groups(optim)}
  assert list(groups) == ['vision', 'head', 'default']
  assert groups['vision'].regex == '^vision_tower/' and not groups['vision'].frozen and groups['vision'].lr == 1e-5
  assert groups['head'].schedule == 'constant' and groups['head'].lr == optim.lr
  for spec, message in (('x=^x/:lrr=1', "unknown key 'lrr'"), ('x=^x/:lr=fast', "lr='fast' is not a valid float"),
                        ('novel=:lr=1', "new group 'novel' needs a regex"), ('justaname', 'must look like')):
    optim.group_spec = spec
    with pytest.raises(ValueError, match=message):
      resolve_groups(optim)


def test_group_spec_is_settable_on_a_locked_config():
  config = base_config()
  config.lock()
  config.optim.group_spec = 'vision=^vision/:lr=2e-6'  # what --config.optim.group_spec=... does
  with pytest.raises(AttributeError):
    config.optim.groups.vision = group('^vision/')  # a locked ConfigDict takes no new group
  assert resolve_groups(config.optim)[0].lr == 2e-6


def test_optimisers_own_disjoint_parameters_and_name_empty_selections():
  from mmjax.train import Experiment
  from mmjax.train.trainer import TrainSetup
  config = base_config()
  config.mesh = {'data': 1, 'fsdp': 1, 'tensor': 1}
  config.optim_a, config.optim_b = optim_config(regex='^a/'), optim_config(regex='^(a|b)/')
  params = {'a': {'w': jnp.ones(2)}, 'b': {'w': jnp.ones(3)}, 'c': {'w': jnp.ones(4)}}

  def setup(**optimizers):
    return TrainSetup(config, Experiment(lambda rng: params, lambda *a: (0.0, {}), None, optimizers=optimizers))

  with pytest.raises(ValueError, match="parameter a/w is selected by two optimisers, 'a' and 'b'"):
    setup(a='optim_a', b='optim_b')
  config.optim_b.regex = '^bb/'
  with pytest.raises(ValueError, match=r"config\.optim_b\.regex '\^bb/' matches no parameter"):
    setup(a='optim_a', b='optim_b')
  config.optim_b.regex = '^b/'
  sizes = setup(a='optim_a', b='optim_b').size_metrics()
  assert sizes == {'num_params': 9, 'num_params/a/default': 2, 'num_params/b/default': 3,
                   'num_params/not_optimised': 4}


def test_weight_decay_skips_vectors():
  optim = _optim(name='adamw', schedule='constant', clip_norm=0.0, lr=1.0, weight_decay=0.5)
  opt = make_optimizer(optim, total_steps=10)
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  new, _, _ = opt.update(zeros, opt.init(params), params)
  assert_close_programs(new['kernel'], 0.5)
  assert_close_programs(new['bias'], 1.0)


def test_bad_group_regex_is_named():
  optim = _optim()
  optim.groups.broken = group('(unclosed')
  with pytest.raises(ValueError, match='optim.groups.broken.regex'):
    make_optimizer(optim, total_steps=10)

