"""launch.py --mode convert: HF -> orbax -> HF, and a training workdir -> HF."""
import subprocess
import sys

import numpy as np
import torch
import transformers

from mmjax.train.checkpoint import Checkpointer
from mmjax.weights import from_pretrained
from tests.models.hf_reference import qwen2_logits, save_qwen2
from tests.train.launcher import REPO, launch_env

IDS = np.array([[3, 17, 99, 5, 64, 2]])


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
  ref = save_qwen2(tmp_path / 'hf', tied=False)
  _convert(f'--convert_from={tmp_path / "hf"}', f'--convert_to={tmp_path / "orbax"}')
  assert (tmp_path / 'orbax' / 'params').is_dir()
  _convert(f'--convert_from={tmp_path / "orbax"}', f'--convert_to={tmp_path / "back"}')
  back = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / 'back', attn_implementation='eager').eval()
  _assert_same_weights(back, ref)
  np.testing.assert_allclose(qwen2_logits(back, IDS), qwen2_logits(ref, IDS), atol=1e-6)


def test_training_workdir_to_hf_uses_the_given_config(tmp_path):
  ref = save_qwen2(tmp_path / 'hf', tied=True)
  _, params, _ = from_pretrained(tmp_path / 'hf')
  ckpt = Checkpointer(str(tmp_path / 'run' / 'checkpoints'), every=1, keep=1, async_save=False)
  ckpt.save(7, {'step': np.int32(7), 'params': params}, {'iterator': '{}'}, {'model': 'tiny'})
  ckpt.close()
  proc = subprocess.run([sys.executable, 'launch.py', '--mode=convert', f'--convert_from={tmp_path / "run"}',
                         f'--convert_to={tmp_path / "out"}'], cwd=REPO, env=launch_env(), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode != 0 and '--hf_config' in proc.stderr
  _convert(f'--convert_from={tmp_path / "run"}', f'--convert_to={tmp_path / "out"}',
           f'--hf_config={tmp_path / "hf"}')
  out = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / 'out', attn_implementation='eager').eval()
  _assert_same_weights(out, ref)
