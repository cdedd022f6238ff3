"""The MATH grader against PRM800K's rules, case by case, plus its time limit, math-verify and extraction.

Each expected value below follows from the rules of PRM800K's `grading/grader.py` and `math_normalize.py`
(the comment names the rule that decides it); while writing this table every case was also run through
PRM800K's own grader outside the repository, which agreed on all of them.
"""
import time

import pytest

from mmjax.evals.math_grader import extract_boxed, grade_answer, grader_disagreements
from mmjax.evals.math_normalize import normalize_answer, normalize_mathd

CASES = [
  # (given, ground truth, correct?)  rule that decides
  ('5', '5', True),  # identical strings
  ('\\frac12', '\\frac{1}{2}', True),  # mathd: \frac12 -> \frac{1}{2}
  ('\\sqrt3', '\\sqrt{3}', True),  # mathd: \sqrt3 -> \sqrt{3}
  ('0.5', '\\frac{1}{2}', True),  # mathd: the string 0.5 -> \frac{1}{2}
  ('.5', '0.5', True),  # mathd: a leading '.' gets a 0
  ('1/2', '\\frac{1}{2}', True),  # mathd: integer a/b -> \frac{a}{b}
  ('\\dfrac{3}{4}', '\\frac{3}{4}', True),  # mathd: dfrac -> frac
  ('\\tfrac{3}{4}', '\\frac34', True),  # mathd: tfrac -> frac, then \frac34 braced
  ('\\left( 3, \\frac{\\pi}{2} \\right)', '(3,\\frac{\\pi}{2})', True),  # mathd: \left, \right and spaces dropped
  ('90^\\circ', '90', True),  # mathd: ^\circ dropped
  ('90^{\\circ}', '90', True),  # mathd: ^{\circ} dropped
  ('\\$5', '5', True),  # mathd: \$ dropped
  ('10\\%', '10', True),  # mathd: \% dropped
  ('5\\text{ cm}', '5', True),  # mathd: units after '\text{ ' dropped
  ('5 \\text{ apples}', '5', True),  # mathd: any words after '\text{ ' are units
  ('5 \\text{ cm} \\text{ long}', '5', False),  # mathd: two '\text{ ' leave it as written; '5long' is no integer
  ('x = 3', '3', True),  # mathd: a left side of <= 2 characters is dropped
  ('k=5', '5', True),  # mathd: the same without spaces
  ('xyz = 3', '3', False),  # mathd keeps a longer left side; then integer vs non-integer
  ('\\frac{3}{2}', '1\\frac{1}{2}', True),  # latex->text keeps a mixed number as 1+1/2, sympy equal
  ('1,\\!000', '1000', True),  # normalize: ',\!' dropped
  ('\\text{Evelyn}', 'Evelyn', True),  # enclosing \text{} stripped
  ('evelyn', '\\text{Evelyn}', True),  # normalize: lower case
  ('\\text{even}', 'even', True),  # enclosing \text{} stripped
  ('10 cm', '10', True),  # normalize: unit word dropped
  ('5 inches', '5', True),  # normalize: unit word with 'es' dropped
  ('3 feet', '3', True),  # normalize: 'feet' is a unit
  ('4 cm^2', '4', True),  # normalize: unit with its exponent dropped
  ('Monday', 'monday', True),  # normalize: 'day' is a unit word wherever it occurs: both become 'mon'
  ('Sunday', 'Monday', False),  # 'sun' vs 'mon': more than 2 letters, sympy not tried
  ('2 million', '2*10^6', True),  # normalize: million -> *10^6
  ('2 million', '2000000', False),  # '2*10^6' is no integer string, the ground truth is: integer rule
  ('3 or 5', '3, 5', True),  # normalize: ' or ' -> ','
  ('$5$', '5', True),  # normalize: $ dropped
  ('5%', '5', True),  # normalize: % dropped
  ('{5}', '5', True),  # normalize: enclosing braces dropped
  ('5.0', '5', True),  # normalize: a whole float -> integer
  ('5.00000001', '5', True),  # normalize: within 1e-7 of an integer counts as that integer
  ('5.001', '5', False),  # integer ground truth, non-integer answer
  ('1e3', '1000', True),  # normalize: float() reads 1e3, whole -> 1000
  ('1,000,000', '1000000', True),  # normalize: thousands commas of an integer dropped
  ('7 3/4', '7\\frac{3}{4}', True),  # normalize: mixed number '7 3/4' -> '7+3/4' on both sides
  ('- 5', '-5', True),  # normalize: '- ' -> '-'
  ('\\frac{\\sqrt{3}}{2}', '\\sqrt{3}/2', True),  # latex->text: both 'sqrt(3)/2'
  ('\\infty', 'inf', True),  # latex->text: the infinity sign -> 'inf'
  ('\\pi', 'pi', True),  # latex->text: the pi sign -> 'pi'
  ('6 - 5i', '6-5i', True),  # normalize: spaces dropped
  ('\\text{(A)}', 'A', True),  # '(a)' is a one-element tuple 'a'; sympy: a - a = 0
  ('2/4', '1/2', False),  # two plain fractions must match exactly: unreduced is wrong
  ('\\frac{2}{4}', '\\frac{1}{2}', False),  # the same after latex->text ('2/4' vs '1/2')
  ('1/3', '\\frac{1}{3}', True),  # mathd: both \frac{1}{3}
  ('0.50', '\\frac{1}{2}', True),  # not both fractions, both non-integers: sympy 1/2 - 0.50 = 0
  ('1.5', '\\frac{3}{2}', True),  # sympy on a decimal vs a fraction
  ('-\\frac{1}{2}', '\\frac{-1}{2}', True),  # fractions '-1/2' on both sides after latex->text
  ('3', '3.5', False),  # integer answer, non-integer ground truth
  ('10^{10}', '10000000000', False),  # '10^10' is no integer string: integer rule
  ('10^6', '1000000', False),  # the same: powers are not evaluated against integers
  ('3 \\times 4', '12', False),  # '3*4' is no integer string: integer rule
  ('x^2+2x+1', '(x+1)^2', True),  # sympy: simplify of the difference is 0
  ('x^{2}', 'x^2', True),  # normalize: braces dropped, strings equal
  ('2\\sqrt{2}', '\\sqrt{8}', True),  # sympy with implicit multiplication
  ('\\frac{1}{\\sqrt{2}}', '\\frac{\\sqrt{2}}{2}', True),  # sympy: rationalised denominator
  ('\\sqrt{2}\\cdot 3', '3\\sqrt2', True),  # latex->text: the dot -> '*'; sympy equal
  ('2^9/7', '512/7', True),  # a one-digit exponent: sympy allowed, equal
  ('2^10/3', '1024/3', False),  # guard: a multi-digit exponent, sympy not tried
  ('2^3^2/7', '512/7', False),  # guard: stacked exponents '^k^', sympy not tried
  ('2^(1/2)', '\\sqrt{2}', False),  # guard: '^(' in the expression, sympy not tried
  ('a+b', 'b+a', True),  # two letters: sympy allowed
  ('a+b+c', 'c+b+a', False),  # guard: more than 2 distinct letters, sympy not tried
  ('\\sqrt{x}+y', 'y+\\sqrt{x}', True),  # guard: 'sqrt' letters are not counted
  ('x+1', 'y+1', False),  # sympy: x - y is not 0
  ('2\\pi', '6.28318530718', False),  # sympy: a decimal approximation is not exact
  ('\\frac{1}{3}', '0.333', False),  # sympy: not exactly equal
  ('3.14', '\\pi', False),  # sympy: not exactly equal
  ('(1,2)', '[1,2]', False),  # tuples/intervals: the brackets must match
  ('(1,2]', '(1,2)', False),  # tuples/intervals: the closing bracket must match
  ('(1, 2)', '(1,2)', True),  # normalize: spaces dropped
  ('[2, 5)', '[2,5)', True),  # an interval, spaces dropped
  ('(-\\infty, 3)', '(-\\infty,3)', True),  # an interval with infinity
  ('(2,1)', '(1,2)', False),  # tuples: element-wise, order matters
  ('(1,2,3)', '(1,2)', False),  # tuples: the element counts must match
  ('(0.5, 1)', '(\\frac{1}{2}, 1)', True),  # tuples: element-wise sympy 1/2 - 0.5 = 0
  ('(1,000, 2)', '(1000,2)', True),  # tuples: thousands commas stripped before splitting
  ('1, 2', '(1,2)', False),  # tuples: an unbracketed answer does not match a bracketed one
  ('', '5', False),  # an empty answer is wrong
  (None, '5', False),  # no answer is wrong
]


@pytest.mark.parametrize('given,truth,correct', CASES, ids=[f'{i}:{c[0]}|{c[1]}' for i, c in enumerate(CASES)])
def test_grades_like_prm800k(given, truth, correct):
  assert grade_answer(given, truth) is correct


def test_table_covers_each_outcome_and_both_normalisers():
  assert len(CASES) >= 60
  assert 25 <= sum(c for _, _, c in CASES) <= len(CASES) - 25
  # cases decided by the mathd pass alone and cases only the second normaliser decides are both present
  mathd_equal = [g for g, t, _ in CASES if g is not None and normalize_mathd(g) == normalize_mathd(t)]
  second_only = [g for g, t, _ in CASES if g is not None and normalize_mathd(g) != normalize_mathd(t)
                 and normalize_answer(g) == normalize_answer(t)]
  assert len(mathd_equal) >= 10 and len(second_only) >= 10


def test_a_hanging_sympy_check_times_out_as_wrong_and_the_next_call_works():
  assert grade_answer('2^9/7', '512/7')  # the worker is up, so the timing below is the check alone
  start = time.monotonic()
  # parse_expr evaluates 9**(9**9), a 370-million-digit integer: minutes of work without the limit
  assert grade_answer('9**9**9', '\\frac{1}{3}', timeout_s=1.0) is False
  assert time.monotonic() - start < 4.0
  assert grade_answer('2\\sqrt{2}', '\\sqrt{8}')  # a fresh worker took over


def test_unknown_grader_is_an_error():
  with pytest.raises(ValueError, match="grader='sympy'"):
    grade_answer('1', '1', grader='sympy')


def test_math_verify_behind_the_same_call_and_the_disagreement_report():
  agree = [('\\frac12', '\\frac{1}{2}'), ('(2,1)', '(1,2)'), ('3', '3.5')]
  # PRM800K rejects an unreduced fraction and skips sympy beyond two letters; math-verify compares values
  disagree = [('2/4', '1/2'), ('a+b+c', 'c+b+a')]
  assert grade_answer('\\frac12', '\\frac{1}{2}', grader='math_verify')
  assert not grade_answer('3', '3.5', grader='math_verify')
  assert not grade_answer(None, '3', grader='math_verify')
  found = grader_disagreements(agree[:1] + disagree[:1] + agree[1:] + disagree[1:])
  assert [(d.given, d.ground_truth) for d in found] == disagree
  assert all(not d.prm800k and d.math_verify for d in found)


@pytest.mark.parametrize('text,answer', [
  ('so the answer is $\\boxed{5}$.', '5'),
  ('$\\boxed{\\frac{1}{2}}$', '\\frac{1}{2}'),  # nested braces
  ('first \\boxed{1}, then \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}', '\\left( 3, \\frac{\\pi}{2} \\right)'),
  ('\\fbox{7}', '7'),
  ('$\\boxed 12$.', '12'),  # \boxed without braces: up to the next $
  ('\\boxed 5\nnext line', '5'),
  ('$\\boxed{\\{1,2\\}}$', '\\{1,2\\}'),  # escaped braces do not count
  ('\\boxed{\\text{(A)}}', '\\text{(A)}'),
  ('no box here', None),
  ('\\boxed{1} and then \\boxed{2', None),  # the last box is unclosed
  ('\\boxedx{3}', None),  # not the \boxed command
])
def test_extract_boxed(text, answer):
  assert extract_boxed(text) == answer
