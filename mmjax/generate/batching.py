"""Prompt batches with bucketed shapes: few compiled shapes serve many prompt lengths, batch sizes and budgets.

Prompts are right-padded to a bucketed length P and the batch to a bucketed number of rows; padding rows hold a
single token 0 and are dropped from the results. Right padding (not left) lets a prefilled cache hold each prompt
contiguously from slot 0, so the next token overwrites the padding (see `adapters.Qwen2Adapter.prefill`).
"""
import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

TRUNCATE_MODES = (None, 'left')


def bucket(n: int, minimum: int = 16) -> int:
  """The smallest bucket >= max(n, minimum): powers of two, and above 256 also 1.5 x powers of two (384, 768, ...).

  Buckets above 256 stay multiples of 128, the cache tile of the TPU decode kernel.
  """
  size = 1
  while size < max(n, minimum):
    if size >= 256 and size * 3 // 2 >= n:
      return size * 3 // 2
    size *= 2
  return size


@dataclasses.dataclass(frozen=True)
class PromptBatch:
  """Right-padded prompts.

  tokens: int32 [rows, P] (P bucketed, padding 0). lengths: int32 [rows], real tokens per row (>= 1).
  num_prompts: the first num_prompts rows are real; the rest pad the batch to a bucketed size.
  """
  tokens: np.ndarray
  lengths: np.ndarray
  num_prompts: int


def fit_prompts(prompts: Sequence[Sequence[int]], *, vocab_size: int, max_context: int, reserve: int,
                truncate: str | None = None) -> list[np.ndarray]:
  """Validates token-id prompts and fits each, with `reserve` tokens to generate after it, into max_context.

  A prompt that does not fit raises ValueError, or with truncate='left' keeps its last max_context - reserve
  tokens (the number of truncated prompts is logged).
  """
  if truncate not in TRUNCATE_MODES:
    raise ValueError(f'truncate must be one of {TRUNCATE_MODES}, got {truncate!r}.')
  if isinstance(prompts, (str, bytes)) or not len(prompts):
    raise ValueError('prompts must be a non-empty list of token-id lists.')
  room = max_context - reserve
  if room < 1:
    raise ValueError(f'{reserve} new tokens leave no room for a prompt in the context of {max_context} tokens.')
  fitted, cut = [], 0
  for i, prompt in enumerate(prompts):
    ids = np.asarray(prompt)
    if ids.ndim != 1 or not len(ids) or (ids.dtype.kind not in 'iu'):
      raise ValueError(f'prompt {i} must be a non-empty list of int token ids, got {_preview(prompt)}.')
    if ids.min() < 0 or ids.max() >= vocab_size:
      raise ValueError(f'prompt {i} has token ids outside [0, {vocab_size}): min {ids.min()}, max {ids.max()}.')
    if len(ids) > room:
      if truncate != 'left':
        raise ValueError(f'prompt {i} has {len(ids)} tokens; with {reserve} new tokens it exceeds the context '
                         f'of {max_context} tokens by {len(ids) - room}. Shorten it or pass truncate="left".')
      ids, cut = ids[len(ids) - room:], cut + 1
    fitted.append(ids.astype(np.int32))
  if cut:
    logging.warning('mmjax.generate: left-truncated %d of %d prompts to %d tokens.', cut, len(prompts), room)
  return fitted


def pack_prompts(prompts: Sequence[np.ndarray]) -> PromptBatch:
  """Right-pads fitted prompts into a PromptBatch with bucketed length and row count."""
  rows, width = bucket(len(prompts), minimum=1), bucket(max(len(p) for p in prompts))
  tokens = np.zeros((rows, width), np.int32)
  lengths = np.ones((rows,), np.int32)
  for i, ids in enumerate(prompts):
    tokens[i, :len(ids)] = ids
    lengths[i] = len(ids)
  return PromptBatch(tokens, lengths, len(prompts))


def prepare_model_inputs(adapter: Any, sequences: Sequence[np.ndarray], model_inputs: dict[str, Any]
                         ) -> dict[str, Any]:
  """The adapter's `prepare_inputs(sequences, model_inputs)` when it defines one (it checks the inputs against the
  fitted token sequences, in batch order, before anything is traced), else model_inputs unchanged."""
  prepare = getattr(adapter, 'prepare_inputs', None)
  return dict(model_inputs) if prepare is None else prepare(list(sequences), dict(model_inputs))


def split_model_inputs(model_inputs: dict[str, Any]) -> tuple[dict[str, Any], tuple[tuple[str, Any], ...]]:
  """(arrays, static): array inputs are traced; other inputs (e.g. image sizes as int tuples) are static, so they
  must be hashable, and each new value compiles anew.

  The engine passes model inputs to the adapter unchanged: they describe the real prompts only (the rows that pad
  a batch hold one token 0 and no placeholder for them).
  """
  arrays, static = {}, []
  for name, value in sorted(model_inputs.items()):
    if isinstance(value, (jax.Array, np.ndarray)):
      arrays[name] = value
    else:
      try:
        hash(value)
      except TypeError:
        raise ValueError(f'model input {name!r} must be an array, or a hashable static value (e.g. a tuple), '
                         f'got {type(value).__name__}.') from None
      static.append((name, value))
  return arrays, tuple(static)


def _preview(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + '...'
