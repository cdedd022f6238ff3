"""Train steps: the default one, built from an experiment's `loss_fn`, and the pieces a custom step reuses.

A step is `train_step(state, batch, rng) -> (state, metrics)`, traced inside the trainer's jit. The trainer
advances `state.step` and the EMA after it; the step updates params, optimiser states and `extra`. Metrics are
scalars; 'loss' shows in the progress bar, and a False 'finite' stops the run naming the non-finite metrics.

A custom step (a GAN's alternating updates, lazy regularisation, a reference model) composes:
  (loss, aux), grads = compute_grads(loss_fn, state, batch, rng)   # gradient accumulation included
  state, m = state.apply_gradients(grads, 'generator')             # one named optimiser, its metrics
  state, finite = keep_if_finite(state, previous, loss, m['grad_norm'])  # the NaN guard
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from mmjax.train.state import TrainState

Batch = Mapping[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]
TrainStep = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Mapping[str, jax.Array]]]


def compute_grads(loss_fn: LossFn, state: TrainState, batch: Batch, rng: jax.Array,
                  accum_steps: int = 1) -> tuple[tuple[jax.Array, dict[str, jax.Array]], Any]:
  """((loss, aux), grads) of `loss_fn(params, batch, rng, step)` with respect to `state.params`.

  loss_fn sees the params together with the frozen subtrees (`state.model_params`). With accum_steps > 1 the
  batch [B, ...] is split into accum_steps microbatches [B / accum_steps, ...] (microbatch i draws
  fold_in(rng, i)); loss, aux and grads are their means (grads accumulated in float32, returned in the params'
  dtypes).
  """
  def loss(params, mb, key):
    return loss_fn(state.model_params(params), mb, key, state.step)

  loss_and_grad = jax.value_and_grad(loss, has_aux=True)
  if accum_steps == 1:
    return loss_and_grad(state.params, batch, rng)
  micro = jax.tree.map(lambda x: x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:]), batch)

  def body(carry, xs):
    i, mb = xs
    (loss_i, aux), g = loss_and_grad(state.params, mb, jax.random.fold_in(rng, i))
    acc_g, acc_loss, acc_aux = carry
    return (jax.tree.map(jnp.add, acc_g, g), acc_loss + loss_i, jax.tree.map(jnp.add, acc_aux, aux)), None

  zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
  first = jax.tree.map(lambda x: x[0], micro)
  aux_shape = jax.eval_shape(lambda: loss_and_grad(state.params, first, rng)[0][1])
  zeros_aux = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), aux_shape)
  (g, total, aux), _ = jax.lax.scan(body, (zeros_g, jnp.zeros((), jnp.float32), zeros_aux),
                                    (jnp.arange(accum_steps), micro))
  scale = 1.0 / accum_steps
  g = jax.tree.map(lambda x, p: (x * scale).astype(p.dtype), g, state.params)
  return (total * scale, jax.tree.map(lambda a: a * scale, aux)), g


def keep_if_finite(new: TrainState, previous: TrainState, *values: jax.Array) -> tuple[TrainState, jax.Array]:
  """The NaN guard: `new` when every value is finite, else `previous` (so no checkpoint ever holds NaNs).

  Returns (state, finite); put `finite` into the step's metrics as 'finite' so the trainer stops the run.
  The frozen subtrees are passed through untouched (they never change).
  """
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in values])) if values else jnp.asarray(True)
  kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new.replace(frozen={}), previous.replace(frozen={}))
  return kept.replace(frozen=new.frozen), finite


def prefixed(name: str, metrics: Mapping[str, jax.Array], several: bool) -> dict[str, jax.Array]:
  """An optimiser's metrics, under '<name>/' when the run has several optimisers."""
  return {f'{name}/{k}' if several else k: v for k, v in metrics.items()}


def default_train_step(loss_fn: LossFn, accum_steps: int = 1) -> TrainStep:
  """The step built from `loss_fn`: one gradient (accumulated over microbatches), every optimiser applied to the
  parameters it owns, the NaN guard; metrics: loss, aux, and each optimiser's grad norms and learning rates."""

  def train_step(state: TrainState, batch: Batch, rng: jax.Array):
    (loss, aux), grads = compute_grads(loss_fn, state, batch, rng, accum_steps)
    new, metrics = state, {'loss': loss}
    several = len(state.optimizers) > 1
    for opt in state.optimizers:
      new, m = new.apply_gradients(grads, opt.name)
      metrics.update(prefixed(opt.name, m, several))
    norms = [v for k, v in metrics.items() if k.split('/')[-1] == 'grad_norm']
    new, metrics['finite'] = keep_if_finite(new, state, loss, *norms)
    metrics.update(aux)
    return new, metrics

  return train_step
