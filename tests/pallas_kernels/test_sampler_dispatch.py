"""sample(impl=...): the fused Pallas steps inside the jitted loop give the XLA loop's samples, and 'auto' takes
them only on an accelerator (backend mocked) when the kernel supports the step."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.diffusion import cfg, from_diffusers_config, sample
from mmjax.diffusion.guidance import Guidance
from tests.numerics import assert_close_programs
from tests.pallas_kernels.helpers import pallas_launches

B, H, W, C = 2, 4, 4, 4
LEARNED = {'_class_name': 'DDPMScheduler', 'beta_schedule': 'squaredcos_cap_v2', 'variance_type': 'learned_range',
           'timestep_spacing': 'linspace'}
PARAMS = {'w': jnp.array(0.5)}


def _denoise(params, x, t, labels):
  """ε from the input, the timestep and the label, then learned-range v channels (as DiT with learn_sigma)."""
  scale = params['w'] * (1 + labels.astype(jnp.float32)).reshape(-1, 1, 1, 1)
  eps = 0.9 * x + 0.01 * scale * jnp.sin(t.astype(jnp.float32)).reshape(-1, 1, 1, 1)
  return jnp.concatenate([eps, jnp.tanh(scale * x)], axis=-1)


def _denoise_eps(params, x, t, labels):
  return _denoise(params, x, t, labels)[..., :C]


def _inputs(branches):
  noise = jax.random.normal(jax.random.key(0), (B, H, W, C))
  labels = jnp.arange(branches * B).reshape(branches, B) % 10
  return noise, labels


@pytest.mark.parametrize('config, denoise, guidance, eta', [
    (LEARNED, _denoise, cfg(4.0, channels=3), 0.0),  # upstream DiT: CFG on 3 of 4 ε channels, learned variance
    ({'_class_name': 'DDIMScheduler'}, _denoise_eps, Guidance(jnp.array([1.0, 5.0, 2.0])), 0.5),  # IPAdapter-Instruct
    ({'_class_name': 'EulerDiscreteScheduler', 'prediction_type': 'v_prediction'}, _denoise_eps, cfg(2.0), 0.0),
    ({'_class_name': 'DPMSolverMultistepScheduler'}, _denoise_eps, cfg(3.0), 0.0),  # weighted_cfg, then XLA
])
def test_pallas_loop_matches_the_xla_loop(config, denoise, guidance, eta):
  scheduler = from_diffusers_config(config, 6, eta=eta)
  noise, labels = _inputs(guidance.num_branches)
  kwargs = dict(cond=labels, guidance=guidance, rng=jax.random.key(1))
  want = sample(denoise, PARAMS, scheduler, noise, impl='xla', **kwargs)
  got = sample(denoise, PARAMS, scheduler, noise, impl='pallas', **kwargs)
  assert_close_programs(got, want)


def _kernels(monkeypatch, platform, config, denoise=_denoise_eps, guidance=None, impl='auto'):
  """How many pallas_calls the traced loop holds with jax.default_backend() reporting `platform`."""
  monkeypatch.setattr(jax, 'default_backend', lambda: platform)
  scheduler = from_diffusers_config(config, 3)
  noise, labels = _inputs(1 if guidance is None else guidance.num_branches)
  labels = labels[0] if guidance is None else labels
  # The unjitted loop: jax.jit's cache does not key on the (mocked) platform.
  fn = lambda p, n, c: sample.__wrapped__(denoise, p, scheduler, n, cond=c, guidance=guidance,
                                          rng=jax.random.key(0), impl=impl)
  return len(list(pallas_launches(jax.make_jaxpr(fn)(PARAMS, noise, labels).jaxpr)))


def test_auto_takes_the_fused_kernel_on_accelerators_only(monkeypatch):
  ddim = {'_class_name': 'DDIMScheduler'}
  assert _kernels(monkeypatch, 'cpu', ddim, guidance=cfg(3.0)) == 0  # CPU: interpret mode is for tests
  assert _kernels(monkeypatch, 'gpu', ddim, guidance=cfg(3.0)) == 1
  assert _kernels(monkeypatch, 'tpu', ddim) == 1
  assert _kernels(monkeypatch, 'gpu', LEARNED, _denoise, cfg(4.0, channels=3)) == 1
  assert _kernels(monkeypatch, 'tpu', LEARNED, _denoise, cfg(4.0, channels=3)) == 0  # refused: interleaved v
  dpm = {'_class_name': 'DPMSolverMultistepScheduler'}
  assert _kernels(monkeypatch, 'gpu', dpm, guidance=cfg(3.0)) == 0  # no fused step: XLA fuses combine and step
  assert _kernels(monkeypatch, 'gpu', dpm, guidance=cfg(3.0), impl='pallas') == 1  # weighted_cfg, then XLA
  assert _kernels(monkeypatch, 'gpu', ddim, guidance=cfg(3.0), impl='xla') == 0


def test_forced_pallas_refuses_with_the_reason(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  noise, labels = _inputs(1)
  dpm = from_diffusers_config({'_class_name': 'DPMSolverMultistepScheduler'}, 3)
  with pytest.raises(ValueError, match="impl='pallas' cannot serve this step: DPMSolverMultistepScheduler has no"):
    sample(_denoise_eps, PARAMS, dpm, noise, cond=labels[0], impl='pallas')
  ddim = from_diffusers_config({'_class_name': 'DDIMScheduler'}, 3)
  with pytest.raises(ValueError, match='takes 1×4 model output channels, got 8'):
    sample(_denoise, PARAMS, ddim, noise, cond=labels[0], impl='pallas')
  with pytest.raises(ValueError, match="impl='flash' is not one of"):
    sample(_denoise_eps, PARAMS, ddim, noise, cond=labels[0], impl='flash')


def test_new_scales_and_seeds_do_not_recompile_the_pallas_loop():
  scheduler = from_diffusers_config(LEARNED, 4)
  noise, labels = _inputs(2)
  traces = []

  def denoise(params, x, t, labels):
    traces.append(x.shape)
    return _denoise(params, x, t, labels)

  first = sample(denoise, PARAMS, scheduler, noise, cond=labels, guidance=cfg(4.0), rng=jax.random.key(1),
                 impl='pallas')
  second = sample(denoise, PARAMS, scheduler, noise, cond=labels, guidance=cfg(2.0), rng=jax.random.key(2),
                  impl='pallas')
  assert len(traces) == 1
  assert not np.allclose(first, second)
