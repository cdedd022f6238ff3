"""The files of a model folder beside its weights (tokenizer, processor, chat template, generation config) and the
special token ids of its config.json: what every conversion carries from its source folder so that the exported
folder works with the generation CLI, the benchmarks and transformers.
"""
from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# File names (globs) copied as they are.
ASSET_PATTERNS = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'added_tokens.json',
                  'vocab.json', 'vocab.txt', 'merges.txt', 'tokenizer.model', 'spiece.model',
                  'preprocessor_config.json', 'processor_config.json', 'video_preprocessor_config.json',
                  'chat_template*', 'generation_config.json')
SPECIAL_TOKEN_KEYS = ('bos_token_id', 'eos_token_id', 'pad_token_id')
_NESTED = ('text_config',)  # sub-configs whose special token ids are carried too (multimodal models)


def asset_files(directory: str | Path) -> list[Path]:
  """The asset files present in `directory`, sorted by name."""
  directory = Path(directory)
  found = {path for pattern in ASSET_PATTERNS for path in directory.glob(pattern) if path.is_file()}
  return sorted(found, key=lambda p: p.name)


def copy_assets(source: str | Path, out: str | Path) -> list[str]:
  """Copies the asset files of `source` into `out` (an existing folder); returns their names."""
  copied = []
  for path in asset_files(source):
    if path.resolve() != (Path(out) / path.name).resolve():
      shutil.copy2(path, Path(out) / path.name)
    copied.append(path.name)
  return copied


def with_special_tokens(hf_config: Mapping[str, Any], source_config: Mapping[str, Any]) -> dict[str, Any]:
  """hf_config plus the bos/eos/pad token ids that source_config (a config.json dict) sets, top-level and in its
  text_config."""
  out = dict(hf_config)
  out.update({key: source_config[key] for key in SPECIAL_TOKEN_KEYS if source_config.get(key) is not None})
  for nested in _NESTED:
    if isinstance(out.get(nested), Mapping) and isinstance(source_config.get(nested), Mapping):
      out[nested] = with_special_tokens(out[nested], source_config[nested])
  return out


def require_empty(directory: str | Path, flag: str = 'the target') -> Path:
  """`directory` after checking that it is absent or empty; FileExistsError naming it otherwise."""
  directory = Path(directory)
  if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
    raise FileExistsError(f'{directory} is not empty; convert into a new or empty {flag} directory (nothing in '
                          'it was changed).')
  return directory
