"""Benchmark reports: workdir/summary.json, summary.md (markdown tables) and summary.png (bar chart)."""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Table:
  """A markdown table; float cells print with one decimal."""
  title: str
  headers: Sequence[str]
  rows: Sequence[Sequence[Any]]


@dataclasses.dataclass(frozen=True)
class Chart:
  """Horizontal bars of percentages, one per category (in order); `groups` colours bars by a
  category's group, `lines` draws labelled reference values (overall score, baselines)."""
  title: str
  values: Mapping[str, float]
  xlabel: str
  groups: Mapping[str, str] | None = None
  lines: Mapping[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Scores:
  """A scored benchmark: the summary.json content, the markdown tables and the chart."""
  summary: dict
  tables: Sequence[Table]
  chart: Chart


def _cell(v: Any) -> str:
  if isinstance(v, float):
    return f'{v:.1f}'
  return str(v).replace('|', '\\|').replace('\n', ' ')


def markdown(title: str, tables: Sequence[Table]) -> str:
  """`# title` followed by each table under a `## title` heading."""
  out = [f'# {title}', '']
  for t in tables:
    out += [f'## {t.title}', '', '| ' + ' | '.join(t.headers) + ' |',
            '|' + '|'.join(['---'] * len(t.headers)) + '|']
    out += ['| ' + ' | '.join(_cell(v) for v in row) + ' |' for row in t.rows]
    out.append('')
  return '\n'.join(out)


def bar_chart(path: str, chart: Chart) -> None:
  """Writes `chart` as a PNG."""
  import matplotlib  # here, not at the top: the configs and launch.py import mmjax.evals and must start fast
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  names = list(chart.values)
  fig, ax = plt.subplots(figsize=(9, 2 + 0.28 * len(names)))
  groups = [chart.groups[n] for n in names] if chart.groups else [''] * len(names)
  palette = plt.get_cmap('tab10')
  colour = {g: palette(i % 10) for i, g in enumerate(dict.fromkeys(groups))}
  ax.barh(range(len(names)), [chart.values[n] for n in names], color=[colour[g] for g in groups])
  ax.set_yticks(range(len(names)), names, fontsize=7)
  ax.invert_yaxis()
  for (label, value), style in zip(chart.lines.items(), ('-', '--', ':', '-.') * 4):
    ax.axvline(value, color='black', linestyle=style, linewidth=1, label=f'{label} {value:.1f}')
  if chart.groups:
    for g, c in colour.items():
      ax.barh([0], [0], color=c, label=g)
  if chart.lines or chart.groups:
    ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  ax.set_xlim(0, 100)
  ax.set_xlabel(chart.xlabel)
  ax.set_title(chart.title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_reports(workdir: str, scores: Scores, title: str) -> dict[str, str]:
  """Writes summary.json, summary.md and summary.png into `workdir`; returns their paths."""
  os.makedirs(workdir, exist_ok=True)
  paths = {k: os.path.join(workdir, f'summary.{k}') for k in ('json', 'md', 'png')}
  with open(paths['json'], 'w', encoding='utf-8') as f:
    json.dump(scores.summary, f, indent=1, ensure_ascii=False)
  with open(paths['md'], 'w', encoding='utf-8') as f:
    f.write(markdown(title, scores.tables))
  bar_chart(paths['png'], scores.chart)
  return paths
