"""The option matcher against real-world response styles, and option parsing."""
import pytest

from mmjax.evals.choice import match_choice, parse_options

OPTIONS = parse_options('A: the first image\nB: the second image\nC: the third image\n'
                        'D: the fourth image')

# (response, expected letter or None = unmatched, scored wrong)
CASES = [
    # evaluate.py's deterministic rule: a single letter once '. , ( )' are stripped
    ('B', 'B'),
    ('(B)', 'B'),
    ('B.', 'B'),
    ('B,', 'B'),
    ('  B  \n', 'B'),
    ('b', 'B'),
    ('(b).', 'B'),
    ('B\u00a0', 'B'),
    ('G', 'G'),  # a letter outside the options is kept (and is then wrong unless gold is G)
    # markup around a letter
    ('**B**', 'B'),
    ('**(C)**', 'C'),
    ('\\boxed{D}', 'D'),
    ('`A`', 'A'),
    ('[B]', 'B'),
    # a leading option letter with a delimiter, then an explanation
    ('B. The second image is the real photograph.', 'B'),
    ('B: the second image', 'B'),
    ('(C) the third image, because the lighting is natural', 'C'),
    ('D) the fourth image', 'D'),
    ('B\n\nExplanation: the shadows are consistent.', 'B'),
    ('C is correct because it shows the most shapes.', 'C'),
    # answer phrases
    ('The answer is B', 'B'),
    ('The answer is (C).', 'C'),
    ('Answer: B', 'B'),
    ('Final answer: **C**', 'C'),
    ('I think the answer should be B, since the edges are sharp.', 'B'),
    ('Looking at all four images, the answer is: D', 'D'),
    ('Option D', 'D'),
    ('The correct choice is (A)', 'A'),
    ('The answer is not A; the answer is C.', 'C'),
    # option text only
    ('the second image', 'B'),
    ('The third image.', 'C'),
    ('THE FOURTH IMAGE', 'D'),
    ('I believe it is the first image, which looks real.', 'A'),
    # no answer, several answers, or letters that are words
    ('', None),
    ('   ', None),
    ('I cannot determine which image is real.', None),
    ('A, B', None),
    ('A and C', None),
    ('B or C', None),
    ('B/C', None),
    ('AB', None),
    ('either the first image or the second image', None),
    ('A cute teddy bear', None),
    ('Option A is wrong, option B is right', None),
    ('the answer is a guess', None),
]


@pytest.mark.parametrize('response,expected', CASES)
def test_match_choice(response, expected):
  assert match_choice(response, OPTIONS) == expected


def test_option_text_prefers_the_longest_match():
  options = {'A': 'cat', 'B': 'black cat', 'C': 'dog'}
  assert match_choice('a black cat', options) == 'B'
  assert match_choice('cat', options) == 'A'
  assert match_choice('a cat and a dog', options) is None


def test_option_text_needs_whole_words():
  assert match_choice('There are 12 shapes.', {'A': '1', 'B': '2', 'C': '12'}) == 'C'
  assert match_choice('catalogue', {'A': 'cat', 'B': 'dog'}) is None


def test_letters_must_be_options_outside_the_bare_letter_rule():
  assert match_choice('The answer is E', OPTIONS) is None
  assert match_choice('The answer is E', {}) == 'E'  # no options known: A-H are accepted


def test_parse_options_formats_and_continuations():
  assert parse_options('A: cat\nB: dog') == {'A': 'cat', 'B': 'dog'}
  assert parse_options('(A) cat\nB. dog\nC) cow') == {'A': 'cat', 'B': 'dog', 'C': 'cow'}
  assert parse_options('Choose one.\nA: two\nlines\nB:x') == {'A': 'two\nlines', 'B': 'x'}
  assert parse_options('') == {}
