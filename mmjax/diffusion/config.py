"""Build a scheduler from a diffusers `scheduler_config.json` (a path or its dict).

`_class_name` picks the scheduler; missing keys take diffusers' defaults for that class. A key whose value would
change the maths and is not implemented is a ValueError naming it; keys that never change the maths of the chosen
sampler (metadata, other schedulers' keys that diffusers' `from_config` also drops) are read past; KNOWN_KEYS lists
every key accepted. Any other key is an error too, so a typo or a newer diffusers option is never silently ignored.
"""
import json
import os
from typing import Any

import numpy as np

from mmjax.diffusion.parameterization import PREDICTION_TYPES
from mmjax.diffusion.schedulers import (
  DDIMScheduler,
  DDPMScheduler,
  DPMSolverMultistepScheduler,
  EulerDiscreteScheduler,
  Scheduler,
)
from mmjax.diffusion.schedulers.ddpm import VARIANCE_TYPES
from mmjax.diffusion.schedules import BETA_SCHEDULES, alphas_cumprod, make_betas

_COMMON = {
  'num_train_timesteps': 1000, 'beta_start': 1e-4, 'beta_end': 2e-2, 'beta_schedule': 'linear',
  'trained_betas': None, 'prediction_type': 'epsilon', 'timestep_spacing': 'leading', 'steps_offset': 0,
  'rescale_betas_zero_snr': False,
}
_THRESHOLDING = {'thresholding': False, 'dynamic_thresholding_ratio': 0.995, 'sample_max_value': 1.0}
DEFAULTS: dict[str, dict[str, Any]] = {
  'DDPMScheduler': {**_COMMON, **_THRESHOLDING, 'variance_type': 'fixed_small', 'clip_sample': True,
                    'clip_sample_range': 1.0},
  'DDIMScheduler': {**_COMMON, **_THRESHOLDING, 'clip_sample': True, 'clip_sample_range': 1.0,
                    'set_alpha_to_one': True},
  'EulerDiscreteScheduler': {
    **_COMMON, 'timestep_spacing': 'linspace', 'interpolation_type': 'linear', 'use_karras_sigmas': False,
    'use_exponential_sigmas': False, 'use_beta_sigmas': False, 'sigma_min': None, 'sigma_max': None,
    'timestep_type': 'discrete', 'final_sigmas_type': 'zero'},
  'DPMSolverMultistepScheduler': {
    **_COMMON, **_THRESHOLDING, 'timestep_spacing': 'linspace', 'solver_order': 2, 'algorithm_type': 'dpmsolver++',
    'solver_type': 'midpoint', 'lower_order_final': True, 'euler_at_final': False, 'use_karras_sigmas': False,
    'use_exponential_sigmas': False, 'use_beta_sigmas': False, 'use_lu_lambdas': False, 'use_flow_sigmas': False,
    'flow_shift': 1.0, 'final_sigmas_type': 'zero', 'lambda_min_clipped': float('-inf'), 'variance_type': None,
    'use_dynamic_shifting': False, 'time_shift_type': 'exponential'},
}

# Keys that never change the chosen sampler's maths and are read past: file metadata, and keys the chosen class does
# not have, whether another supported class's (DDIM's clip_sample in a config read as Euler) or those of diffusers
# schedulers not built here (PNDM's skip_prk_steps in Stable Diffusion's shipped config). diffusers' from_config
# drops these too when it builds one class from another's file. Knobs that act only behind a switch
# (sample_max_value behind thresholding, flow_shift behind use_flow_sigmas) are accepted; the switch is checked.
KNOWN_KEYS = frozenset({'_class_name', '_diffusers_version', 'skip_prk_steps', 'set_alpha_to_zero'}).union(
  *map(set, DEFAULTS.values()))

_SPACINGS = ('leading', 'trailing', 'linspace')


def _check(config: dict, key: str, allowed: tuple) -> None:
  if config[key] not in allowed:
    raise ValueError(f'scheduler config: {key}={config[key]!r} is not supported (supported: {allowed})')


def _train_alphas_cumprod(config: dict) -> np.ndarray:
  if config['trained_betas'] is not None:
    return alphas_cumprod(np.asarray(config['trained_betas'], np.float64))
  return alphas_cumprod(make_betas(config['beta_schedule'], config['num_train_timesteps'], config['beta_start'],
                                   config['beta_end']))


def _timesteps(config: dict, n: int, dtype: type) -> np.ndarray:
  """diffusers' `set_timesteps(n)` for DDPM, DDIM and Euler: descending [n]."""
  T, spacing = config['num_train_timesteps'], config['timestep_spacing']
  if spacing == 'linspace':
    if dtype is np.float32:  # Euler keeps diffusers' fractional timesteps
      return np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
    return np.linspace(0, T - 1, n).round()[::-1].astype(dtype)
  if spacing == 'leading':
    return (np.arange(n) * (T // n))[::-1].astype(dtype) + config['steps_offset']
  return (np.round(np.arange(T, 0, -T / n)) - 1).astype(dtype)


def _dpm_timesteps(config: dict, n: int) -> np.ndarray:
  """DPMSolverMultistepScheduler's `set_timesteps(n)` (it spaces n + 1 points and drops the last)."""
  T, spacing = config['num_train_timesteps'], config['timestep_spacing']
  if spacing == 'linspace':
    return np.linspace(0, T - 1, n + 1).round()[::-1][:-1].astype(np.int64)
  if spacing == 'leading':
    return (np.arange(n + 1) * (T // (n + 1)))[::-1][:-1].astype(np.int64) + config['steps_offset']
  return (np.round(np.arange(T, 0, -T / n)) - 1).astype(np.int64)


def _read(config: dict | str | os.PathLike) -> dict:
  if isinstance(config, dict):
    return dict(config)
  try:
    with open(config) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f'{config}: cannot read a scheduler config ({e})') from e


def from_diffusers_config(config: dict | str | os.PathLike, num_inference_steps: int, *,
                          eta: float = 0.0) -> Scheduler:
  """The scheduler that diffusers' `<_class_name>.from_config(config)` + `set_timesteps(num_inference_steps)` is.

  eta: DDIM's η (a `step` argument in diffusers, fixed here so the step is one compiled program). Raises ValueError
  naming the key for a missing/unknown `_class_name`, an unknown key or an unsupported value.
  """
  raw = _read(config)
  name = raw.get('_class_name')
  if name not in DEFAULTS:
    raise ValueError(f'scheduler config: _class_name={name!r} is not supported (supported: {tuple(DEFAULTS)})')
  defaults = DEFAULTS[name]
  for key in raw:
    if key not in KNOWN_KEYS:
      raise ValueError(f'scheduler config: unknown key {key!r} for {name}')
  cfg = {**defaults, **{k: v for k, v in raw.items() if k in defaults}}
  n, T = num_inference_steps, cfg['num_train_timesteps']
  if not 0 < n <= T:
    raise ValueError(f'num_inference_steps={n} must be in [1, num_train_timesteps={T}]')
  if cfg['trained_betas'] is None:
    _check(cfg, 'beta_schedule', BETA_SCHEDULES)
  _check(cfg, 'prediction_type', PREDICTION_TYPES)
  _check(cfg, 'timestep_spacing', _SPACINGS)
  _check(cfg, 'rescale_betas_zero_snr', (False,))
  if 'thresholding' in cfg:
    _check(cfg, 'thresholding', (False,))
  if name != 'DDIMScheduler' and eta != 0.0:
    raise ValueError(f'eta={eta} applies to DDIMScheduler only, not {name}')
  ac = _train_alphas_cumprod(cfg)
  clip = float(cfg['clip_sample_range']) if cfg.get('clip_sample') else None

  if name == 'DDPMScheduler':
    _check(cfg, 'variance_type', VARIANCE_TYPES)
    return DDPMScheduler.create(ac, _timesteps(cfg, n, np.int64), variance_type=cfg['variance_type'],
                                prediction_type=cfg['prediction_type'], clip_sample_range=clip)
  if name == 'DDIMScheduler':
    return DDIMScheduler.create(ac, _timesteps(cfg, n, np.int64), T, eta=eta,
                                set_alpha_to_one=bool(cfg['set_alpha_to_one']),
                                prediction_type=cfg['prediction_type'], clip_sample_range=clip)
  for key in ('use_karras_sigmas', 'use_exponential_sigmas', 'use_beta_sigmas'):
    _check(cfg, key, (False,))
  _check(cfg, 'final_sigmas_type', ('zero', 'sigma_min'))
  if name == 'EulerDiscreteScheduler':
    _check(cfg, 'interpolation_type', ('linear',))
    _check(cfg, 'timestep_type', ('discrete', 'continuous') if cfg['prediction_type'] != 'v_prediction'
           else ('discrete',))
    return EulerDiscreteScheduler.create(
      ac, _timesteps(cfg, n, np.float32), prediction_type=cfg['prediction_type'],
      final_sigma_min=cfg['final_sigmas_type'] == 'sigma_min',
      init_sigma_with_unit_variance=cfg['timestep_spacing'] == 'leading')
  _check(cfg, 'solver_order', (1, 2))
  _check(cfg, 'algorithm_type', ('dpmsolver++',))
  _check(cfg, 'solver_type', ('midpoint',))
  _check(cfg, 'variance_type', (None,))
  _check(cfg, 'lambda_min_clipped', (float('-inf'),))
  for key in ('use_lu_lambdas', 'use_flow_sigmas', 'use_dynamic_shifting'):
    _check(cfg, key, (False,))
  final_first_order = bool(cfg['euler_at_final']) or (bool(cfg['lower_order_final']) and n < 15)
  return DPMSolverMultistepScheduler.create(
    ac, _dpm_timesteps(cfg, n), prediction_type=cfg['prediction_type'], solver_order=cfg['solver_order'],
    final_sigma_min=cfg['final_sigmas_type'] == 'sigma_min', final_first_order=final_first_order)
