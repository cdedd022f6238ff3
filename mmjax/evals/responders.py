"""Responders that answer with an mmjax model through `mmjax.generate` (greedy unless told otherwise).

`ChatResponder`: a text-only decoder checkpoint (e.g. Qwen2-7B-Instruct for CoverBench). A prompt becomes the user
turn of the chat template (`chat_template`: 'chatml' (Qwen2) or 'llama3'; system message first when the template
has one), `Prompt.assistant_prefix` the start of the assistant turn.
`LlavaOnevisionResponder`: a LLaVA-OneVision checkpoint (MMIU). A prompt becomes one user turn with an `<image>`
placeholder per image, all images first, then the text; `LlavaOnevisionProcessor` expands the placeholders (one
crop per image when a prompt has several, AnyRes for a single image) and preprocesses the PIL images.

Both load what `mmjax.weights.load_model.load_model` loads: an HF directory, or an mmjax trainer workdir whose
architecture and tokenizer come from the HF directory `base`. A continuation ends at the checkpoint's EOS ids
(generation_config.json, else config.json) or at the end of a turn of the template (`<|im_end|>`, `<|eot_id|>`).
With temperature > 0, the k-th prompt a responder answers draws from stream (seed, k) (`mmjax.generate.generate`'s
request ids), so prompts and follow-ups sample independently and a run is reproducible from its seed.
`max_context_tokens` is the model's window (or the smaller `context_tokens`) less `max_new_tokens`, so that a
benchmark fits each prompt before asking (CoverBench cuts its context from the left; MMIU drops images).
"""
from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from mmjax.data.chat_masking import END_OF_TURN, TEMPLATE_TOKENS, render_chat
from mmjax.evals.prompt import Prompt
from mmjax.generate import as_adapter, generate
from mmjax.models.llava_image_processing import load_rgb
from mmjax.weights.load_model import LoadedModel, hf_directory, load_model


def _load(checkpoint: str, base: str | None, dtype: str) -> LoadedModel:
  if not checkpoint:
    raise ValueError('no checkpoint: set --config.checkpoint to an HF directory (config.json, safetensors, '
                     'tokenizer.json) or an mmjax trainer workdir (with --config.base=HF_DIR)')
  return load_model(checkpoint, base or None, dtype)


class _ModelResponder(abc.ABC):
  """What both responders share: the window, EOS ids, batching, decoding; subclasses render and tokenize."""

  def __init__(self, model: LoadedModel, tokenizer: Any, *, max_new_tokens: int, batch_size: int,
               context_tokens: int, temperature: float, seed: int, chat_template: str):
    if chat_template not in TEMPLATE_TOKENS:
      raise ValueError(f'unknown chat_template {chat_template!r}; choose one of {sorted(TEMPLATE_TOKENS)}')
    self.chat_template = chat_template
    if max_new_tokens < 1:
      raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}')
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    self.model = model
    self.tokenizer = tokenizer
    self.max_new_tokens = max_new_tokens
    self.batch_size = batch_size
    self.temperature = temperature
    self.seed = seed
    self.answered = 0  # prompts answered so far: the next prompt's request id
    window = as_adapter(model.module).max_context
    if context_tokens > 0:
      window = min(window, context_tokens)
    self.max_context_tokens = window - max_new_tokens
    if self.max_context_tokens < 1:
      raise ValueError(f'max_new_tokens={max_new_tokens} leaves no room for a prompt in a window of {window} '
                       'tokens')
    end = tokenizer.token_to_id(END_OF_TURN[chat_template])
    self.eos_token_id = tuple(dict.fromkeys(model.eos_token_id + (() if end is None else (end,))))
    if not self.eos_token_id:
      logging.warning('%s names no EOS token and its tokenizer has no %s: every answer runs to max_new_tokens',
                      model.source, END_OF_TURN[chat_template])

  @abc.abstractmethod
  def render(self, prompt: Prompt) -> str:
    """The prompt as the model's input text."""

  @abc.abstractmethod
  def _generate(self, prompts: Sequence[Prompt], **kwargs) -> list[list[int]]:
    """New token ids per prompt."""

  def respond(self, prompts: Sequence[Prompt]) -> list[str]:
    """One answer per prompt (special tokens and surrounding whitespace removed), `batch_size` per generate call."""
    out: list[str] = []
    kwargs = dict(max_new_tokens=self.max_new_tokens, temperature=self.temperature, seed=self.seed,
                  eos_token_id=self.eos_token_id or None)
    for first in range(0, len(prompts), self.batch_size):
      batch = prompts[first:first + self.batch_size]
      ids = list(range(self.answered, self.answered + len(batch)))
      for tokens in self._generate(batch, request_ids=ids, **kwargs):
        out.append(self.tokenizer.decode(tokens, skip_special_tokens=True).strip())
      self.answered += len(batch)
    return out


class ChatResponder(_ModelResponder):
  """A text-only decoder (Qwen2, Llama) in its chat template; see the module docstring. system_message None is
  the template's default."""

  def __init__(self, checkpoint: str, *, base: str | None = None, max_new_tokens: int = 32, batch_size: int = 8,
               context_tokens: int = 0, system_message: str | None = None, dtype: str = 'float32',
               temperature: float = 0.0, seed: int = 0, chat_template: str = 'chatml'):
    model = _load(checkpoint, base, dtype)
    if model.tokenizer is None:
      raise FileNotFoundError(f'{hf_directory(checkpoint, base)}: no tokenizer.json; a chat responder needs one')
    missing = [t for t in TEMPLATE_TOKENS.get(chat_template, ()) if model.tokenizer.token_to_id(t) is None]
    if missing:
      raise ValueError(f'{model.source}: the tokenizer has no {missing} tokens, so it has no {chat_template} '
                       'template (set --config.chat_template)')
    model.tokenizer.no_truncation()
    model.tokenizer.no_padding()
    self.system_message = system_message
    super().__init__(model, model.tokenizer, max_new_tokens=max_new_tokens, batch_size=batch_size,
                     context_tokens=context_tokens, temperature=temperature, seed=seed,
                     chat_template=chat_template)

  def render(self, prompt: Prompt) -> str:
    if prompt.images:
      raise ValueError(f'{self.model.source} is a text-only model; the prompt has {len(prompt.images)} images')
    return render_chat([{'from': 'human', 'value': prompt.text}], template=self.chat_template,
                       system_message=self.system_message, add_generation_prompt=True) + prompt.assistant_prefix

  def encode(self, prompt: Prompt) -> list[int]:
    return self.tokenizer.encode(self.render(prompt)).ids

  def count_tokens(self, prompt: Prompt) -> int:
    return len(self.encode(prompt))

  def _generate(self, prompts: Sequence[Prompt], **kwargs) -> list[list[int]]:
    results = generate(self.model.module, self.model.params, [self.encode(p) for p in prompts], **kwargs)
    return [completions[0].tokens for completions in results]


class LlavaOnevisionResponder(_ModelResponder):
  """A LLaVA-OneVision checkpoint with its processor; see the module docstring."""

  def __init__(self, checkpoint: str, *, base: str | None = None, max_new_tokens: int = 32, batch_size: int = 4,
               context_tokens: int = 0, system_message: str | None = None, dtype: str = 'float32',
               temperature: float = 0.0, seed: int = 0, chat_template: str = 'chatml'):
    model = _load(checkpoint, base, dtype)
    if model.processor is None:  # load_model reads the processor of a LLaVA-OneVision checkpoint
      raise FileNotFoundError(f'{hf_directory(checkpoint, base)}: no preprocessor_config.json; a LLaVA-OneVision '
                              'responder needs its image processor')
    self.processor = model.processor
    self.system_message = system_message
    super().__init__(model, self.processor.tokenizer, max_new_tokens=max_new_tokens, batch_size=batch_size,
                     context_tokens=context_tokens, temperature=temperature, seed=seed,
                     chat_template=chat_template)

  def render(self, prompt: Prompt) -> str:
    content = [{'type': 'image'}] * len(prompt.images) + [{'type': 'text', 'text': prompt.text}]
    return self.processor.apply_chat_template([{'role': 'user', 'content': content}], add_generation_prompt=True,
                                              system_message=self.system_message,
                                              template=self.chat_template) + prompt.assistant_prefix

  def count_tokens(self, prompt: Prompt) -> int:
    """Text tokens of the rendered prompt plus each image's placeholder tokens (one `<image>` token each before
    the processor expands it)."""
    text = len(self.tokenizer.encode(self.render(prompt)).ids)
    multi = len(prompt.images) > 1
    return text + sum(self.processor.num_image_tokens(_size(path), single_crop=multi) - 1
                      for path in prompt.images)

  def model_inputs(self, prompt: Prompt) -> dict[str, np.ndarray]:
    """The processor's inputs for one prompt (input_ids [1, S]; pixel_values, image_sizes, batch_num_images)."""
    return self.processor(self.render(prompt), images=[load_rgb(p, convert=False) for p in prompt.images] or None)

  def _generate(self, prompts: Sequence[Prompt], **kwargs) -> list[list[int]]:
    # One prompt at a time through the processor, so that rows need no pad token: the engine pads them itself.
    each = [self.model_inputs(p) for p in prompts]
    visual: dict[str, Any] = {}
    with_images = [x for x in each if 'pixel_values' in x]
    if with_images:
      crops = max(x['pixel_values'].shape[1] for x in with_images)
      visual['pixel_values'] = np.concatenate([
          np.pad(x['pixel_values'], ((0, 0), (0, crops - x['pixel_values'].shape[1]), (0, 0), (0, 0), (0, 0)))
          for x in with_images])
      visual['image_sizes'] = np.concatenate([x['image_sizes'] for x in with_images])
      visual['batch_num_images'] = np.asarray([len(p.images) for p in prompts], np.int64)
    ids = [x['input_ids'][0].tolist() for x in each]
    results = generate(self.model.module, self.model.params, ids, **kwargs, **visual)
    return [completions[0].tokens for completions in results]


def _size(path: str) -> tuple[int, int]:
  """(height, width) of an image file, from its header."""
  from PIL import Image
  try:
    with Image.open(path) as image:
      width, height = image.size
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read image file {path}: {e}') from None
  return height, width

