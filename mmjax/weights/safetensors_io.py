"""Reading and writing the weight files of an HF model directory: `model.safetensors`, or shards listed in
`model.safetensors.index.json`. Pickle checkpoints are refused: unpickling runs arbitrary code.
"""
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.ckpt', '.pkl')


def weight_files(directory: Path) -> list[Path]:
  """The safetensors files holding the weights (the shards of the index when there is one).

  Raises FileNotFoundError when there are none (naming pickle files found instead) or a listed shard is absent.
  """
  index = directory / INDEX_FILE
  if index.is_file():
    weight_map = json.loads(index.read_text())['weight_map']
    files = [directory / name for name in dict.fromkeys(weight_map.values())]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
      raise FileNotFoundError(f'{index} lists shards that do not exist: {absent}.')
    return files
  if (directory / SINGLE_FILE).is_file():
    return [directory / SINGLE_FILE]
  pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
  if pickles:
    raise FileNotFoundError(f'{directory} holds only pickle checkpoints {pickles}; they are refused because '
                            'loading them can run arbitrary code. Convert them to safetensors first.')
  raise FileNotFoundError(f'{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}.')


def tensor_names(files: Sequence[Path]) -> dict[str, Path]:
  """Every tensor name in `files` -> its file; ValueError if a name is stored twice."""
  where: dict[str, Path] = {}
  for file in files:
    with safe_open(file, framework='numpy') as f:
      for name in f.keys():
        if name in where:
          raise ValueError(f'tensor {name!r} is stored in both {where[name].name} and {file.name}.')
        where[name] = file
  return where


def iter_tensors(files: Sequence[Path]) -> Iterator[tuple[str, np.ndarray]]:
  """(name, array) for every tensor, one at a time, in file order; bfloat16 comes back as ml_dtypes.bfloat16."""
  for file in files:
    with safe_open(file, framework='numpy') as f:
      for name in f.keys():
        yield name, f.get_tensor(name)


def write_tensors(directory: Path, entries: Sequence[tuple[str, int, Callable[[], np.ndarray]]],
                  max_shard_bytes: int) -> None:
  """Writes (name, nbytes, make_array) entries as one file or as shards of at most max_shard_bytes plus an index.

  Arrays are made one shard at a time. Weight files left from an earlier save in `directory` are removed first,
  since transformers would read a stale `model.safetensors` before an index.
  """
  shards: list[list[tuple[str, int, Callable[[], np.ndarray]]]] = [[]]
  shard_bytes = 0
  for entry in entries:
    if shards[-1] and shard_bytes + entry[1] > max_shard_bytes:
      shards.append([])
      shard_bytes = 0
    shards[-1].append(entry)
    shard_bytes += entry[1]
  for stale in [directory / SINGLE_FILE, directory / INDEX_FILE, *directory.glob('model-*-of-*.safetensors')]:
    stale.unlink(missing_ok=True)
  names = [SINGLE_FILE] if len(shards) == 1 else [f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
                                                  for i in range(len(shards))]
  for name, shard in zip(names, shards):
    save_file({key: np.ascontiguousarray(make()) for key, _, make in shard}, directory / name,
              metadata={'format': 'pt'})
  if len(shards) > 1:
    index = {'metadata': {'total_size': sum(e[1] for e in entries)},
             'weight_map': {key: name for name, shard in zip(names, shards) for key, _, _ in shard}}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))


def nbytes(shape: Sequence[int], dtype: np.dtype) -> int:
  """Bytes of an array of `shape` and `dtype` (the shard-size unit)."""
  return math.prod(shape) * np.dtype(dtype).itemsize
