"""Noise schedules: the training betas [T] and their cumulative products ᾱ [T].

Built on the host in NumPy: a schedule is fixed configuration, and the samplers read per-step scalars derived
from it. The three named schedules follow diffusers' `beta_schedule` strings (DDPM linear, the latent-diffusion
`scaled_linear`, and the GLIDE/improved-DDPM cosine `squaredcos_cap_v2`).
"""
import math

import numpy as np

BETA_SCHEDULES = ('linear', 'scaled_linear', 'squaredcos_cap_v2')


def linear_betas(num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> np.ndarray:
  """β_t evenly spaced from beta_start to beta_end: [T] float64."""
  return np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)


def scaled_linear_betas(num_train_timesteps: int, beta_start: float = 8.5e-4, beta_end: float = 1.2e-2) -> np.ndarray:
  """√β_t evenly spaced (Stable Diffusion's schedule): [T] float64."""
  return np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2


def squaredcos_cap_v2_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
  """β_t = min(1 − ᾱ((t+1)/T)/ᾱ(t/T), max_beta) with ᾱ(s) = cos²((s + 0.008)/1.008 · π/2): [T] float64."""
  def alpha_bar(s: float) -> float:
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

  T = num_train_timesteps
  return np.array([min(1 - alpha_bar((t + 1) / T) / alpha_bar(t / T), max_beta) for t in range(T)], np.float64)


def make_betas(name: str, num_train_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
  """The named schedule's betas [T] (float64); beta_start/beta_end are unused by `squaredcos_cap_v2`."""
  if name == 'linear':
    return linear_betas(num_train_timesteps, beta_start, beta_end)
  if name == 'scaled_linear':
    return scaled_linear_betas(num_train_timesteps, beta_start, beta_end)
  if name == 'squaredcos_cap_v2':
    return squaredcos_cap_v2_betas(num_train_timesteps)
  raise ValueError(f'beta_schedule {name!r} is not supported; use one of {BETA_SCHEDULES}')


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
  """ᾱ_t = Π_{s≤t} (1 − β_s): [T] float32, bitwise what diffusers holds.

  diffusers takes 1 − β in float32 and torch's CPU cumprod accumulates in float64; a float32 running product would
  drift from it by ~1e-6 relative, which the late-step 1/√ᾱ factors (≈15) lift towards the 1e-5 parity budget.
  """
  return np.cumprod((1.0 - np.asarray(betas, np.float32)).astype(np.float64)).astype(np.float32)
