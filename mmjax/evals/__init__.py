"""mmjax.evals: the benchmark harness core.

A benchmark (`Benchmark`) loads its official data, builds `Prompt`s, extracts answers and scores;
a model plugs in as a `Responder`; `evaluate` runs it in resumable batches and `score_file` scores
saved responses; both write workdir/summary.json, summary.md and summary.png. A benchmark's config
starts from `benchmark_config()`, and its experiment module declares `PROGRAMS = benchmark_programs(task)`:
the `launch.py --mode generate|score` programs every benchmark shares.
"""
from mmjax.evals.benchmark import Benchmark
from mmjax.evals.choice import clean_response, match_choice, parse_options
from mmjax.evals.config import benchmark_config, check_benchmark_config
from mmjax.evals.fitting import subsample_images, truncate_left
from mmjax.evals.guess import GuessResponder
from mmjax.evals.metrics import accuracy, binary_f1, group_accuracy, group_mean, macro_f1, mean
from mmjax.evals.programs import BenchmarkTask, benchmark_programs, run_generate, run_score
from mmjax.evals.prompt import Prompt, Responder, fits
from mmjax.evals.records import read_records
from mmjax.evals.report import Chart, Scores, Table, write_reports
from mmjax.evals.responses import ResponseLog, check_ids, format_ids, read_responses
from mmjax.evals.runner import evaluate, generate, score_file

__all__ = [
    'Benchmark', 'BenchmarkTask', 'Chart', 'GuessResponder', 'Prompt', 'Responder', 'ResponseLog', 'Scores', 'Table',
    'accuracy', 'benchmark_config', 'benchmark_programs', 'binary_f1', 'check_benchmark_config', 'check_ids',
    'clean_response', 'evaluate', 'fits', 'format_ids', 'generate', 'group_accuracy', 'group_mean', 'macro_f1',
    'match_choice', 'mean', 'parse_options', 'read_records', 'read_responses', 'run_generate', 'run_score',
    'score_file', 'subsample_images', 'truncate_left', 'write_reports',
]
