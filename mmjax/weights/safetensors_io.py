"""Reading and writing the weight files of an HF model directory: `model.safetensors`, or shards listed in
`model.safetensors.index.json` (diffusers: `diffusion_pytorch_model.*`). Pickle checkpoints are refused:
unpickling runs arbitrary code.
"""
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

HF_BASENAME, DIFFUSERS_BASENAME = 'model', 'diffusion_pytorch_model'
SINGLE_FILE = f'{HF_BASENAME}.safetensors'
INDEX_FILE = f'{HF_BASENAME}.safetensors.index.json'
PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.ckpt', '.pkl')


def weight_files(directory: Path) -> list[Path]:
  """The safetensors files holding the weights (the shards of the index when there is one).

  Raises FileNotFoundError when there are none (naming pickle files found instead) or a listed shard is absent.
  """
  for base in (HF_BASENAME, DIFFUSERS_BASENAME):
    index = directory / f'{base}.safetensors.index.json'
    if index.is_file():
      weight_map = json.loads(index.read_text())['weight_map']
      files = [directory / name for name in dict.fromkeys(weight_map.values())]
      absent = [f.name for f in files if not f.is_file()]
      if absent:
        raise FileNotFoundError(f'{index} lists shards that do not exist: {absent}.')
      return files
    if (directory / f'{base}.safetensors').is_file():
      return [directory / f'{base}.safetensors']
  pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
  if pickles:
    raise FileNotFoundError(f'{directory} holds only pickle checkpoints {pickles}; they are refused because '
                            'loading them can run arbitrary code. Convert them to safetensors first.')
  raise FileNotFoundError(f'{directory} has neither {SINGLE_FILE} nor {INDEX_FILE} (nor their diffusers '
                          f'{DIFFUSERS_BASENAME}.* forms).')


class StoredTensor(NamedTuple):
  """Where a tensor is stored and its shape (read from the file header, without loading the data)."""
  file: Path
  shape: tuple[int, ...]


def stored_tensors(files: Sequence[Path]) -> dict[str, StoredTensor]:
  """Every tensor name in `files` -> StoredTensor; ValueError if a name is stored twice."""
  where: dict[str, StoredTensor] = {}
  for file in files:
    with safe_open(file, framework='numpy') as f:
      for name in f.keys():
        if name in where:
          raise ValueError(f'tensor {name!r} is stored in both {where[name].file.name} and {file.name}.')
        where[name] = StoredTensor(file, tuple(f.get_slice(name).get_shape()))
  return where


def read_tensors(names: Mapping[str, Path]) -> Iterator[tuple[str, np.ndarray]]:
  """(name, array) for each of `names` (name -> its file), one at a time, each file opened once; bfloat16 comes
  back as ml_dtypes.bfloat16."""
  by_file: dict[Path, list[str]] = {}
  for name, file in names.items():
    by_file.setdefault(file, []).append(name)
  for file, in_file in by_file.items():
    with safe_open(file, framework='numpy') as f:
      for name in in_file:
        yield name, f.get_tensor(name)


def write_tensors(directory: Path, entries: Sequence[tuple[str, int, Callable[[], np.ndarray]]],
                  max_shard_bytes: int, base: str = HF_BASENAME) -> None:
  """Writes (name, nbytes, make_array) entries as one file or as shards of at most max_shard_bytes plus an index,
  named after `base` (HF_BASENAME or DIFFUSERS_BASENAME).

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
  single, index = directory / f'{base}.safetensors', directory / f'{base}.safetensors.index.json'
  for stale in [single, index, *directory.glob(f'{base}-*-of-*.safetensors')]:
    stale.unlink(missing_ok=True)
  names = [single.name] if len(shards) == 1 else [f'{base}-{i + 1:05d}-of-{len(shards):05d}.safetensors'
                                                  for i in range(len(shards))]
  for name, shard in zip(names, shards):
    save_file({key: np.ascontiguousarray(make()) for key, _, make in shard}, directory / name,
              metadata={'format': 'pt'})
  if len(shards) > 1:
    contents = {'metadata': {'total_size': sum(e[1] for e in entries)},
                'weight_map': {key: name for name, shard in zip(names, shards) for key, _, _ in shard}}
    index.write_text(json.dumps(contents, indent=2, sort_keys=True))


def nbytes(shape: Sequence[int], dtype: np.dtype) -> int:
  """Bytes of an array of `shape` and `dtype` (the shard-size unit)."""
  return math.prod(shape) * np.dtype(dtype).itemsize
