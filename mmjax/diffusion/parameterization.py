"""The three model parameterisations and the conversions between them.

With x_t = √ᾱ·x0 + √(1−ᾱ)·ε, a model predicts ε ('epsilon'), x0 ('sample') or v = √ᾱ·ε − √(1−ᾱ)·x0
('v_prediction'); names follow diffusers' `prediction_type`. `alpha_bar` is ᾱ_t, a scalar or any array that
broadcasts against the samples (e.g. [B, 1, 1, 1]).
"""
import jax
import jax.numpy as jnp

PREDICTION_TYPES = ('epsilon', 'sample', 'v_prediction')


def add_noise(x0: jax.Array, noise: jax.Array, alpha_bar: jax.Array) -> jax.Array:
  """x_t = √ᾱ·x0 + √(1−ᾱ)·ε."""
  return jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1 - alpha_bar) * noise


def v_target(x0: jax.Array, noise: jax.Array, alpha_bar: jax.Array) -> jax.Array:
  """v = √ᾱ·ε − √(1−ᾱ)·x0."""
  return jnp.sqrt(alpha_bar) * noise - jnp.sqrt(1 - alpha_bar) * x0


def x0_from_eps(x_t: jax.Array, eps: jax.Array, alpha_bar: jax.Array) -> jax.Array:
  return (x_t - jnp.sqrt(1 - alpha_bar) * eps) / jnp.sqrt(alpha_bar)


def eps_from_x0(x_t: jax.Array, x0: jax.Array, alpha_bar: jax.Array) -> jax.Array:
  return (x_t - jnp.sqrt(alpha_bar) * x0) / jnp.sqrt(1 - alpha_bar)


def x0_from_v(x_t: jax.Array, v: jax.Array, alpha_bar: jax.Array) -> jax.Array:
  return jnp.sqrt(alpha_bar) * x_t - jnp.sqrt(1 - alpha_bar) * v


def eps_from_v(x_t: jax.Array, v: jax.Array, alpha_bar: jax.Array) -> jax.Array:
  return jnp.sqrt(alpha_bar) * v + jnp.sqrt(1 - alpha_bar) * x_t


def target(prediction_type: str, x0: jax.Array, noise: jax.Array, alpha_bar: jax.Array) -> jax.Array:
  """What a model of `prediction_type` is trained to output for x_t = add_noise(x0, noise, alpha_bar)."""
  if prediction_type == 'epsilon':
    return noise
  if prediction_type == 'sample':
    return x0
  if prediction_type == 'v_prediction':
    return v_target(x0, noise, alpha_bar)
  raise ValueError(f'prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}')


def x0_and_eps(prediction_type: str, model_output: jax.Array, x_t: jax.Array,
               alpha_bar: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x0, ε) implied by a model output of `prediction_type` at x_t."""
  if prediction_type == 'epsilon':
    return x0_from_eps(x_t, model_output, alpha_bar), model_output
  if prediction_type == 'sample':
    return model_output, eps_from_x0(x_t, model_output, alpha_bar)
  if prediction_type == 'v_prediction':
    return x0_from_v(x_t, model_output, alpha_bar), eps_from_v(x_t, model_output, alpha_bar)
  raise ValueError(f'prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}')
