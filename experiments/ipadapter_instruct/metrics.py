"""IPAdapter-Instruct's CLIP metrics (spec section 4), the paper's Table 1, and the evaluation report files.

On L2-normalised CLIP embeddings (image e(x), text e(t)) of one CLIP model, per item:
  CLIP-I  cos(e(generated), e(condition))                                 image-image, unscaled
  CLIP-T  w · max(cos(e(generated), e(caption of the condition)), 0)      CLIPScore (Hessel et al. 2021)
  CLIP-P  w · max(cos(e(generated), e(prompt)), 0)                        CLIPScore
  CLIP-S  w · cos(e(generated) − e(prompt), e(condition) − e(caption))    directional, not clamped
w is CLIPScore's weight, 2.5 by default. The paper states neither w nor the backbone; its numbers fit w = 2.5 (CLIP-T
.85 and CLIP-P .60-.78 are w × the usual image-text cosines of .25-.34, and CLIP-S above 1 needs a weight), and
IP-Adapter, whose protocol it follows, scores with CLIP ViT-L/14 (openai/clip-vit-large-patch14), the default
backbone here. Both are configurable (config.evaluate.clip, config.evaluate.clip_score_weight).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.typing import DTypeLike
from PIL import Image, ImageDraw, ImageFont

from experiments.ipadapter_instruct.pipeline import preprocess
from mmjax.data.clip_tokenizer import CLIPTokenizer
from mmjax.models.clip import (
  CLIPTextConfig,
  CLIPTextModelWithProjection,
  CLIPVisionConfig,
  CLIPVisionModelWithProjection,
)
from mmjax.weights import load_into
from mmjax.weights.safetensors_source import read_config

CLIP_SCORE_WEIGHT = 2.5
METRICS = ('CLIP-I', 'CLIP-T', 'CLIP-P', 'CLIP-S')
# Table 1 of the paper: (task, metric) columns and each model's row.
TABLE1_COLUMNS = (('replication', 'CLIP-I'), ('replication', 'CLIP-T'), ('style', 'CLIP-S'), ('style', 'CLIP-P'),
                  ('object', 'CLIP-I'), ('object', 'CLIP-P'), ('composition', 'CLIP-I'), ('composition', 'CLIP-P'),
                  ('face', 'CLIP-I'), ('face', 'CLIP-P'))
TABLE1 = {
    'single-task': (.9152, .8523, 1.0988, .7615, .7670, .6351, .7337, .6424, .5154, .6012),
    'Instruct': (.9098, .8542, 1.1171, .7776, .8040, .6402, .7082, .6517, .5264, .5976),
    'fixed instr.': (.9086, .8528, 1.1141, .7810, .8029, .6408, .7151, .6517, .5159, .6009),
}
# Our task names (data.TASKS) that the paper names otherwise.
PAPER_TASKS = {'everything': 'replication'}
MISSING = '—'


def _normalise(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Cosine similarity of the rows of a and b [N, P] -> [N]."""
  return np.sum(_normalise(a) * _normalise(b), axis=-1)


def clip_i(generated: np.ndarray, condition: np.ndarray) -> np.ndarray:
  """CLIP-I [N]: cosine of the image embeddings [N, P] of the generated and the condition images."""
  return cosine(generated, condition)


def clip_score(images: np.ndarray, texts: np.ndarray, weight: float = CLIP_SCORE_WEIGHT) -> np.ndarray:
  """CLIPScore [N]: weight · max(cos(image, text), 0) of image and text embeddings [N, P] (CLIP-T and CLIP-P)."""
  return weight * np.maximum(cosine(images, texts), 0.0)


def clip_s(generated: np.ndarray, prompt: np.ndarray, condition: np.ndarray, caption: np.ndarray,
           weight: float = CLIP_SCORE_WEIGHT) -> np.ndarray:
  """CLIP-S [N]: weight · cos(ê(generated) − ê(prompt), ê(condition) − ê(caption)), ê the normalised embeddings
  [N, P]: how far the generated image moved from its prompt in the direction the condition moves from its caption."""
  return weight * cosine(_normalise(generated) - _normalise(prompt), _normalise(condition) - _normalise(caption))


def item_metrics(generated: np.ndarray, condition: np.ndarray, prompt: np.ndarray, caption: np.ndarray | None,
                 weight: float = CLIP_SCORE_WEIGHT) -> dict[str, np.ndarray]:
  """All four metrics [N] of N items from their embeddings [N, P]; without captions (None) only CLIP-I and CLIP-P."""
  out = {'CLIP-I': clip_i(generated, condition), 'CLIP-P': clip_score(generated, prompt, weight)}
  if caption is not None:
    out['CLIP-T'] = clip_score(generated, caption, weight)
    out['CLIP-S'] = clip_s(generated, prompt, condition, caption, weight)
  return out


def _as_uint8(images: np.ndarray | jax.Array | Sequence[Image.Image]) -> np.ndarray | list[Image.Image]:
  """Float images in [0, 1] as uint8 (what a saved PNG holds); uint8 arrays and PIL images pass unchanged."""
  if isinstance(images, (list, tuple)):
    return list(images)
  images = np.asarray(images)
  if images.dtype != np.uint8:
    images = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
  return images


@dataclasses.dataclass(frozen=True, eq=False)
class CLIPScorer:
  """CLIP image and text embeddings in one joint space (HF CLIPModel.get_image_features / get_text_features).

  params: {'image_encoder': CLIPVisionModelWithProjection params, 'text_encoder': CLIPTextModelWithProjection
  params}; the two projections must have the same width. weight: CLIPScore's w.
  """
  image_encoder: CLIPVisionModelWithProjection
  text_encoder: CLIPTextModelWithProjection
  tokenizer: CLIPTokenizer
  params: Mapping[str, Any]
  weight: float = CLIP_SCORE_WEIGHT
  _images: Callable = dataclasses.field(init=False, repr=False)
  _texts: Callable = dataclasses.field(init=False, repr=False)

  def __post_init__(self):
    image_dim, text_dim = self.image_encoder.config.projection_dim, self.text_encoder.config.projection_dim
    if image_dim != text_dim:
      raise ValueError(f'CLIP image projection_dim {image_dim} differs from the text projection_dim {text_dim}: '
                       'the towers do not share a joint space.')
    object.__setattr__(self, '_images', jax.jit(
        lambda p, x: self.image_encoder.apply({'params': p}, x, method='image_embeds')))
    object.__setattr__(self, '_texts', jax.jit(
        lambda p, ids: self.text_encoder.apply({'params': p}, ids, method='text_embeds')))

  @classmethod
  def from_folder(cls, directory: str | os.PathLike, dtype: DTypeLike = jnp.float32,
                  weight: float = CLIP_SCORE_WEIGHT) -> CLIPScorer:
    """Reads an HF CLIPModel folder (config.json with model_type 'clip', its safetensors, vocab.json and
    merges.txt), both towers with their projections."""
    image_encoder, text_encoder, params = load_clip_model(directory, dtype)
    return cls(image_encoder, text_encoder, CLIPTokenizer.from_folder(directory), params, weight)

  @property
  def image_size(self) -> int:
    return self.image_encoder.config.image_size

  def image_features(self, pixels: jax.Array) -> np.ndarray:
    """Unnormalised image embeddings [B, P] of normalised pixels [B, S, S, 3] (S = image_size)."""
    return np.asarray(self._images(self.params['image_encoder'], jnp.asarray(pixels)), np.float32)

  def text_features(self, texts: str | Sequence[str]) -> np.ndarray:
    """Unnormalised text embeddings [B, P] of the texts (tokenized and truncated to the tokenizer's length)."""
    return np.asarray(self._texts(self.params['text_encoder'], jnp.asarray(self.tokenizer(texts))), np.float32)

  def embed_images(self, images: np.ndarray | jax.Array | Sequence[Image.Image]) -> np.ndarray:
    """Image embeddings [B, P] of images (uint8 or float in [0, 1] [B, H, W, 3], or PIL images) after CLIP's
    preprocessing (shortest side to image_size, centre crop, CLIP mean and std)."""
    return self.image_features(preprocess(_as_uint8(images), self.image_size))

  def score(self, generated: np.ndarray | jax.Array | Sequence[Image.Image],
            conditions: np.ndarray | jax.Array | Sequence[Image.Image], prompts: Sequence[str],
            captions: Sequence[str | None]) -> list[dict[str, float]]:
    """The metrics of N items ({metric: value} each, see `item_metrics`): generated images, their condition images,
    prompts and the conditions' captions (None where an item has none: CLIP-I and CLIP-P only)."""
    generated, conditions = self.embed_images(generated), self.embed_images(conditions)
    prompts = self.text_features(prompts)
    captioned = [i for i, caption in enumerate(captions) if caption is not None]
    values = item_metrics(generated, conditions, prompts, None, self.weight)
    if captioned:
      with_caption = item_metrics(generated[captioned], conditions[captioned], prompts[captioned],
                                  self.text_features([captions[i] for i in captioned]), self.weight)
    items = [{metric: float(v[i]) for metric, v in values.items()} for i in range(len(generated))]
    for row, i in enumerate(captioned):
      items[i].update({metric: float(v[row]) for metric, v in with_caption.items()})
    return items


def load_clip_model(directory: str | os.PathLike, dtype: DTypeLike = jnp.float32
                    ) -> tuple[CLIPVisionModelWithProjection, CLIPTextModelWithProjection, dict[str, Any]]:
  """Both towers of an HF CLIPModel folder with their projections: (image encoder, text encoder, {'image_encoder',
  'text_encoder'} params in dtype). The towers' sizes come from config.json's vision_config and text_config, the
  joint width from its projection_dim (the towers' own projection_dim entries are transformers' unused defaults).

  Raises ValueError naming config.json when it is not a CLIPModel's, WeightsMismatchError naming missing or
  misshapen tensors.
  """
  directory = Path(directory)
  config = read_config(directory)
  if config.get('model_type') != 'clip':
    raise ValueError(f'{directory / "config.json"}: model_type {config.get("model_type")!r} is not an HF CLIPModel '
                     "('clip'); the CLIP metrics need both towers and their projections.")
  width = config.get('projection_dim', 512)
  vision = CLIPVisionModelWithProjection(CLIPVisionConfig.from_hf_dict(
      {**(config.get('vision_config') or {}), 'projection_dim': width,
       'architectures': ['CLIPVisionModelWithProjection']}), dtype=dtype, param_dtype=dtype)
  text = CLIPTextModelWithProjection(CLIPTextConfig.from_hf_dict(
      {**(config.get('text_config') or {}), 'projection_dim': width,
       'architectures': ['CLIPTextModelWithProjection']}), dtype=dtype, param_dtype=dtype)
  size = vision.config.image_size
  abstract = {
      'image_encoder': jax.eval_shape(vision.init, jax.random.key(0), jnp.zeros((1, size, size, 3))),
      'text_encoder': jax.eval_shape(text.init, jax.random.key(0),
                                     jnp.zeros((1, text.config.max_position_embeddings), jnp.int32))}
  # The 'clip' layout reads one tower (and its projection) of a CLIPModel file into a tree of that tower's shapes.
  params = {name: load_into(nn.unbox(tree['params']), directory, layout='clip') for name, tree in abstract.items()}
  return vision, text, params


def mean_metrics(items: Mapping[str, Sequence[Mapping[str, float]]]) -> dict[str, dict[str, float]]:
  """Per task: the mean of each metric over the task's items ({task: [{metric: value}, ...]}) and the item count
  ('count'); a metric only some items have is averaged over those."""
  out = {}
  for task, rows in items.items():
    summary: dict[str, float] = {'count': len(rows)}
    for metric in METRICS:
      values = [row[metric] for row in rows if metric in row]
      if values:
        summary[metric] = float(np.mean(values))
    out[task] = summary
  return out


def _cell(value: float | None) -> str:
  return MISSING if value is None else f'{value:.4f}'


def metrics_markdown(results: Mapping[str, Mapping[str, float]], name: str = 'ours',
                     paper_tasks: Mapping[str, str] = PAPER_TASKS) -> str:
  """Table 1 with our row (`name`) under the paper's three rows, then every metric of every task we evaluated.

  results: {task: {metric: mean, 'count': n}}; paper_tasks maps our task names to the paper's where they differ.
  Tasks or metrics we lack show as '—'.
  """
  by_paper_task = {paper_tasks.get(task, task): row for task, row in results.items()}
  header = [f'{task} {metric}' for task, metric in TABLE1_COLUMNS]
  lines = ['| model | ' + ' | '.join(header) + ' |', '|---' * (len(header) + 1) + '|']
  for model, row in TABLE1.items():
    lines.append(f'| {model} (paper) | ' + ' | '.join(_cell(v) for v in row) + ' |')
  ours = [by_paper_task.get(task, {}).get(metric) for task, metric in TABLE1_COLUMNS]
  lines.append(f'| **{name}** | ' + ' | '.join(_cell(v) for v in ours) + ' |')
  lines += ['', '| task | items | ' + ' | '.join(METRICS) + ' |', '|---' * (len(METRICS) + 2) + '|']
  for task, row in results.items():
    lines.append(f'| {task} | {row.get("count", 0)} | ' + ' | '.join(_cell(row.get(m)) for m in METRICS) + ' |')
  return '\n'.join(lines) + '\n'


def write_summary(directory: str | os.PathLike, results: Mapping[str, Mapping[str, float]], *,
                  name: str = 'ours', paper_tasks: Mapping[str, str] = PAPER_TASKS, note: str = '',
                  extra: Mapping[str, Any] | None = None) -> None:
  """Writes <directory>/summary.json ({'results', 'paper_table1', 'note', **extra}) and <directory>/metrics.md
  (`metrics_markdown`, with the note above the tables)."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  paper = {model: {f'{task} {metric}': v for (task, metric), v in zip(TABLE1_COLUMNS, row)}
           for model, row in TABLE1.items()}
  summary = {'results': results, 'paper_table1': paper, 'note': note, **(extra or {})}
  (directory / 'summary.json').write_text(json.dumps(summary, indent=1, ensure_ascii=False))
  heading = '# IPAdapter-Instruct CLIP metrics\n\n' + (f'{note}\n\n' if note else '')
  (directory / 'metrics.md').write_text(heading + metrics_markdown(results, name, paper_tasks), encoding='utf-8')


def _fit(image: np.ndarray | Image.Image, cell: int) -> Image.Image:
  """An image (uint8 or float in [0, 1] [H, W, 3], or PIL) scaled to fit a cell x cell square, centred on white."""
  if not isinstance(image, Image.Image):
    image = Image.fromarray(_as_uint8(np.asarray(image)[None])[0])
  image = image.convert('RGB')
  scale = cell / max(image.size)
  resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.NEAREST if scale >= 2 else Image.BICUBIC)
  canvas = Image.new('RGB', (cell, cell), 'white')
  canvas.paste(resized, ((cell - resized.width) // 2, (cell - resized.height) // 2))
  return canvas


def write_grid(path: str | os.PathLike, conditions: Sequence[np.ndarray | Image.Image], instructions: Sequence[str],
               outputs: Sequence[np.ndarray | Image.Image], cell: int = 192) -> None:
  """One row per item: condition | instruction (rendered text, two cells wide; its lines wrapped, what does not fit
  cut) | output, each image scaled into a cell x cell square (pixels), as one PNG."""
  if not len(conditions) == len(instructions) == len(outputs) > 0:
    raise ValueError(f'write_grid needs as many conditions ({len(conditions)}), instructions ({len(instructions)}) '
                     f'and outputs ({len(outputs)}), at least one.')
  font_size = max(10, cell // 12)
  font = ImageFont.load_default(font_size)
  chars_per_line = max(8, int(2 * cell / (0.6 * font_size)))
  grid = Image.new('RGB', (4 * cell, len(outputs) * cell), 'white')
  draw = ImageDraw.Draw(grid)
  for row, (condition, instruction, output) in enumerate(zip(conditions, instructions, outputs)):
    top = row * cell
    grid.paste(_fit(condition, cell), (0, top))
    wrapped = [line for paragraph in instruction.splitlines() for line in textwrap.wrap(paragraph, chars_per_line)]
    lines = wrapped[:max(1, math.floor(cell / (1.2 * font_size)))]
    draw.multiline_text((cell + font_size // 2, top + font_size // 2), '\n'.join(lines), fill='black', font=font)
    grid.paste(_fit(output, cell), (3 * cell, top))
  grid.save(path)
