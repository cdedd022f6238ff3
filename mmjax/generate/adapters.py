"""What the generation engine needs from a decoder, and the adapter of the decoder family (Qwen2, Llama).

The engine (`generate`, `beam_search`, `score`) never calls a flax module directly: it talks to a `DecoderAdapter`.
A multimodal model plugs in with its own adapter whose `prefill` turns token ids plus its model inputs (e.g. pixel
values) into embeddings (text embeddings with the visual features merged at the placeholder tokens) and prefills
the language model with them (`Qwen2Adapter.prefill_embeds`); `decode` is then the language model's text decode.

Cache contract: the engine picks cache rows (forks samples, reorders beams) with `take_rows`: a cache that defines
`take_rows(rows)` (a `KVCache`, whose stacked layout has the batch on axis 1) gathers its own rows; any other cache
is a pytree whose leaves all have the batch as their leading axis. After `prefill` row b holds exactly its
lengths[b] prompt tokens, contiguous from slot 0, so that each later token is appended at slot lengths[b] and a
decode-attention kernel that only knows per-row lengths sees exactly the real tokens.

An adapter may also define `prepare_inputs(sequences, model_inputs) -> model_inputs`: the engine calls it with the
fitted token sequences (numpy) and the caller's model inputs before anything is traced, so the adapter can check
them against the prompts (e.g. placeholder counts, which a traced batch cannot check) and make layout inputs static.
A session (`mmjax.generate.session`) continues rows after a decode or appends tokens to them with two more optional
methods, `extend` and `rewind` (see `Qwen2Adapter`); `generate`, `stream` and `beam_search` need neither, `score`
(which appends the continuations to prefilled prompts) needs `extend`.

`as_adapter` finds the adapter of a flax module in a registry filled by `register_adapter`, so a model family's
adapter module (e.g. `mmjax.generate.llava`) imports this one and never the other way round.
"""
import dataclasses
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models.decoder import DecoderForCausalLM
from mmjax.models.kv_cache import KVCache, init_cache

_ADAPTERS: dict[type, Callable[[Any], 'DecoderAdapter']] = {}


def register_adapter(module_type: type) -> Callable[[type], type]:
  """Class decorator: `as_adapter(m)` returns `cls(m)` for instances m of module_type (and its subclasses)."""
  def register(cls: type) -> type:
    _ADAPTERS[module_type] = cls
    return cls
  return register


@runtime_checkable
class DecoderAdapter(Protocol):
  """A causal decoder as the engine sees it. Implementations are hashable (they are static arguments of jit)."""

  @property
  def vocab_size(self) -> int:
    """Size of the logits' last axis."""

  @property
  def max_context(self) -> int:
    """Most tokens (prompt + generated) one row may hold."""

  def init_cache(self, batch: int, max_len: int) -> Any:
    """An empty cache of `batch` rows and `max_len` slots per row."""

  def prefill(self, params: Any, tokens: jax.Array, lengths: jax.Array, cache: Any, **model_inputs: jax.Array
              ) -> tuple[jax.Array, Any]:
    """Runs right-padded prompts tokens int32 [B, P] with lengths int32 [B] (>= 1) into an empty cache.

    Returns (float32 logits [B, V] after each row's last real token, the cache holding rows contiguously).
    model_inputs: the model's extra inputs for the real prompts, as the caller passed them or as `prepare_inputs`
    returned them (arrays traced, other values static). Rows that only pad the batch follow the real prompts and
    hold one token 0 and no image or video placeholder.
    """

  def decode(self, params: Any, tokens: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
    """Appends one token per row, tokens int32 [B]; returns (float32 next-token logits [B, V], the cache)."""

  def logits(self, params: Any, tokens: jax.Array, lengths: jax.Array, **model_inputs: jax.Array) -> jax.Array:
    """Full-sequence float32 logits [B, S, V] of right-padded tokens int32 [B, S] (no cache); [b, t] predicts t+1."""


@register_adapter(DecoderForCausalLM)
@dataclasses.dataclass(frozen=True)
class Qwen2Adapter:
  """`DecoderAdapter` for a text-only decoder of the family (`Qwen2ForCausalLM`, `LlamaForCausalLM`); the cache is
  a `KVCache` in the module's compute dtype."""
  module: DecoderForCausalLM

  @property
  def vocab_size(self) -> int:
    return self.module.config.vocab_size

  @property
  def max_context(self) -> int:
    return self.module.config.max_position_embeddings

  def init_cache(self, batch: int, max_len: int) -> KVCache:
    return init_cache(self.module.config, batch, max_len, self.module.dtype or self.module.param_dtype)

  def prefill(self, params: Any, tokens: jax.Array, lengths: jax.Array, cache: KVCache,
              **model_inputs: jax.Array) -> tuple[jax.Array, KVCache]:
    _text_only(model_inputs)
    return self._prefill(params, lengths, cache, input_ids=tokens)

  def prefill_embeds(self, params: Any, embeds: jax.Array, lengths: jax.Array, cache: KVCache
                     ) -> tuple[jax.Array, KVCache]:
    """`prefill` from right-padded input embeddings [B, P, E], e.g. text embeddings with visual features merged
    in: a multimodal adapter computes those and delegates here with its language model's params."""
    return self._prefill(params, lengths, cache, inputs_embeds=embeds)

  def extend(self, params: Any, tokens: jax.Array, lengths: jax.Array, cache: KVCache, *, every_token: bool = False
             ) -> tuple[jax.Array, KVCache]:
    """Appends right-padded tokens int32 [B, T] with lengths int32 [B] (>= 0) to a contiguous cache; returns
    (float32 logits [B, V] after each row's last new token (meaningless where lengths is 0), or with every_token
    [B, T, V] after every new token (for scoring them), the cache)."""
    return self._prefill(params, lengths, cache, every_token, input_ids=tokens)

  def rewind(self, cache: KVCache, lengths: jax.Array) -> KVCache:
    """Keeps the first lengths[b] (<= its current length) slots of each row: later writes overwrite the rest."""
    slots = jnp.arange(cache.max_len)[None, :]
    return cache.replace(lengths=lengths.astype(jnp.int32), valid=slots < lengths[:, None], contiguous=True)

  def _prefill(self, params: Any, lengths: jax.Array, cache: KVCache, every_token: bool = False,
               **inputs: jax.Array) -> tuple[jax.Array, KVCache]:
    """Appends a right-padded chunk (lengths [B] real tokens per row) to a contiguous (or empty) cache; returns the
    logits after each row's last real token [B, V], or with every_token after every chunk token [B, S, V]."""
    width = next(iter(inputs.values())).shape[1]
    mask = jnp.arange(width)[None, :] < lengths[:, None]
    # Unless scoring, only each row's last real token needs logits: skipping the [B, P, V] unembedding halves a CPU
    # prefill.
    out = self.module.apply({'params': params}, **inputs, attention_mask=mask, cache=cache,
                            logits_at=None if every_token else jnp.maximum(lengths - 1, 0)[:, None])
    # The right padding was written after each row's new tokens; forgetting it leaves every row contiguous from slot
    # 0, and the next token overwrites the first padding slot. Positions count valid slots, so they stay HF's.
    # Decode steps then attend by lengths alone (the decode kernel on GPU/TPU).
    return out.logits if every_token else out.logits[:, 0], self.rewind(out.cache, cache.lengths + lengths)

  def decode(self, params: Any, tokens: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    out = self.module.apply({'params': params}, tokens[:, None], cache=cache)
    return out.logits[:, 0], out.cache

  def logits(self, params: Any, tokens: jax.Array, lengths: jax.Array, **model_inputs: jax.Array) -> jax.Array:
    _text_only(model_inputs)
    mask = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return self.module.apply({'params': params}, tokens, attention_mask=mask).logits


def _text_only(model_inputs: dict[str, Any]) -> None:
  if model_inputs:
    raise ValueError(f'a decoder-only language model is a text-only model; it takes no {sorted(model_inputs)}. '
                     'Images and videos need a multimodal model (e.g. LLaVA-OneVision) and its adapter.')


def take_rows(cache: Any, rows: jax.Array) -> Any:
  """Rows `rows` int [R] of a cache (see the cache contract): gathered along each leaf's batch axis."""
  if hasattr(cache, 'take_rows'):
    return cache.take_rows(rows)
  return jax.tree.map(lambda leaf: jnp.take(leaf, rows, axis=0), cache)


def as_adapter(model: nn.Module | DecoderAdapter) -> DecoderAdapter:
  """The registered adapter of a flax module (`register_adapter`); a `DecoderAdapter` is returned unchanged."""
  for cls in type(model).__mro__:
    if cls in _ADAPTERS:
      return _ADAPTERS[cls](model)
  if isinstance(model, DecoderAdapter):
    return model
  names = ', '.join(sorted(t.__name__ for t in _ADAPTERS))
  raise TypeError(f'No generation adapter for {type(model).__name__}: pass one of {names} (adapters registered '
                  'with mmjax.generate.register_adapter) or an object implementing mmjax.generate.DecoderAdapter.')
