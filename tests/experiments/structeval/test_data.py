"""StructEval readers: the released v1 layout, the official flattening and ids, and errors that name the seed."""
import json
import os

import pytest

from experiments.structeval.data import LEVELS, load_struct, read_dev, struct_files

# Paraphrased records in the release's shape (StructOpenBookQA and a StructMMLU subject).
BLOOM = {'level': 'remembering', 'question': 'Who first studied personal finance?', 'A': 'Ann', 'B': 'Bo', 'C': 'Cy',
         'D': 'Di', 'answer': 'C', 'topic_wiki_name': 'Personal finance', 'topic_wiki_id': '341987'}
CONCEPT = {'question': 'Where does tule fog form?', 'A': 'Valleys', 'B': 'Peaks', 'C': 'Seas', 'D': 'Deserts',
           'answer': 'A', 'concept_wiki_name': 'Tule fog', 'concept_wiki_id': '2294750'}


def seed(question, bloom=(), concept=(), subject='8-343', answer=1):
  return {'question': question, 'choices': ['w', 'x', 'y', 'z'], 'answer': answer, 'subject': subject,
          'bloom_questions': list(bloom), 'concept_questions': list(concept)}


def level(name, question):
  return {**BLOOM, 'level': name, 'question': question}


def write(path, records):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(records, f)
  return str(path)


@pytest.fixture
def struct_data(tmp_path):
  root = tmp_path / 'struct_data'
  obqa = [seed('Saving for a vacation?', [level('remembering', 'q0'), level('creating', 'q1'),
                                          level('remembering', 'q2')], [CONCEPT, {**CONCEPT, 'question': 'q4'},
                                                                   {**CONCEPT, 'question': 'q6',
                                                                    'concept_wiki_name': 'Fog'}]),
          seed('Seed without items'),
          seed('Third', [level('analyzing', 'q5')])]
  write(root / 'struct_openbookqa' / 'test_v1_gpt-4o-mini.json', obqa)
  write(root / 'struct_openbookqa' / 'dev.json', [{'question': 'd', 'choices': ['a', 'b', 'c', 'd'], 'answer': 3,
                                                   'idx': 0}])
  anatomy = [seed('Bones?', [level('understanding', 'm0')], [{**CONCEPT, 'question': 'm1'}], subject='anatomy')]
  write(root / 'struct_mmlu' / 'anatomy' / 'test_v1_gpt-4o-mini.json', anatomy)
  return root


def test_official_order_ids_and_sources(struct_data):
  items = load_struct(str(struct_data))
  assert [i.id for i in items] == [
      'struct_mmlu/anatomy/0-bloom-understand-0', 'struct_mmlu/anatomy/0-concept-0-0',
      'struct_openbookqa/0-bloom-remember-0', 'struct_openbookqa/0-bloom-create-0',
      'struct_openbookqa/0-bloom-remember-1', 'struct_openbookqa/0-concept-0-0',
      'struct_openbookqa/0-concept-0-1', 'struct_openbookqa/0-concept-1-0', 'struct_openbookqa/2-bloom-analyze-0']
  assert [i.question for i in items] == ['m0', 'm1', 'q0', 'q1', 'q2', 'Where does tule fog form?', 'q4', 'q6', 'q5']
  first = items[0]
  assert (first.dataset, first.subject, first.kind, first.level, first.seed_key) == (
      'struct_mmlu', 'anatomy', 'bloom', 'understanding', 'struct_mmlu/anatomy/0')
  concept = items[5]
  assert (concept.kind, concept.concept, concept.level, concept.wiki_id, concept.answer) == (
      'concept', 'Tule fog', '', '2294750', 'A')
  assert concept.options == {'A': 'Valleys', 'B': 'Peaks', 'C': 'Seas', 'D': 'Deserts'}
  assert all(i.level in LEVELS for i in items if i.kind == 'bloom') and len({i.id for i in items}) == len(items)


def test_seeds_follow_the_struct_items(struct_data):
  items = load_struct(str(struct_data / 'struct_openbookqa'), include_seeds=True)
  assert [i.kind for i in items] == ['bloom'] * 3 + ['concept'] * 3 + ['bloom'] + ['seed'] * 3
  seeds = items[7:]
  assert [s.id for s in seeds] == ['struct_openbookqa/0-seed', 'struct_openbookqa/1-seed', 'struct_openbookqa/2-seed']
  assert seeds[0].answer == 'B' and seeds[0].options == {'A': 'w', 'B': 'x', 'C': 'y', 'D': 'z'}
  assert load_struct(str(struct_data / 'struct_openbookqa')) == items[:7]


def test_a_single_file_keeps_its_mmlu_subject(struct_data):
  mmlu = struct_data / 'struct_mmlu' / 'anatomy' / 'test_v1_gpt-4o-mini.json'
  assert struct_files(str(mmlu)) == [(str(mmlu), 'struct_mmlu/anatomy')]
  obqa = struct_data / 'struct_openbookqa' / 'test_v1_gpt-4o-mini.json'
  assert [i.source for i in load_struct(str(obqa))] == ['struct_openbookqa'] * 7


def test_seed_idx_names_the_seed(tmp_path):
  record = {**seed('S', [BLOOM]), 'idx': 17}
  (item,) = load_struct(write(tmp_path / 'struct_x' / 'f.json', [record]))
  assert item.id == 'struct_x/17-bloom-remember-0' and item.seed == 17


def test_duplicate_seed_idx_is_an_error(tmp_path):
  records = [{**seed('S', [BLOOM]), 'idx': 3}, {**seed('T', [BLOOM]), 'idx': 3}]
  with pytest.raises(ValueError, match="1 item ids occur more than once .*'struct_x/3-bloom-remember-0'"):
    load_struct(write(tmp_path / 'struct_x' / 'f.json', records))


def test_generator_output_keeps_its_question_ids(tmp_path):
  """struct_<split>_<model>.json as struct_generate/data_combine.py writes it: Bloom questions under level keys,
  concept questions under entities, official ids in question_idx (k counts before the RAG filter)."""
  record = {'question': 'Reflexes?', 'choices': ['a', 'b', 'c', 'd'], 'answer': 2, 'subject': 'clinical_knowledge',
            'idx': 5, 'topic_wiki_info': {'wiki_id': '381186', 'wiki_name': 'Reflex'},
            'bloom_questions': {'understand': [{**level('understanding', 'u'), 'question_idx': '5-bloom-understand-0'}],
                                'create': [{**level('creating', 'c'), 'question_idx': '5-bloom-create-3'}]},
            'entities': [{'name': 'knee reflex', 'wiki_info': {'wiki_id': '77'}, 'entity_idx': 0,
                          'concept_questions': [{**CONCEPT, 'question_idx': '5-concept-0-2'}]},
                         {'name': 'unmatched', 'concept_questions': []}]}
  for q in record['bloom_questions'].values():
    del q[0]['topic_wiki_id']
  items = load_struct(write(tmp_path / 'struct_mmlu' / 'clinical_knowledge' / 'struct_test_gpt-4o-mini.json', [record]),
                      include_seeds=True)
  assert [(i.id, i.kind, i.level, i.concept, i.wiki_id) for i in items] == [
      ('struct_mmlu/clinical_knowledge/5-bloom-understand-0', 'bloom', 'understanding', '', '381186'),
      ('struct_mmlu/clinical_knowledge/5-bloom-create-3', 'bloom', 'creating', '', '381186'),
      ('struct_mmlu/clinical_knowledge/5-concept-0-2', 'concept', '', 'knee reflex', '77'),
      ('struct_mmlu/clinical_knowledge/5-seed', 'seed', '', '', '')]
  del record['entities'][0]['concept_questions'][0]['A']
  with pytest.raises(ValueError, match=r"seed 0: entities\[0\]: concept_questions\[0\]: missing field 'A'"):
    load_struct(write(tmp_path / 'struct_z' / 'struct_test_m.json', [record]))


def test_read_dev(struct_data):
  (s,) = read_dev(str(struct_data / 'struct_openbookqa' / 'dev.json'))
  assert (s.question, s.choices, s.answer, s.idx) == ('d', ('a', 'b', 'c', 'd'), 3, 0)


@pytest.mark.parametrize('edit, message', [
    (lambda r: r[1]['bloom_questions'][1].pop('answer'), r"seed 1: bloom_questions\[1\]: missing field 'answer'"),
    (lambda r: r[0]['concept_questions'][0].pop('concept_wiki_name'),
     r"seed 0: concept_questions\[0\]: missing field 'concept_wiki_name'"),
    (lambda r: r[1].pop('bloom_questions'), r"seed 1: missing field 'bloom_questions'"),
    (lambda r: r[1]['bloom_questions'][0].update(level='knowing'), r"seed 1: bloom_questions\[0\]: field 'level'"),
    (lambda r: r[0]['concept_questions'][0].update(answer='E'), r"seed 0: concept_questions\[0\]: field 'answer'"),
    (lambda r: r[1].update(choices=['a', 'b']), r"seed 1: field 'choices' must hold 4 strings"),
])
def test_bad_fields_name_the_file_and_seed(tmp_path, edit, message):
  records = [seed('S0', [BLOOM], [CONCEPT]), seed('S1', [BLOOM, level('applying', 'q')])]
  records = json.loads(json.dumps(records))  # no dict shared between seeds
  edit(records)
  path = write(tmp_path / 'struct_x' / 'test_v1_m.json', records)
  with pytest.raises(ValueError, match=f'{path}: {message}'):
    load_struct(path)


def test_empty_and_missing_inputs(tmp_path):
  with pytest.raises(FileNotFoundError, match='no such StructEval file or folder'):
    load_struct(str(tmp_path / 'nope'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='no struct files'):
    load_struct(str(tmp_path / 'empty'))
  with pytest.raises(ValueError, match='no Bloom or concept questions'):
    load_struct(write(tmp_path / 'struct_y' / 'f.json', [seed('S')]))
