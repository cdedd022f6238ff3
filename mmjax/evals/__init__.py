"""mmjax.evals: the benchmark harness core.

A benchmark (`Benchmark`) loads its official data, builds `Prompt`s, extracts answers and scores;
a model plugs in as a `Responder`; `evaluate` runs it in resumable batches and `score_file` scores
saved responses; both write workdir/summary.json, summary.md and summary.png. A benchmark's config
starts from `benchmark_config()`, and its experiment module declares `PROGRAMS = benchmark_programs(task)`:
the `launch.py --mode generate|score` programs every benchmark shares.
"""
from mmjax import lazy_exports

# submodule -> the names it exports; a name's submodule is imported on its first use (mmjax.lazy_exports)
_EXPORTS = {
  'benchmark': ('Benchmark',),
  'choice': ('clean_response', 'match_choice', 'parse_options'),
  'config': ('benchmark_config', 'check_benchmark_config'),
  'fitting': ('subsample_images', 'truncate_left'),
  'guess': ('GuessResponder',),
  'math_grader': ('Disagreement', 'extract_boxed', 'grade_answer', 'grader_disagreements'),
  'metrics': ('accuracy', 'binary_f1', 'group_accuracy', 'group_mean', 'macro_f1', 'mean'),
  'programs': ('BenchmarkTask', 'benchmark_programs', 'run_generate', 'run_score'),
  'prompt': ('Prompt', 'Responder', 'fits'),
  'records': ('read_records',),
  'report': ('Chart', 'Scores', 'Table', 'write_reports'),
  'responses': ('ResponseLog', 'check_ids', 'format_ids', 'read_responses'),
  'runner': ('evaluate', 'generate', 'score_file'),
  'sql_pool': ('ExecResult', 'SqlPool'),
  'text2sql': ('Verdict', 'bird_verdict', 'score_bird', 'score_spider', 'spider_hardness', 'spider_verdict'),
}
__all__ = [name for names in _EXPORTS.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
