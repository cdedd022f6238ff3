"""The contamination experiment's parts (fast): the word tokenizer, the training rows, the trainer config, bad
settings. The fine-tune itself (minutes on CPU) is a command in contamination.py's docstring."""
import numpy as np
import pytest

from configs.structeval import get_config
from experiments.structeval import contamination
from experiments.structeval.data import StructItem

SEED = StructItem('s/0-seed', 's', 0, 'seed', 'Where does the Kalo live?',
                  {'A': 'Ost Vale', 'B': 'Mi Vale', 'C': 'Ra Vale', 'D': 'Zu Vale'}, 'C')
BLOOM = StructItem('s/0-bloom-remember-0', 's', 0, 'bloom', 'What colour is the Kalo?',
                   {'A': 'red', 'B': 'blue', 'C': 'green', 'D': 'grey'}, 'A', level='remembering')


def test_training_text_and_rows():
  text = contamination.training_text(SEED)
  assert text.startswith('The following are multiple choice questions') and text.endswith('\nAnswer: C')
  tok = contamination.word_tokenizer([text, 'Ost Vale, again!'])
  assert tok.token_to_id('[PAD]') == 0 and tok.token_to_id('[UNK]') == 1
  ids = tok.encode(text).ids
  assert 1 not in ids and tok.encode('unseen Vale').ids == [1, tok.token_to_id('Vale')]
  rows = contamination._Rows([ids, ids[:3]])
  assert len(rows) == 2 and rows.tokens.shape == (2, len(ids)) and rows.tokens.dtype == np.int32
  assert rows[1]['mask'].tolist() == [1.0] * 3 + [0.0] * (len(ids) - 3) and rows[0]['mask'].sum() == len(ids)
  assert rows[1]['tokens'][:3].tolist() == ids[:3] and not rows[1]['tokens'][3:].any()


def test_trainer_config_and_bad_settings(tmp_path):
  c = contamination.trainer_config({**contamination.DEFAULTS, 'steps': 30, 'lr': 0.01}, seed=4)
  assert (c.total_steps, c.ckpt_every, c.eval_every, c.seed, c.optim.lr) == (30, 30, 0, 4, 0.01)
  with pytest.raises(ValueError, match=r"unknown settings \['stepz'\]"):
    contamination.run([SEED, BLOOM], str(tmp_path), stepz=3)
  with pytest.raises(ValueError, match='need seeds and Struct items'):
    contamination.run([BLOOM], str(tmp_path))
  with pytest.raises(ValueError, match='set --config.data_file'):
    contamination.run_contamination(get_config(), str(tmp_path))
