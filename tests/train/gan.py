"""A toy GAN on 2-D points, trained through the trainer with its own step: two optimisers, alternating updates.

Both a launch.py config (`--config=tests/train/gan.py`) and the experiment module it names. The discriminator is
updated every step, the generator every second step (on the updated discriminator); `extra` keeps a running mean
of the discriminator loss, the EMA follows the generator only.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data import make_pipeline
from mmjax.train import Experiment, base_config, keep_if_finite, optim_config
from mmjax.train.step import prefixed
from tests.train.toy import ArraySource

LATENT, HIDDEN = 4, 8


def get_config(arg=None):
  del arg
  c = base_config()
  c.experiment = 'tests.train.gan'
  c.total_steps = 12
  c.batch_size = 16
  c.log_every = 1
  c.eval_every = 0
  c.ckpt_every = 100
  c.progress_bar = False
  c.mesh = {'data': 1, 'fsdp': 1, 'tensor': 1}
  c.ema_decay = 0.9
  c.ema_regex = '^generator/'
  c.optim_g = optim_config(regex='^generator/', lr=2e-3, schedule='constant', b1=0.5, clip_norm=0.0)
  c.optim_d = optim_config(regex='^discriminator/', lr=4e-3, schedule='linear', b1=0.5, clip_norm=1.0)
  return c


def _points(n=256, seed=0):
  rng = np.random.default_rng(seed)
  angle = rng.uniform(0, 2 * np.pi, n)
  x = np.stack([np.cos(angle), np.sin(angle)], -1) * 2.0 + rng.normal(size=(n, 2)) * 0.1
  return ArraySource(x, np.zeros((n, 1)))


def _dense(rng, shape, names):
  return nn.LogicallyPartitioned(jax.random.normal(rng, shape) / np.sqrt(shape[0]), names)


def init_params(rng):
  k = jax.random.split(rng, 4)
  return {
      'generator': {'w1': _dense(k[0], (LATENT, HIDDEN), ('embed', 'mlp')),
                    'b1': nn.LogicallyPartitioned(jnp.zeros((HIDDEN,)), ('mlp',)),
                    'w2': _dense(k[1], (HIDDEN, 2), ('mlp', 'embed'))},
      'discriminator': {'w1': _dense(k[2], (2, HIDDEN), ('embed', 'mlp')),
                        'w2': _dense(k[3], (HIDDEN, 1), ('mlp', None))},
  }


def generate(params, z):
  g = params['generator']
  return jnp.tanh(z @ g['w1'] + g['b1']) @ g['w2']


def discriminate(params, x):
  d = params['discriminator']
  return (jnp.tanh(x @ d['w1']) @ d['w2'])[:, 0]


def train_step(state, batch, rng):
  z_d, z_g = jax.random.normal(rng, (2, batch['x'].shape[0], LATENT))

  def d_loss(params):
    fake = jax.lax.stop_gradient(generate(params, z_d))
    return jax.nn.softplus(-discriminate(params, batch['x'])).mean() + jax.nn.softplus(
        discriminate(params, fake)).mean()

  def g_loss(params):
    return jax.nn.softplus(-discriminate(params, generate(params, z_g))).mean()

  loss_d, grads_d = jax.value_and_grad(d_loss)(state.params)
  after_d, m_d = state.apply_gradients(grads_d, 'disc')
  loss_g, grads_g = jax.value_and_grad(g_loss)(after_d.params)
  after_g, m_g = after_d.apply_gradients(grads_g, 'gen')
  generator_turn = state.step % 2 == 1
  new = jax.tree.map(lambda g, d: jnp.where(generator_turn, g, d), after_g, after_d)
  new = new.replace(extra={'d_loss_mean': 0.9 * state.extra['d_loss_mean'] + 0.1 * loss_d})
  new, finite = keep_if_finite(new, state, loss_d, loss_g, m_d['grad_norm'], m_g['grad_norm'])
  metrics = {'loss': loss_d + loss_g, 'd_loss': loss_d, 'g_loss': loss_g, 'finite': finite,
             'd_loss_mean': new.extra['d_loss_mean']}
  return new, {**metrics, **prefixed('disc', m_d, True), **prefixed('gen', m_g, True)}


def make_experiment(config):
  data = make_pipeline(_points(), global_batch_size=config.batch_size, seed=config.seed)
  return Experiment(init_params=init_params, loss_fn=None, train_data=data, train_step=train_step,
                    optimizers={'gen': 'optim_g', 'disc': 'optim_d'},
                    init_extra=lambda rng: {'d_loss_mean': jnp.zeros(())})
