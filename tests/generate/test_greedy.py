"""Greedy decoding against transformers `generate(do_sample=False)`: tokens, log-probabilities, EOS, stop sequences,
and batch invariance."""

from mmjax.generate import generate
from tests.generate.reference import hf_generate
from tests.numerics import assert_close_programs, assert_close_torch


def test_greedy_matches_transformers_token_for_token(tiny, prompts):
  hf, module, params, _ = tiny
  want, out = hf_generate(hf, prompts, max_new_tokens=24, do_sample=False, output_logits=True)
  want_logprobs = hf.compute_transition_scores(out.sequences, out.logits, normalize_logits=True).numpy()
  got = generate(module, params, prompts, max_new_tokens=24)
  for i, (completion,) in enumerate(got):
    assert completion.tokens == want[i].tolist()
    assert completion.finish_reason == 'length'
    assert_close_torch(completion.logprobs, want_logprobs[i])
    assert len(set(completion.tokens)) >= 12, 'the reference model must not repeat a few tokens'
  assert len({tuple(c.tokens) for (c,) in got}) == 3


def test_eos_ends_a_row_like_transformers(tiny, prompts):
  hf, module, params, _ = tiny
  (first,) = generate(module, params, prompts[:1], max_new_tokens=24)[0]
  eos = first.tokens[9]  # a token the first row emits at step 9 (and possibly earlier)
  want, _ = hf_generate(hf, prompts, max_new_tokens=24, do_sample=False, eos_token_id=eos)
  got = generate(module, params, prompts, max_new_tokens=24, eos_token_id=eos)
  assert got[0][0].finish_reason == 'eos'
  for i, (completion,) in enumerate(got):
    row = want[i].tolist()
    length = row.index(eos) + 1 if eos in row else len(row)
    assert completion.tokens == row[:length]
    assert completion.finish_reason == ('eos' if eos in row else 'length')
    assert not any(row[length:]), 'transformers pads after EOS'


def test_stop_sequence_ends_a_row_and_is_kept(tiny, prompts):
  _, module, params, _ = tiny
  full = [c.tokens for (c,) in generate(module, params, prompts, max_new_tokens=24)]
  stop = full[1][6:8]
  got = generate(module, params, prompts, max_new_tokens=24, stop_sequences=[[5, 6, 7], stop])
  for tokens, (completion,) in zip(full, got):
    ends = [t + 1 for t in range(1, 24) if tokens[t - 1:t + 1] == stop]
    length = ends[0] if ends else 24
    assert completion.tokens == tokens[:length]
    assert completion.finish_reason == ('stop' if ends else 'length')
  assert got[1][0].finish_reason == 'stop'


def test_a_batch_equals_its_prompts_one_at_a_time(tiny, prompts):
  _, module, params, _ = tiny
  batch = [[3] * 30] + prompts  # a longer prompt changes the batch's padded length and cache bucket
  together = generate(module, params, batch, max_new_tokens=12)
  for prompt, (completion,) in zip(batch, together):
    (alone,) = generate(module, params, [prompt], max_new_tokens=12)[0]
    assert completion.tokens == alone.tokens
    assert_close_programs(completion.logprobs, alone.logprobs)
