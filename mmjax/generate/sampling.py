"""Next-token selection: greedy, or sampling with temperature, top-k, top-p (nucleus) and min-p, as in transformers.

The filters apply in transformers' order (temperature, top_k, top_p, min_p) with its semantics: top-k keeps the
tokens whose logit is >= the k-th largest; top-p removes the least likely tokens whose cumulative probability (in
ascending order) is <= 1 - top_p, always keeping the most likely one; min-p removes tokens whose probability is
below min_p times the largest. Which filters run is static (part of the compiled function); their values are
traced, so changing a value does not recompile.
"""
import dataclasses

import flax.struct
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Filters:
  """Static choice of the selection rule: greedy (argmax) or sampling with the enabled filters."""
  greedy: bool
  top_k: bool = False
  top_p: bool = False
  min_p: bool = False


@flax.struct.dataclass
class SamplingValues:
  """Traced values of the filters (scalars): temperature > 0, top_k >= 1, top_p in (0, 1], min_p in [0, 1]."""
  temperature: jax.Array
  top_k: jax.Array
  top_p: jax.Array
  min_p: jax.Array


def sampling_setup(temperature: float, top_k: int | None, top_p: float | None, min_p: float | None
                   ) -> tuple[Filters, SamplingValues]:
  """Validates the user's settings. temperature 0 is greedy and then takes no filters."""
  if temperature < 0:
    raise ValueError(f'temperature must be >= 0 (0 is greedy), got {temperature}.')
  if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
    raise ValueError(f'top_k must be a positive int, got {top_k!r}.')
  if top_p is not None and not 0 < top_p <= 1:
    raise ValueError(f'top_p must be in (0, 1], got {top_p}.')
  if min_p is not None and not 0 <= min_p <= 1:
    raise ValueError(f'min_p must be in [0, 1], got {min_p}.')
  filters = Filters(greedy=temperature == 0, top_k=top_k is not None, top_p=top_p is not None,
                    min_p=min_p is not None)
  if filters.greedy and (filters.top_k or filters.top_p or filters.min_p):
    raise ValueError('top_k, top_p and min_p filter a sampling distribution: pass temperature > 0 with them '
                     '(temperature=0 is greedy decoding).')
  values = SamplingValues(temperature=jnp.float32(temperature or 1.0), top_k=jnp.int32(top_k or 1),
                          top_p=jnp.float32(top_p or 1.0), min_p=jnp.float32(min_p or 0.0))
  return filters, values


def filter_logits(logits: jax.Array, filters: Filters, values: SamplingValues) -> jax.Array:
  """The sampling distribution's logits [R, V]: scaled by 1 / temperature, removed tokens at -inf."""
  logits = logits / values.temperature
  vocab = logits.shape[-1]
  if filters.top_k or filters.top_p:
    ascending = jnp.sort(logits, axis=-1)
    if filters.top_k:
      first = vocab - jnp.clip(values.top_k, 1, vocab)
      logits = jnp.where(logits < ascending[:, first][:, None], -jnp.inf, logits)
      ascending = jnp.where(jnp.arange(vocab) < first, -jnp.inf, ascending)
    if filters.top_p:
      cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
      removed = (cumulative <= 1 - values.top_p).at[:, -1].set(False)
      # Cumulative sums grow, so the removed tokens are a prefix of the ascending order.
      smallest_kept = jnp.take_along_axis(ascending, jnp.sum(removed, axis=-1, keepdims=True), axis=-1)
      logits = jnp.where(logits < smallest_kept, -jnp.inf, logits)
  if filters.min_p:
    probs = jax.nn.softmax(logits, axis=-1)
    logits = jnp.where(probs < values.min_p * jnp.max(probs, axis=-1, keepdims=True), -jnp.inf, logits)
  return logits


def select_tokens(logits: jax.Array, filters: Filters, values: SamplingValues, keys: jax.Array) -> jax.Array:
  """Next tokens int32 [R] from logits [R, V]; keys: one PRNG key per row (unused when greedy)."""
  if filters.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  sampled = jax.vmap(jax.random.categorical)(keys, filter_logits(logits, filters, values))
  return sampled.astype(jnp.int32)
