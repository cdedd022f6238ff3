"""Reading and writing the weight files of an HF model directory: `model.safetensors`, or shards listed in
`model.safetensors.index.json` (diffusers: `diffusion_pytorch_model.*`), and its JSON files. Pickle checkpoints
are refused: unpickling runs arbitrary code.

A file that is there but cannot be read (empty, truncated, not safetensors, a pickle, JSON that does not parse,
an index that disagrees with its shards) raises WeightsFileError naming the file (as a shard of its index where it
is one) and the problem.
"""
import json
import math
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from mmjax.weights.source import WeightsFileError, preview

HF_BASENAME, DIFFUSERS_BASENAME = 'model', 'diffusion_pytorch_model'
SINGLE_FILE = f'{HF_BASENAME}.safetensors'
INDEX_FILE = f'{HF_BASENAME}.safetensors.index.json'
PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.ckpt', '.pkl')
# How torch.save output starts: a zip archive (torch >= 1.6) or a pickle protocol 2+ opcode.
_PICKLE_MAGIC = (b'PK\x03\x04', b'\x80\x02', b'\x80\x03', b'\x80\x04', b'\x80\x05')
_REFUSED = 'pickle checkpoints are refused because loading them can run arbitrary code; convert them to safetensors'


class WeightFiles(NamedTuple):
  """The safetensors files of a checkpoint and, when it is sharded, its index and the index's weight_map
  (tensor name -> shard file name)."""
  files: list[Path]
  index: Path | None = None
  weight_map: Mapping[str, str] | None = None


def read_json_object(path: Path) -> dict[str, Any]:
  """The JSON object in `path`; WeightsFileError naming the file (and the line and column) when it is empty, does
  not parse or holds something other than an object."""
  text = path.read_text()
  if not text.strip():
    raise WeightsFileError(f'{path} is empty; it should hold a JSON object.')
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise WeightsFileError(f'{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.') from None
  if not isinstance(value, dict):
    raise WeightsFileError(f'{path} holds a JSON {type(value).__name__}; it should hold a JSON object.')
  return value


def weight_files(directory: Path) -> WeightFiles:
  """The safetensors files holding the weights (the shards of the index when there is one).

  Raises FileNotFoundError when there are none (naming pickle files found instead) or a listed shard is absent;
  WeightsFileError when the index does not parse, has no weight_map or names pickle files.
  """
  for base in (HF_BASENAME, DIFFUSERS_BASENAME):
    index = directory / f'{base}.safetensors.index.json'
    if index.is_file():
      weight_map = read_json_object(index).get('weight_map')
      if not weight_map or not isinstance(weight_map, dict) or not all(
          isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise WeightsFileError(f'{index} has no "weight_map" object mapping tensor names to shard file names.')
      names = list(dict.fromkeys(weight_map.values()))
      pickles = [name for name in names if Path(name).suffix in PICKLE_SUFFIXES]
      if pickles:
        raise WeightsFileError(f'{index} lists pickle files {pickles} as shards; {_REFUSED} first.')
      absent = [name for name in names if not (directory / name).is_file()]
      if absent:
        raise FileNotFoundError(f'{index} lists shards that do not exist: {absent}.')
      return WeightFiles([directory / name for name in names], index, weight_map)
    if (directory / f'{base}.safetensors').is_file():
      return WeightFiles([directory / f'{base}.safetensors'])
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


def stored_tensors(weights: WeightFiles) -> dict[str, StoredTensor]:
  """Every tensor name in the files -> StoredTensor, read from the headers only.

  Raises WeightsFileError naming the file (and shard) that cannot be read, a tensor stored twice, or the index
  entries whose shard does not hold their tensor.
  """
  where: dict[str, StoredTensor] = {}
  for file in weights.files:
    with _open(file, weights) as f:
      for name in f.keys():
        if name in where:
          raise WeightsFileError(f'tensor {name!r} is stored in both {where[name].file} and {file}.')
        where[name] = StoredTensor(file, tuple(f.get_slice(name).get_shape()))
  if weights.index is not None:
    stray = [f'{name} (listed in {shard}, ' + (f'stored in {where[name].file.name})' if name in where else
                                               'stored in no shard)')
             for name, shard in weights.weight_map.items()
             if name not in where or where[name].file != weights.index.parent / shard]
    if stray:
      raise WeightsFileError(f'{weights.index} lists tensors that their shards do not hold: {preview(stray)}; '
                             'the index and its shards come from different saves.')
  return where


def read_tensors(names: Mapping[str, Path]) -> Iterator[tuple[str, np.ndarray]]:
  """(name, array) for each of `names` (name -> its file), one at a time, each file opened once; bfloat16 comes
  back as ml_dtypes.bfloat16."""
  by_file: dict[Path, list[str]] = {}
  for name, file in names.items():
    by_file.setdefault(file, []).append(name)
  for file, in_file in by_file.items():
    with _open(file) as f:
      for name in in_file:
        yield name, f.get_tensor(name)


def _open(file: Path, weights: WeightFiles | None = None) -> Any:
  """safe_open(file) (a context manager); WeightsFileError naming the file (as a shard of its index) and the
  problem when its header cannot be read."""
  try:
    return safe_open(file, framework='numpy')
  except SafetensorError as e:
    shard = ''
    if weights is not None and weights.index is not None:
      shard = f' (one of the {len(weights.files)} shards of {weights.index.name})'
    raise WeightsFileError(f'{file}{shard} {_why_unreadable(file, e)}') from None


def _why_unreadable(file: Path, error: SafetensorError) -> str:
  """What is wrong with a file that safetensors cannot open, from its size and first bytes (the safetensors
  layout: an 8-byte little-endian header length, a JSON header, then the tensor data its offsets cover)."""
  size = file.stat().st_size
  if size == 0:
    return 'is empty (0 bytes): an interrupted download or copy; fetch it again.'
  with file.open('rb') as f:
    start = f.read(8)
    if start.startswith(_PICKLE_MAGIC):
      return f'is a pickle (torch.save) file, not safetensors; {_REFUSED}.'
    if len(start) < 8:
      return f'is truncated: {size} bytes, less than a safetensors header; fetch it again.'
    (header_size,) = struct.unpack('<Q', start)
    header = f.read(min(header_size, size))
  if not header.startswith(b'{'):
    return f'is not a safetensors file (safetensors: {error}).'
  if 8 + header_size > size:
    return f'is truncated: it holds {size} bytes, its header alone needs {8 + header_size}; fetch it again.'
  try:
    offsets = [entry['data_offsets'][1] for key, entry in json.loads(header).items() if key != '__metadata__']
  except (ValueError, KeyError, IndexError, TypeError, AttributeError):
    return f'has a damaged header (safetensors: {error}).'
  needed = 8 + header_size + max(offsets, default=0)
  if size < needed:
    return f'is truncated: it holds {size} of the {needed} bytes its header describes; fetch it again.'
  if size > needed:
    return f'has {size - needed} bytes past the tensor data its header describes; fetch it again.'
  return f'is damaged (safetensors: {error}).'


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
