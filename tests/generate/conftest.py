"""One tiny random HF Qwen2 (tests/hf_models.py, logits spread by WIDE) shared by the generation tests, and
prompts of different lengths."""
import numpy as np
import pytest

from mmjax.weights import from_pretrained
from tests.hf_models import WIDE, save_qwen2


@pytest.fixture(scope='session')
def tiny(tmp_path_factory):
  """(transformers model, mmjax module, params, checkpoint directory)."""
  directory = tmp_path_factory.mktemp('tiny_qwen2')
  hf = save_qwen2(directory, **WIDE)
  module, params, _ = from_pretrained(directory)
  return hf, module, params, directory


@pytest.fixture(scope='session')
def prompts():
  """Three prompts of 5, 11 and 17 random tokens."""
  rng = np.random.default_rng(0)
  return [[int(t) for t in rng.integers(0, 128, n)] for n in (5, 11, 17)]
