"""IPAdapter-Instruct training data: (condition image, instruction, prompt, target image) records in a JSONL file,
the per-task instruction pools, the Grain source and transform that feed the trainer, and the synthetic smoke set.

Layout: one JSON object per line of a .jsonl file, image paths relative to the file's folder:

  {"condition": "images/0001_c.png", "target": "images/0001_t.png", "prompt": "a house by the sea",
   "task": "style", "instruction": "paint it like this", "caption": "an oil painting of a harbour"}

condition, target, prompt and task are required; task is one of TASKS. instruction (optional) fixes the record's
instruction; without it every epoch draws one from the task's pool (`INSTRUCTIONS`, or config.data.instructions:
a JSON file {task: [instruction, ...]}). caption (optional) describes the condition image (evaluation's CLIP-T /
CLIP-S). For replication ("everything") the condition is the target itself.

Condition dropout (an assumption: the paper states no rates; these are the IP-Adapter recipe's): each example
independently drops its text (prompt -> ""), its image (condition pixels -> the all-zeros normalised tensor, and
the instruction -> "", as in the pipeline's unconditional branch) or both, each with probability 5%.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import grain
import numpy as np
from absl import logging
from PIL import Image, ImageDraw

from experiments.ipadapter_instruct.pipeline import preprocess
from mmjax.data import DigitsSource
from mmjax.data.image_check import ImageReadError
from mmjax.data.image_folder import read_image_8bit

# The tasks the adapter knows (the paper's five, and the queries' colour, pose and beta fore-/background), with
# the words that name each: an instruction of one task that names another is dropped (the paper's rule).
TASK_KEYWORDS: dict[str, tuple[str, ...]] = {
    'everything': ('everything',), 'style': ('style',), 'colour': ('colour', 'color'), 'object': ('object',),
    'composition': ('composition',), 'pose': ('pose',), 'face': ('face',), 'foreground': ('foreground',),
    'background': ('background',)}
TASKS = tuple(TASK_KEYWORDS)
# The query of each task (pipeline.QUERIES), the canonical instruction at inference.
TASK_QUERIES = {'everything': 'use everything from the image', **{t: f'use the {t}' for t in TASKS[1:]}}
# Our instruction pools, written in the spirit of the paper's ChatGPT prompt ("... do not use the words
# composition, style, ..."): the query first, then paraphrases that name no other task.
INSTRUCTIONS: dict[str, list[str]] = {
    'everything': ['use everything from the image', 'copy the image exactly', 'reproduce this picture as it is',
                   'make the same image again', 'keep all of it', 'recreate the whole picture'],
    'style': ['use the style', 'paint it in the same artistic manner', 'match the look and the brush strokes',
              'keep the aesthetic of this picture', 'render it with the same artistic technique'],
    'colour': ['use the colour', 'use the same colours', 'keep the palette of the image',
               'match the hues of this picture', 'paint it with these tones'],
    'object': ['use the object', 'put this thing in a new scene', 'keep the subject and change the rest',
               'show this item somewhere else', 'take the main subject'],
    'composition': ['use the composition', 'keep the layout of the scene', 'arrange things the same way',
                    'follow the spatial arrangement', 'place the parts where they are here'],
    'pose': ['use the pose', 'copy the body position', 'keep the same posture', 'match how the figure stands'],
    'face': ['use the face', "keep this person's identity", 'make the same person', 'keep the facial features'],
    'foreground': ['use the foreground', 'keep what is in front', 'use the front part of the picture'],
    'background': ['use the background', 'keep the scenery behind', 'use the setting behind the subject'],
}
_REQUIRED = ('condition', 'target', 'prompt', 'task')
_OPTIONAL = ('instruction', 'caption')


class Record(NamedTuple):
  """One training or evaluation example. condition / target: absolute image paths; instruction: None draws one
  from the task's pool; caption: the condition image's description or None; line: its 1-based line in `where`."""
  condition: Path
  target: Path
  prompt: str
  task: str
  instruction: str | None = None
  caption: str | None = None
  where: str = ''
  line: int = 0

  @property
  def at(self) -> str:
    """'file.jsonl line N', for error messages."""
    return f'{self.where} line {self.line}'


def read_records(jsonl: str | os.PathLike) -> list[Record]:
  """The records of a JSONL file (see the module docstring), image paths resolved against its folder.

  Raises ValueError naming the file and line of the first bad record (not JSON, not an object, a missing or
  unknown key, a value of the wrong type, an unknown task), FileNotFoundError for an absent file or image.
  """
  path = Path(jsonl)
  if not path.is_file():
    raise FileNotFoundError(f'{path}: no such JSONL file of IPAdapter-Instruct records.')
  records = []
  for number, text in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
    if text.strip():
      records.append(_record(_parse(text, path, number), path, number))
  if not records:
    raise ValueError(f'{path}: holds no records.')
  return records


def _parse(text: str, path: Path, number: int) -> dict[str, Any]:
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} line {number}: not JSON ({e.msg}).') from None
  if not isinstance(value, dict):
    raise ValueError(f'{path} line {number}: expected a JSON object, got {type(value).__name__}.')
  return value


def _record(value: dict[str, Any], path: Path, number: int) -> Record:
  at = f'{path} line {number}'
  missing = [k for k in _REQUIRED if k not in value]
  unknown = sorted(set(value) - set(_REQUIRED) - set(_OPTIONAL))
  if missing or unknown:
    raise ValueError(f'{at}: ' + '; '.join(
        ([f'missing {missing}'] if missing else []) + ([f'unknown keys {unknown}'] if unknown else []))
        + f' (keys: {", ".join(_REQUIRED)}, optionally {", ".join(_OPTIONAL)}).')
  for key in (*_REQUIRED, *_OPTIONAL):
    if key in value and not (isinstance(value[key], str) or (key in _OPTIONAL and value[key] is None)):
      raise ValueError(f'{at}: {key} must be a string, got {value[key]!r}.')
  if value['task'] not in TASKS:
    raise ValueError(f'{at}: unknown task {value["task"]!r}; the tasks are {", ".join(TASKS)}.')
  images = {}
  for key in ('condition', 'target'):
    image = (path.parent / value[key]).resolve()
    if not image.is_file():
      raise FileNotFoundError(f'{at}: the {key} image {image} does not exist.')
    images[key] = image
  return Record(images['condition'], images['target'], value['prompt'], value['task'],
                value.get('instruction') or None, value.get('caption') or None, str(path), number)


def write_records(jsonl: str | os.PathLike, records: Sequence[Record]) -> Path:
  """Writes records as a JSONL file, image paths relative to its folder (the layout `read_records` reads)."""
  path = Path(jsonl)
  lines = []
  for r in records:
    value = {'condition': os.path.relpath(r.condition, path.parent), 'target': os.path.relpath(r.target, path.parent),
             'prompt': r.prompt, 'task': r.task}
    value.update({k: v for k, v in (('instruction', r.instruction), ('caption', r.caption)) if v is not None})
    lines.append(json.dumps(value))
  path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
  return path


def names_other_task(instruction: str, task: str) -> str | None:
  """The first task other than `task` whose keyword `instruction` contains (as a word, plural included)."""
  for other, words in TASK_KEYWORDS.items():
    if other != task and re.search(r'\b(?:' + '|'.join(words) + r')s?\b', instruction, re.IGNORECASE):
      return other
  return None


def filter_instructions(pools: Mapping[str, Sequence[str]]) -> tuple[dict[str, list[str]], int]:
  """(pools without the instructions that name another task's keyword, how many were dropped)."""
  kept, dropped = {}, 0
  for task, pool in pools.items():
    kept[task] = [text for text in pool if names_other_task(text, task) is None]
    dropped += len(pool) - len(kept[task])
  return kept, dropped


def load_instructions(path: str | os.PathLike | None) -> dict[str, list[str]]:
  """The instruction pools: INSTRUCTIONS, or a JSON file {task: [instruction, ...]} filtered by
  `filter_instructions` (the count dropped is logged). ValueError naming the file for an unknown task, a pool that
  is not a list of strings, or a pool left empty."""
  if not path:
    return {task: list(pool) for task, pool in INSTRUCTIONS.items()}
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'config.data.instructions: no such file {path}.')
  try:
    pools = json.loads(path.read_text(encoding='utf-8'))
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not JSON ({e.msg}).') from None
  if not isinstance(pools, dict):
    raise ValueError(f'{path}: expected a JSON object {{task: [instruction, ...]}}.')
  for task, pool in pools.items():
    if task not in TASKS:
      raise ValueError(f'{path}: unknown task {task!r}; the tasks are {", ".join(TASKS)}.')
    if not isinstance(pool, list) or not all(isinstance(t, str) and t.strip() for t in pool):
      raise ValueError(f'{path}: the pool of {task!r} must be a list of non-empty strings.')
  kept, dropped = filter_instructions(pools)
  logging.info('%s: dropped %d instructions that name another task', path, dropped)
  empty = [task for task, pool in kept.items() if not pool]
  if empty:
    raise ValueError(f'{path}: no instruction of {empty} is left once those naming another task are dropped.')
  return kept


class InstructSource:
  """Random-access examples of records: {'target': float32 [R, R, 3] in [-1, 1] (shortest side resized to R,
  centre-cropped), 'condition': float32 [S, S, 3] (CLIP-preprocessed, S = the image encoder's size), 'prompt',
  'task' and 'instruction' (strings; '' = draw from the pool)}. An image that does not decode raises
  ImageReadError naming the JSONL line and the file."""

  def __init__(self, records: Sequence[Record], *, resolution: int, condition_size: int):
    self.records = list(records)
    self.resolution, self.condition_size = resolution, condition_size

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    r = self.records[index]
    condition, target = (_read(r, key) for key in ('condition', 'target'))
    return {'target': center_crop(target, self.resolution),
            'condition': preprocess(condition, self.condition_size)[0],
            'prompt': np.asarray(r.prompt), 'task': np.asarray(r.task), 'instruction': np.asarray(r.instruction or '')}

  def __repr__(self) -> str:
    return f'InstructSource({len(self)} records at {self.resolution}px)'


def _read(record: Record, key: str) -> Image.Image:
  try:
    return read_image_8bit(getattr(record, key))
  except ImageReadError as e:
    raise ImageReadError(f'{record.at}: {e}', e.paths) from None


def center_crop(image: Image.Image, size: int) -> np.ndarray:
  """An RGB image resized (bilinear) so its shorter side is `size`, centre-cropped: float32 [size, size, 3] in
  [-1, 1]."""
  w, h = image.size
  scale = size / min(w, h)
  image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
  left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
  pixels = np.asarray(image.crop((left, top, left + size, top + size)), np.float32)
  return pixels / 127.5 - 1.0


class TextAndDropout(grain.transforms.RandomMap):
  """Draws each example's instruction (when its record has none) and its condition dropout, then tokenizes:
  -> {'target', 'condition', 'instruction_ids' int32 [L], 'prompt_ids' int32 [L]}. Grain seeds `rng` from the
  pipeline seed and the example's stream position, so the draws differ by epoch and repeat on resume."""

  def __init__(self, tokenizer: Callable[[Sequence[str]], np.ndarray], pools: Mapping[str, Sequence[str]], *,
               drop_text: float, drop_image: float, drop_both: float):
    if min(drop_text, drop_image, drop_both) < 0 or drop_text + drop_image + drop_both > 1:
      raise ValueError(f'config.data.drop_text/drop_image/drop_both ({drop_text}, {drop_image}, {drop_both}) must '
                       'be >= 0 and sum to at most 1.')
    self.tokenizer, self.pools = tokenizer, {task: list(pool) for task, pool in pools.items()}
    self.drop_text, self.drop_image, self.drop_both = drop_text, drop_image, drop_both

  def random_map(self, example: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    task, instruction = str(example['task']), str(example['instruction'])
    if not instruction:
      pool = self.pools.get(task)
      if not pool:
        raise ValueError(f'no instruction pool for task {task!r} (config.data.instructions has '
                         f'{sorted(self.pools)}), and its record gives no instruction.')
      instruction = pool[rng.integers(len(pool))]
    u = rng.random()
    drop_image = u < self.drop_image or self.drop_image + self.drop_text <= u < self.drop_image + self.drop_text + \
        self.drop_both
    drop_text = self.drop_image <= u < self.drop_image + self.drop_text + self.drop_both
    condition = np.zeros_like(example['condition']) if drop_image else example['condition']
    ids = self.tokenizer(['' if drop_image else instruction, '' if drop_text else str(example['prompt'])])
    return {'target': example['target'], 'condition': condition, 'instruction_ids': ids[0].astype(np.int32),
            'prompt_ids': ids[1].astype(np.int32)}


# ---- the synthetic smoke tasks: scikit-learn digits and PIL shapes, 32 x 32 ----

SMOKE_TASKS = ('colour', 'object', 'everything')
SMOKE_SIZE = 32
_PALETTE = {'red': (220, 40, 40), 'green': (40, 170, 60), 'blue': (40, 80, 220), 'yellow': (235, 205, 40),
            'purple': (150, 60, 190), 'orange': (240, 140, 30)}
_PAPER, _INK = (245, 245, 245), (25, 25, 25)
_SHAPES = ('circle', 'square', 'triangle')
_NUMBERS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')


def _digit(mask: np.ndarray, ink: tuple[int, ...], paper: tuple[int, ...]) -> Image.Image:
  """An 8 x 8 digit mask in [0, 1] drawn as `ink` on `paper`, 24 px high, centred on a SMOKE_SIZE canvas."""
  big = np.asarray(Image.fromarray(np.uint8(mask * 255)).resize((24, 24), Image.Resampling.BILINEAR)) / 255.0
  alpha = np.zeros((SMOKE_SIZE, SMOKE_SIZE, 1))
  alpha[4:28, 4:28, 0] = big
  pixels = alpha * np.asarray(ink) + (1 - alpha) * np.asarray(paper)
  return Image.fromarray(np.uint8(np.round(pixels)))


def _shape(kind: str, ink: tuple[int, ...], paper: tuple[int, ...]) -> Image.Image:
  image = Image.new('RGB', (SMOKE_SIZE, SMOKE_SIZE), paper)
  draw = ImageDraw.Draw(image)
  box = (6, 6, SMOKE_SIZE - 7, SMOKE_SIZE - 7)
  if kind == 'circle':
    draw.ellipse(box, fill=ink)
  elif kind == 'square':
    draw.rectangle(box, fill=ink)
  else:
    draw.polygon([(SMOKE_SIZE // 2, 5), (SMOKE_SIZE - 6, SMOKE_SIZE - 7), (5, SMOKE_SIZE - 7)], fill=ink)
  return image


def _smoke_example(task: str, mask: np.ndarray, label: int, rng: np.random.Generator) -> tuple[
    Image.Image, Image.Image, str, str]:
  """(condition, target, prompt, caption) of one synthetic example of `task`."""
  a, b = (list(_PALETTE)[i] for i in rng.choice(len(_PALETTE), 2, replace=False))
  number = _NUMBERS[label]
  if task == 'colour':  # the target is another drawing in the condition's colour
    kind = _SHAPES[rng.integers(len(_SHAPES))]
    return (_digit(mask, _PALETTE[a], _PAPER), _shape(kind, _PALETTE[a], _PAPER), f'a {kind}',
            f'a {a} {number}')
  if task == 'object':  # the condition's digit on another background
    return (_digit(mask, _INK, _PALETTE[a]), _digit(mask, _INK, _PALETTE[b]), f'on a {b} background',
            f'a {number} on a {a} background')
  caption = f'a {a} {number} on a {b} background'
  condition = _digit(mask, _PALETTE[a], _PALETTE[b])
  return condition, condition, caption, caption


def _write_split(directory: Path, split: str, per_task: int, seed: int) -> Path:
  digits = DigitsSource('train' if split == 'train' else 'test')
  rng = np.random.default_rng([seed, split == 'val'])
  records = []
  for task in SMOKE_TASKS:
    for i in rng.choice(len(digits), per_task, replace=per_task > len(digits)):
      example = digits[int(i)]
      condition, target, prompt, caption = _smoke_example(task, example['image'][..., 0], int(example['label']), rng)
      stem = directory / 'images' / split / f'{task}_{len(records):05d}'
      stem.parent.mkdir(parents=True, exist_ok=True)
      condition.save(f'{stem}_c.png')
      target.save(f'{stem}_t.png')
      records.append(Record(Path(f'{stem}_c.png'), Path(f'{stem}_t.png'), prompt, task, caption=caption))
  return write_records(directory / f'{split}.jsonl', records)


def write_smoke_dataset(directory: str | os.PathLike, *, per_task: int, seed: int,
                        val_per_task: int | None = None) -> tuple[Path, Path]:
  """Writes the synthetic tasks at 32 x 32 into `directory` (images/, train.jsonl, val.jsonl) and returns the
  two JSONL paths: "use the colour" (a digit in a colour -> a circle, square or triangle in that colour), "use the
  object" (a digit on one background -> the same digit on another) and "use everything" (target = condition).
  Train draws from scikit-learn's train digits, val (val_per_task each, default max(2, per_task // 4)) from its
  test digits. Records carry no instruction (drawn from INSTRUCTIONS) and the condition's caption."""
  directory = Path(directory)
  train = _write_split(directory, 'train', per_task, seed)
  val = _write_split(directory, 'val', val_per_task or max(2, per_task // 4), seed)
  return train, val


def smoke_dataset(cache_dir: str, *, per_task: int, seed: int) -> tuple[Path, Path]:
  """(train, val) JSONL of the smoke set, written once into `cache_dir` (default: $XDG_CACHE_HOME or ~/.cache,
  /mmjax/ipadapter_instruct) and reused; written whole in a scratch folder and renamed, so concurrent runs
  never see half of it."""
  root = Path(cache_dir or Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'mmjax' /
              'ipadapter_instruct').expanduser()
  target = root / f'smoke_n{per_task}_seed{seed}'
  if not (target / 'val.jsonl').is_file():
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=root, prefix=f'.{target.name}.'))
    write_smoke_dataset(scratch, per_task=per_task, seed=seed)
    try:
      os.rename(scratch, target)
    except OSError:  # another run published it first
      shutil.rmtree(scratch, ignore_errors=True)
      if not (target / 'val.jsonl').is_file():
        raise
  return target / 'train.jsonl', target / 'val.jsonl'

