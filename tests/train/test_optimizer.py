"""Schedules and parameter groups of mmjax.train.optimizer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.train import base_config, group
from mmjax.train.optimizer import assign_groups, make_optimizer, make_schedule


def _optim(**kw):
  c = base_config().optim
  for k, v in kw.items():
    c[k] = v
  return c


def test_warmup_then_cosine():
  sched = make_schedule(_optim(warmup_steps=10, schedule='cosine', end_lr_factor=0.1), 1.0, 110)
  np.testing.assert_allclose([sched(0), sched(5), sched(10)], [0.0, 0.5, 1.0], atol=1e-7)
  # halfway through the decay the cosine is at the midpoint between peak and end.
  np.testing.assert_allclose(sched(60), 0.55, atol=1e-6)
  np.testing.assert_allclose(sched(110), 0.1, atol=1e-6)


def test_linear_and_constant_and_bad_name():
  lin = make_schedule(_optim(schedule='linear'), 2.0, 10)
  np.testing.assert_allclose([lin(0), lin(5), lin(10)], [2.0, 1.0, 0.0], atol=1e-6)
  const = make_schedule(_optim(schedule='constant', warmup_steps=2), 3.0, 10)
  np.testing.assert_allclose([const(1), const(2), const(9)], [1.5, 3.0, 3.0], atol=1e-6)
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
  updates, _ = opt.tx.update(grads, opt.tx.init(params), params)
  np.testing.assert_allclose(updates['slow']['w'], -0.1)
  np.testing.assert_allclose(updates['fast']['w'], -1.0)
  np.testing.assert_allclose(updates['frozen']['w'], 0.0)
  assert opt.frozen == ('frozen',)
  assert set(opt.schedules) == {'slow', 'default'}


def test_weight_decay_skips_vectors():
  optim = _optim(name='adamw', schedule='constant', clip_norm=0.0, lr=1.0, weight_decay=0.5)
  opt = make_optimizer(optim, total_steps=10)
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = opt.tx.update(zeros, opt.tx.init(params), params)
  np.testing.assert_allclose(updates['kernel'], -0.5)
  np.testing.assert_allclose(updates['bias'], 0.0)


def test_bad_group_regex_is_named():
  optim = _optim()
  optim.groups.broken = group('(unclosed')
  with pytest.raises(ValueError, match='optim.groups.broken.regex'):
    make_optimizer(optim, total_steps=10)

