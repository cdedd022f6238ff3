"""MATH500 and PRM800K readers on hand-made files; CHAMP's real text through extraction, grading and step labels."""
import json
import re

import pytest

from experiments.test_time_compute.math_data import (
  LabelledSolution,
  answer_after_mark,
  champ_labelled_solutions,
  champ_path,
  prm800k_trajectory,
  read_champ,
  read_math500,
  read_prm800k,
)
from mmjax.evals.math_grader import extract_boxed, grade_answer


def _math500_row(**over):
  row = {'problem': 'What is $1+1$?', 'solution': 'It is $\\boxed{2}$.', 'answer': '2', 'subject': 'Algebra',
         'level': 1, 'unique_id': 'test/algebra/1.json'}
  row.update(over)
  return row


def _write_jsonl(path, rows):
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  return str(path)


def test_math500_reader_keeps_fields_and_reads_both_level_forms(tmp_path):
  path = _write_jsonl(tmp_path / 'test.jsonl', [_math500_row(), _math500_row(level='Level 4', unique_id='b')])
  first, second = read_math500(path)
  assert (first.problem, first.answer, first.subject, first.level, first.unique_id) == (
      'What is $1+1$?', '2', 'Algebra', 1, 'test/algebra/1.json')
  assert second.level == 4 and second.unique_id == 'b'
  assert extract_boxed(first.solution) == first.answer


def test_math500_missing_field_names_file_line_and_field(tmp_path):
  rows = [_math500_row(), {k: v for k, v in _math500_row().items() if k != 'unique_id'}]
  path = _write_jsonl(tmp_path / 'test.jsonl', rows)
  with pytest.raises(ValueError, match=re.escape(f"{path}: line 2: missing field 'unique_id'")):
    read_math500(path)
  bad_level = _write_jsonl(tmp_path / 'level.jsonl', [_math500_row(level='hard')])
  with pytest.raises(ValueError, match="line 1: field 'level' is 'hard'"):
    read_math500(bad_level)


def _completion(text, rating):
  return {'text': text, 'rating': rating, 'flagged': None}


def _prm800k_line(steps, finish_reason, generation=None, pre_generated_answer=None):
  return {'labeler': 'x', 'generation': generation, 'is_quality_control_question': False,
          'question': {'problem': 'Find $2+3$.', 'ground_truth_answer': '5', 'ground_truth_solution': '$\\boxed{5}$',
                       'pre_generated_steps': None, 'pre_generated_answer': pre_generated_answer},
          'label': {'steps': steps, 'total_time': 1, 'finish_reason': finish_reason}}


PHASE1 = _prm800k_line([
  # alternatives rated, the second one chosen
  {'completions': [_completion('Add 2 and 4.', -1), _completion('Add 2 and 3.', 1)], 'human_completion': None,
   'chosen_completion': 1},
  # every candidate wrong: the labeller wrote the step (phase 1 stores it as an object)
  {'completions': [_completion('That is 6.', -1)], 'chosen_completion': None,
   'human_completion': {'text': 'That is 5.', 'rating': None, 'flagged': False}},
  {'completions': [_completion('# Answer\n\n5', 1)], 'human_completion': None, 'chosen_completion': 0},
], 'solution')

PHASE2 = _prm800k_line([
  {'completions': [_completion('I add the numbers.', 0)], 'human_completion': None, 'chosen_completion': 0},
  # the first error ends labelling: the pre-generated step comes first, alternatives follow, nothing chosen
  {'completions': [_completion('2+3=6.\n\n# Answer\n\n6', -1), _completion('2+3=5.', 1)], 'human_completion': None,
   'chosen_completion': None},
], 'found_error', generation=3, pre_generated_answer='6')


def test_prm800k_reader_and_trajectories_of_both_phases(tmp_path):
  one, two = read_prm800k(_write_jsonl(tmp_path / 'phase.jsonl', [PHASE1, PHASE2]))
  assert (one.problem, one.ground_truth_answer, one.finish_reason, one.generation) == (
      'Find $2+3$.', '5', 'solution', None)
  assert [c.rating for c in one.steps[0].completions] == [-1, 1] and one.steps[0].chosen == 1
  assert one.steps[1].human == 'That is 5.'
  assert prm800k_trajectory(one) == LabelledSolution(
      'Find $2+3$.', ('Add 2 and 3.', 'That is 5.', '# Answer\n\n5'), (1, 1, 1), '5', '5')
  assert (two.generation, two.pre_generated_answer) == (3, '6')
  assert prm800k_trajectory(two) == LabelledSolution(
      'Find $2+3$.', ('I add the numbers.', '2+3=6.\n\n# Answer\n\n6'), (0, -1), '5', '6')
  assert answer_after_mark('no mark here') is None


def test_prm800k_bad_input_is_named(tmp_path):
  broken = json.loads(json.dumps(PHASE2))
  del broken['label']['steps'][1]['completions'][0]['rating']
  path = _write_jsonl(tmp_path / 'phase2.jsonl', [PHASE1, broken])
  with pytest.raises(ValueError, match=re.escape(f"{path}: line 2: label.steps[1].completions[0]: missing field "
                                                 "'rating'")):
    read_prm800k(path)
  pointer = tmp_path / 'phase1_train.jsonl'
  pointer.write_text('version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n')
  with pytest.raises(ValueError, match='Git LFS pointer.*git lfs pull'):
    read_prm800k(str(pointer))


def test_champ_reference_answers_extract_and_grade_on_real_text():
  problems = read_champ()
  assert len(problems) == 270  # the package's documented size
  texts = ['\n'.join(p.solution_steps) + f'\n\nSo the answer is $\\boxed{{{p.answer}}}$.' for p in problems]
  extracted = [extract_boxed(t) for t in texts]
  assert sum(e == p.answer for e, p in zip(extracted, problems)) == len(problems)
  assert sum(grade_answer(e, p.answer) for e, p in zip(extracted, problems)) == len(problems)
  integers = [p.answer for p in problems if re.fullmatch(r'-?\d+', p.answer)]
  assert len(integers) >= 50
  assert sum(grade_answer(str(int(a) + 1), a) for a in integers) == 0  # off by one: wrong
  assert sum(grade_answer(f'{a}.0', a) for a in integers) == len(integers)  # a whole float: right
  yes_no = [p.answer for p in problems if p.answer in ('Yes', 'No')]
  assert yes_no and sum(grade_answer('No' if a == 'Yes' else 'Yes', a) for a in yes_no) == 0
  assert sum(grade_answer(a.lower(), a) for a in yes_no) == len(yes_no)  # case does not matter


def test_champ_step_labels_follow_the_first_wrong_step_annotations():
  with open(champ_path()) as f:
    raw = json.load(f)['problems']
  notes = {f'{pid}|{name}': note for pid, p in raw.items() for name, note in p['fws_annotations'].items()}
  solutions = dict(champ_labelled_solutions())
  assert solutions.keys() == notes.keys()
  for key, sol in solutions.items():
    note = notes[key]
    assert len(sol.steps) == len(sol.labels) > 0
    assert sol.answer == raw[key.split('|')[0]]['_answer']
    if note['start_idx'] is None:
      assert set(sol.labels) == {1}
    else:
      assert sol.labels[:-1] == (1,) * (len(sol.labels) - 1) and sol.labels[-1] == -1
      first_line = note['text'][note['start_idx']:note['end_idx']].strip().split('\n')[0]
      assert first_line[:30] in sol.steps[-1], key
  wrong = sum(note['start_idx'] is not None for note in notes.values())
  assert sum(sol.labels[-1] == -1 for sol in solutions.values()) == wrong > 0
