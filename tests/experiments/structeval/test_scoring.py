"""StructEval scoring: the official prompts, the three views on a hand-computed table, the score program and its
errors, and PPL scoring against `score` log-probabilities summed by hand (tiny random Qwen2)."""
import json

import numpy as np
import pytest

from configs.structeval import get_config
from experiments.structeval.benchmark import StructEvalBenchmark
from experiments.structeval.data import StructItem, load_struct
from experiments.structeval.experiment import PROGRAMS
from experiments.structeval.ppl import PPLScorer
from experiments.structeval.prompts import chat_prompt, ppl_context
from experiments.structeval.synthetic import write_synthetic_struct
from mmjax.evals.prompt import Prompt
from mmjax.generate import score
from tests.evals.fakes import FakeResponder
from tests.hf_models import WIDE, save_qwen2, save_tokenizer

OPTIONS = {'A': 'alpha', 'B': 'beta', 'C': 'gamma', 'D': 'delta'}
MMLU, OBQA = 'struct_mmlu/anatomy', 'struct_openbookqa'


def item(source, seed, kind, level='', concept='', answer='A', question='q?'):
  return StructItem(f'{source}/{seed}-{kind}-{level or concept}-x', source, seed, kind, question, OPTIONS, answer,
                    level, concept)


# (item, right?): four seeds, ten Struct items, then the four seed questions.
GOLDEN = [
    (item(MMLU, 0, 'bloom', 'remembering'), True), (item(MMLU, 0, 'bloom', 'creating'), False),
    (item(MMLU, 0, 'concept', concept='Bone'), True),
    (item(MMLU, 1, 'bloom', 'remembering'), True), (item(MMLU, 1, 'concept', concept='Skull'), True),
    (item(OBQA, 0, 'bloom', 'applying'), False),
    (item(OBQA, 1, 'bloom', 'applying'), True), (item(OBQA, 1, 'bloom', 'creating'), True),
    (item(OBQA, 1, 'concept', concept='Fog'), False), (item(OBQA, 1, 'concept', concept='Fog'), True),
    (item(MMLU, 0, 'seed'), True), (item(MMLU, 1, 'seed'), False), (item(OBQA, 0, 'seed'), True),
    (item(OBQA, 1, 'seed'), True),
]


def test_the_three_views_on_a_golden_table():
  bench = StructEvalBenchmark([it for it, _ in GOLDEN])
  wrong = iter(['B', 'I do not know', 'The answer is C.', 'D'])  # one wrong answer names no option
  records = [{'id': i, 'response': 'A' if ok else next(wrong)} for i, (_, ok) in enumerate(GOLDEN)]
  s = bench.score(records).summary
  # Struct items: 7 of 10 right; seeds: 2/3, 2/2, 0/1, 3/4 right.
  assert s['accuracy'] == s['item_accuracy'] == pytest.approx(70.0)
  assert s['seed_mean'] == pytest.approx(100 * (2 / 3 + 1 + 0 + 3 / 4) / 4)
  assert s['strict_mastery'] == pytest.approx(25.0)  # only seed MMLU/1 has every item right
  assert s['strict_mastery_with_seed'] == pytest.approx(0.0)  # ... and its seed question is wrong
  assert s['seed_accuracy'] == pytest.approx(75.0) and s['seeds'] == 4 and s['seeds_answered'] == 4
  assert s['per_source'] == pytest.approx({MMLU: 80.0, OBQA: 60.0})
  assert s['per_dataset']['struct_mmlu'] == pytest.approx({'micro': 80.0, 'subject_mean': 80.0, 'sources': 1})
  assert s['per_level'] == pytest.approx({'remembering': 100.0, 'applying': 50.0, 'creating': 50.0})
  assert list(s['per_level']) == ['remembering', 'applying', 'creating']  # Bloom's order
  assert s['per_kind'] == pytest.approx({'bloom': 400 / 6, 'concept': 75.0})
  assert s['unmatched'] == 1 and s['n'] == 14 and s['counts'] == {'bloom': 6, 'concept': 4, 'seed': 4}


def test_official_prompts():
  mmlu = StructItem('x', 'struct_mmlu/college_biology', 0, 'bloom', 'What is ATP?', OPTIONS, 'A', 'remembering')
  assert chat_prompt(mmlu) == ('There is a single choice question about college biology. Answer the question by '
                               'replying A, B, C or D.\nQuestion: What is ATP?\nA. alpha\nB. beta\nC. gamma\n'
                               'D. delta\nAnswer: ')
  assert ppl_context(mmlu) == ('The following are multiple choice questions (with answers) about  college biology.'
                               '\n\nWhat is ATP?\nA. alpha\nB. beta\nC. gamma\nD. delta')
  obqa = StructItem('x', 'struct_openbookqa', 0, 'concept', 'Fog?', OPTIONS, 'B', concept='Fog')
  assert chat_prompt(obqa).startswith('There is a single choice question. Answer the question by replying A, B, C or '
                                      'D.\nQuestion: Fog?\nA. alpha')
  assert ppl_context(obqa).startswith('The following are multiple choice questions (with answers).\n\nFog?\n')


def test_a_prompt_too_long_for_the_window_is_an_error():
  bench = StructEvalBenchmark([GOLDEN[0][0]])
  with pytest.raises(ValueError, match=r'item 0 \(struct_mmlu/anatomy/0-bloom-remembering-x\): the prompt takes'):
    bench.prompt(0, FakeResponder(lambda p: 'A', max_context_tokens=5))


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
  return write_synthetic_struct(str(tmp_path_factory.mktemp('se')), creatures=4, places=4)


def _write_responses(path, answers):
  with open(path, 'w') as f:
    for i, a in answers:
      f.write(json.dumps({'id': i, 'response': a}) + '\n')


def test_score_program_and_missing_ids(synthetic, tmp_path):
  items = load_struct(synthetic.path)
  config = get_config()
  config.data_file, config.responses = synthetic.path, str(tmp_path / 'r.jsonl')
  _write_responses(config.responses, [(i, it.answer) for i, it in enumerate(items)])
  s = PROGRAMS['score'](config, str(tmp_path / 'out'))
  assert s['n'] == len(items) == 32 and s['accuracy'] == 100.0 and s['strict_mastery'] == 100.0
  assert json.load(open(tmp_path / 'out' / 'summary.json')) == s
  _write_responses(config.responses, [(i, 'A') for i in range(len(items)) if i not in (3, 4, 9)] + [(40, 'A')])
  with pytest.raises(ValueError, match=r'missing ids \(3\): 3-4, 9; ids not in the data \(0..31\) \(1\): 40'):
    PROGRAMS['score'](config, str(tmp_path / 'bad'))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  directory = tmp_path_factory.mktemp('tiny_base')
  tokenizer = save_tokenizer(directory)
  save_qwen2(directory, **WIDE, vocab_size=tokenizer.get_vocab_size())
  return str(directory)


def test_ppl_equals_score_logprobs_summed_by_hand(tiny, synthetic):
  scorer = PPLScorer.load(tiny, batch_size=4)
  bench = StructEvalBenchmark(load_struct(synthetic.path)[:4], style='ppl')
  prompts = [bench.prompt(i, scorer)[0] for i in range(len(bench))]
  want = np.zeros((len(prompts), 4))
  for k, letter in enumerate('ABCD'):  # one call per letter: the shapes of the scorer's own calls
    full = [scorer.tokenizer.encode(p.text + f'\nAnswer: {letter}').ids for p in prompts]
    by_hand = score(scorer.module, scorer.params, [ids[:1] for ids in full], [ids[1:] for ids in full])
    # OpenCompass's loss: the NLL summed over tokens 2..L, divided by L.
    want[:, k] = [-float(np.sum(lp, dtype=np.float64)) / len(ids) for lp, ids in zip(by_hand, full)]
  got = scorer.losses(prompts, exact=True)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  fast = scorer.losses(prompts)  # the shared prefix term left out: a constant per prompt here
  shift = fast - got
  np.testing.assert_allclose(shift, shift[:, :1] * np.ones((1, 4)), atol=1e-5)
  assert scorer.respond(prompts) == ['ABCD'[int(i)] for i in np.argmin(want, axis=1)]


def test_ppl_program_end_to_end(tiny, synthetic, tmp_path):
  one_seed = tmp_path / 'struct_one' / 'test_v1_m.json'  # the first seed's 8 items: two calls of 4
  one_seed.parent.mkdir()
  one_seed.write_text(json.dumps(json.load(open(synthetic.path))[:1]))
  config = get_config()
  config.data_file, config.checkpoint, config.batch_size, config.progress_bar = str(one_seed), tiny, 4, False
  s = PROGRAMS['ppl'](config, str(tmp_path / 'w'))
  records = [json.loads(line) for line in open(tmp_path / 'w' / 'responses.jsonl')]
  assert s['n'] == 8 and s['style'] == 'ppl' and s['unmatched'] == 0
  assert sorted(r['id'] for r in records) == list(range(8)) and {r['response'] for r in records} <= set('ABCD')
  assert json.load(open(tmp_path / 'w' / 'run_info.json'))['style'] == 'ppl'
  with pytest.raises(ValueError, match='PPL scoring takes text prompts'):
    PPLScorer.load(tiny).encode(Prompt('x', assistant_prefix='y'))
