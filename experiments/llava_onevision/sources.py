"""The training and evaluation sources of a run: LLaVA JSON, a YAML mixture, or the generated shapes set (smoke)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import ml_collections
import numpy as np

from mmjax.data import LlavaJsonSource, check_images, load_mixture, write_llava_dataset
from mmjax.data.llava_json import load_image
from mmjax.data.mixture import MixtureSource
from mmjax.data.shapes import LETTERS, caption, make_examples, random_scene

FORMATS = {'captions': 'captions', 'train': 'answers', 'eval': 'choices'}  # cache names say what a split holds


def _write_dataset(root: Path, entries_and_images) -> Path:
  (root / 'images').mkdir(parents=True, exist_ok=True)
  entries = []
  for entry, images in entries_and_images:
    paths = []
    for k, image in enumerate(images):
      paths.append(f'images/{entry["id"]}_{k}.png')
      image.save(root / paths[-1])
    entries.append({**entry, 'image': paths[0] if len(paths) == 1 else paths})
  path = root / 'data.json'
  path.write_text(json.dumps(entries, indent=1))
  return path


def write_caption_dataset(root: str | os.PathLike, n: int, seed: int, *, size: int) -> Path:
  """n single-image captioning conversations of shapes scenes (stage-1 style: "Describe the image." -> the
  scene's caption) as root/data.json + root/images/; returns the JSON's path."""
  rng = np.random.default_rng(seed)

  def entries():
    for i in range(n):
      image, spec = random_scene(rng, size=size)
      yield {'id': f'caption_{seed}_{i:06d}', 'conversations': [
          {'from': 'human', 'value': '<image>\nDescribe the image.'},
          {'from': 'gpt', 'value': caption(spec)}]}, [image]

  return _write_dataset(Path(root), entries())


def write_qa_dataset(root: str | os.PathLike, n: int, seed: int, *, size: int, multi_image_fraction: float) -> Path:
  """The questions of `make_examples` (single- and multi-image) answered in words rather than by option letter:
  "<image>\nWhat colour is the square?" -> "blue"; root/data.json + root/images/."""
  examples = make_examples(n, seed, size=size, multi_image_fraction=multi_image_fraction)
  return _write_dataset(Path(root), (({'id': ex['id'], 'conversations': [
      {'from': 'human', 'value': '<image>\n' * len(ex['images']) + ex['question']},
      {'from': 'gpt', 'value': ex['options'][LETTERS.index(ex['answer'])]}]}, ex['images']) for ex in examples))


def shapes_cache(shapes: ml_collections.ConfigDict) -> Path:
  """The folder of the generated shapes sets: shapes.cache_dir, else the user's own cache, $XDG_CACHE_HOME/mmjax/shapes
  or ~/.cache/mmjax/shapes (never a fixed folder under /tmp, which every user of a machine shares)."""
  if shapes.get('cache_dir'):
    return Path(shapes.cache_dir).expanduser()
  return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'mmjax' / 'shapes'


def shapes_json(shapes: ml_collections.ConfigDict, split: str) -> Path:
  """data.json of a generated shapes split, written once into `shapes_cache(shapes)` and reused: 'captions'
  (captioning), 'train' (questions answered in words) or 'eval' (the same kinds of questions, another seed, as
  multiple choice with option letters)."""
  n, seed = int(shapes[split]), int(shapes.seed) + {'train': 0, 'eval': 1, 'captions': 2}[split]
  name = f'{split}_{FORMATS[split]}_n{n}_seed{seed}_{shapes.image_size}px_multi{shapes.multi_image_fraction}'
  root = shapes_cache(shapes) / name
  if not (root / 'data.json').is_file():
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=root.parent, prefix=f'.{name}.'))
    if split == 'captions':
      write_caption_dataset(scratch, n, seed, size=int(shapes.image_size))
    elif split == 'train':
      write_qa_dataset(scratch, n, seed, size=int(shapes.image_size),
                       multi_image_fraction=float(shapes.multi_image_fraction))
    else:
      write_llava_dataset(scratch, n, seed, size=int(shapes.image_size),
                          multi_image_fraction=float(shapes.multi_image_fraction))
    try:
      os.rename(scratch, root)  # atomic: concurrent runs either publish this copy or find another's
    except OSError:
      shutil.rmtree(scratch, ignore_errors=True)
      if not (root / 'data.json').is_file():
        raise
  return root / 'data.json'


def shapes_mixture(shapes: ml_collections.ConfigDict) -> Path:
  """A YAML mixture of the generated captions (when shapes.captions > 0) and question-answer train split."""
  jsons = [shapes_json(shapes, split) for split in ('captions', 'train') if int(shapes[split]) > 0]
  path = jsons[0].parent.parent / ('+'.join(p.parent.name for p in jsons) + '.yaml')
  if not path.is_file():
    lines = ['datasets:'] + [f'  - json_path: {p}\n    sampling_strategy: all' for p in jsons]
    scratch = path.with_name(f'.{path.name}.{os.getpid()}')
    scratch.write_text('\n'.join(lines) + '\n')
    os.replace(scratch, path)
  return path


def train_source(config: ml_collections.ConfigDict) -> LlavaJsonSource | MixtureSource:
  """data.mixture, data.json, or (variant=smoke with neither) the generated shapes set's train split."""
  d = config.data
  if d.json and d.mixture:
    raise ValueError(f'set one of config.data.json ({d.json}) and config.data.mixture ({d.mixture}), not both')
  root = d.image_root or None
  if d.mixture:
    return load_mixture(d.mixture, config.seed, image_root=root, max_frames=d.max_frames)
  if d.json:
    return LlavaJsonSource(d.json, root, max_frames=d.max_frames)
  if config.variant == 'smoke':
    return load_mixture(shapes_mixture(d.shapes), config.seed)
  raise ValueError('config.data.json or config.data.mixture must name the training data')


def eval_source(config: ml_collections.ConfigDict) -> LlavaJsonSource | None:
  """eval.json, the shapes set's eval split (variant=smoke on the shapes set), or None (no evaluator)."""
  if config.eval.json:
    return LlavaJsonSource(config.eval.json, config.eval.image_root or None, max_frames=config.data.max_frames)
  if config.variant == 'smoke' and not (config.data.json or config.data.mixture):
    return LlavaJsonSource(shapes_json(config.data.shapes, 'eval'))
  return None


def verify_images(*data: LlavaJsonSource | MixtureSource | None) -> None:
  """Decodes every image (and video frame image) of the given sources' selected examples before the run starts, in
  parallel; raises one ImageReadError naming every file that is missing or does not decode."""
  files, names = [], []
  for source in data:
    if isinstance(source, MixtureSource):
      files += [f for part in source.parts for f in part.source.image_files(part.indices)]
      names += [str(part.json_path) for part in source.parts]
    elif source is not None:
      files += source.image_files()
      names.append(str(source.path))
  check_images(files, what=f'the images of {", ".join(dict.fromkeys(names))}', decode=load_image)


def conversation_texts(source: LlavaJsonSource | MixtureSource) -> list[str]:
  """Every turn's text of a source's JSON files (for building the smoke tokenizer's vocabulary)."""
  paths = [part.json_path for part in source.parts] if isinstance(source, MixtureSource) else [source.path]
  return [turn['value'] for path in paths for entry in json.loads(Path(path).read_text())
          for turn in entry['conversations']]
