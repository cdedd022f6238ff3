"""Beam search against transformers' (num_beams=4, early_stopping=True): every returned hypothesis and score."""
import numpy as np
import pytest

from mmjax.generate import beam_search, generate
from tests.generate.reference import hf_generate
from tests.numerics import assert_close_programs, assert_close_torch


@pytest.mark.parametrize('eos, length_penalty', [(None, 1.0), ((23, 24, 34), 0.5)])
def test_beam_search_matches_transformers(tiny, prompts, eos, length_penalty):
  hf, module, params, _ = tiny
  want, out = hf_generate(hf, prompts, max_new_tokens=16, num_beams=4, do_sample=False, early_stopping=True,
                          eos_token_id=list(eos) if eos else None, length_penalty=length_penalty,
                          num_return_sequences=4, output_scores=True)
  got = beam_search(module, params, prompts, num_beams=4, max_new_tokens=16, eos_token_id=eos,
                    length_penalty=length_penalty)
  for i, hypotheses in enumerate(got):
    assert len(hypotheses) == 4
    for k, hypothesis in enumerate(hypotheses):
      row = want[4 * i + k].tolist()
      assert hypothesis.tokens == row[:len(hypothesis.tokens)]
      # transformers fills after a hypothesis ends with pad_token_id, or eos_token_id[0] when pad is 0.
      assert set(row[len(hypothesis.tokens):]) <= {eos[0] if eos else 0}
      assert_close_torch(hypothesis.score, out.sequences_scores[4 * i + k].item())
  lengths = {len(h.tokens) for hypotheses in got for h in hypotheses}
  assert lengths == {16} if eos is None else len(lengths) > 2, 'EOS must end some hypotheses early'
  assert all(len(set(h.tokens)) >= 8 for hypotheses in got for h in hypotheses if len(h.tokens) == 16)


def test_one_beam_is_greedy(tiny, prompts):
  _, module, params, _ = tiny
  greedy = generate(module, params, prompts, max_new_tokens=8)
  beams = beam_search(module, params, prompts, num_beams=1, max_new_tokens=8)
  assert [h[0].tokens for h in beams] == [c[0].tokens for c in greedy]
  assert_close_programs(np.array([h[0].score for h in beams]), np.array([c[0].logprobs.sum() / 8 for c in greedy]))
