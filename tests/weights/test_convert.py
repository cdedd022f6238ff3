"""launch.py --mode convert: HF -> orbax -> HF and a training workdir -> HF, carrying the tokenizer, processor and
generation files and the special token ids, and refusing a non-empty target."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from mmjax.train.checkpoint import Checkpointer
from mmjax.weights import from_pretrained, hf_to_orbax, orbax_to_hf
from tests.files import snapshot
from tests.hf_models import qwen2_logits, save_qwen2
from tests.numerics import assert_close_programs
from tests.train.launcher import REPO, launch_env

IDS = np.array([[3, 17, 99, 5, 64, 2]])
TOKEN_IDS = {'bos_token_id': 3, 'eos_token_id': 5, 'pad_token_id': 0}
ASSETS = {'tokenizer.json': '{"version": "1.0", "model": {"type": "BPE"}}', 'tokenizer_config.json': '{"a": 1}',
          'special_tokens_map.json': '{"eos_token": "<e>"}', 'vocab.json': '{"a": 0}', 'merges.txt': '#v\na b\n',
          'generation_config.json': '{"eos_token_id": [5, 6]}', 'chat_template.jinja': '{{ messages }}',
          'preprocessor_config.json': '{"size": 32}'}


def _hf_folder(directory, tied):
  """A tiny Qwen2 HF folder with tokenizer, template and generation files and special token ids."""
  reference = save_qwen2(directory, tied=tied)
  config = json.loads((directory / 'config.json').read_text())
  (directory / 'config.json').write_text(json.dumps({**config, **TOKEN_IDS}))
  for name, text in ASSETS.items():
    (directory / name).write_text(text)
  return reference


def _assert_carried(directory):
  assert {name: (directory / name).read_text() for name in ASSETS} == ASSETS
  config = json.loads((directory / 'config.json').read_text())
  assert {key: config.get(key) for key in TOKEN_IDS} == TOKEN_IDS



def _assert_same_weights(a, b):
  sa, sb = a.state_dict(), b.state_dict()
  assert sa.keys() == sb.keys()
  for k in sa:
    assert torch.equal(sa[k], sb[k]), k


def _convert(*flags):
  proc = subprocess.run([sys.executable, 'launch.py', '--mode=convert', *flags], cwd=REPO, env=launch_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_hf_to_orbax_to_hf_round_trip(tmp_path):
  ref = _hf_folder(tmp_path / 'hf', tied=False)
  _convert(f'--convert_from={tmp_path / "hf"}', f'--convert_to={tmp_path / "orbax"}')
  assert (tmp_path / 'orbax' / 'params').is_dir()
  _assert_carried(tmp_path / 'orbax')
  _convert(f'--convert_from={tmp_path / "orbax"}', f'--convert_to={tmp_path / "back"}')
  _assert_carried(tmp_path / 'back')
  back = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / 'back', attn_implementation='eager').eval()
  assert (back.config.eos_token_id, back.config.pad_token_id) == (5, 0)
  _assert_same_weights(back, ref)
  assert_close_programs(qwen2_logits(back, IDS), qwen2_logits(ref, IDS))
  # A non-empty target is refused and left as it was.
  before = snapshot(tmp_path, mtimes=True)
  proc = subprocess.run([sys.executable, 'launch.py', '--mode=convert', f'--convert_from={tmp_path / "orbax"}',
                         f'--convert_to={tmp_path / "back"}'], cwd=REPO, env=launch_env(), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert 'back is not empty; convert into a new or empty --convert_to' in proc.stderr.strip().splitlines()[-1]
  with pytest.raises(FileExistsError, match=r'orbax is not empty'):
    hf_to_orbax(tmp_path / 'hf', tmp_path / 'orbax')
  assert snapshot(tmp_path, mtimes=True) == before


def test_training_workdir_to_hf_uses_the_given_config(tmp_path):
  ref = _hf_folder(tmp_path / 'hf', tied=True)
  _, params, _ = from_pretrained(tmp_path / 'hf')
  ckpt = Checkpointer(str(tmp_path / 'run' / 'checkpoints'), every=1, keep=1, async_save=False)
  ckpt.save(7, {'step': np.int32(7), 'params': params}, {'iterator': '{}'}, {'model': 'tiny'})
  ckpt.close()
  with pytest.raises(FileNotFoundError, match='--hf_config'):
    orbax_to_hf(tmp_path / 'run', tmp_path / 'out')
  _convert(f'--convert_from={tmp_path / "run"}', f'--convert_to={tmp_path / "out"}',
           f'--hf_config={tmp_path / "hf"}')
  _assert_carried(tmp_path / 'out')
  out = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / 'out', attn_implementation='eager').eval()
  _assert_same_weights(out, ref)
