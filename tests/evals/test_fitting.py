"""Left truncation and image subsampling."""
import numpy as np
import pytest

from mmjax.evals import Prompt, subsample_images, truncate_left


def _render(text):
  return Prompt(f'Evidence: {text}\nClaim: c')


def test_truncate_left_keeps_the_tail_and_the_claim_and_respects_the_budget():
  text = ''.join(f'w{i:03d} ' for i in range(200))  # 1000 characters
  budget = 300

  def fits(p):
    return len(p.text) <= budget

  prompt, cut = truncate_left(_render, text, fits)
  assert fits(prompt) and prompt.text.endswith('w199 \nClaim: c')
  assert prompt.text == _render(text[cut:]).text
  assert not fits(_render(text[cut - 1:]))  # the smallest cut that fits
  assert truncate_left(_render, 'short', fits) == (_render('short'), 0)


def test_truncate_left_raises_when_nothing_fits():
  with pytest.raises(ValueError, match='even with the text cut to nothing'):
    truncate_left(_render, 'abc', lambda p: False)


def test_subsample_images_is_seeded_keeps_order_and_fits():
  prompt = Prompt('q', tuple(f'img{i}.jpg' for i in range(10)))

  def fits(p):
    return len(p.images) <= 4

  out, kept = subsample_images(prompt, fits, np.random.default_rng((0, 7)))
  again, kept_again = subsample_images(prompt, fits, np.random.default_rng((0, 7)))
  other = subsample_images(prompt, fits, np.random.default_rng((1, 7)))[1]
  assert len(kept) == 4 and list(kept) == sorted(kept) and (out, kept) == (again, kept_again)
  assert other != kept
  assert out.images == tuple(f'img{i}.jpg' for i in kept) and out.text == 'q'
  capped = subsample_images(prompt, lambda p: True, np.random.default_rng(0), max_images=3)[1]
  assert len(capped) == 3
  assert subsample_images(prompt, lambda p: True, np.random.default_rng(0))[1] == tuple(range(10))
  with pytest.raises(ValueError, match='even with 1 image'):
    subsample_images(prompt, lambda p: False, np.random.default_rng(0))
