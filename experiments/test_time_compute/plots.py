"""The paper's figures as PNGs (matplotlib, Agg backend): accuracy vs generation budget per strategy (Fig. 3),
the same per difficulty bin (Fig. 4), and the compute-optimal curve against the best fixed strategy (Fig. 2)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _budget_axis(ax, budgets: Sequence[int]) -> None:
  ax.set_xscale('log', base=2)
  ax.set_xticks(budgets, [str(b) for b in budgets])
  ax.set_xlabel('generation budget')
  ax.set_ylabel('accuracy')
  ax.grid(alpha=0.3)


def write_all(workdir: str, selected: dict[str, Any], names: Sequence[str], acc: np.ndarray, bins: np.ndarray,
              n_bins: int) -> list[str]:
  """acc [S, Q, B] (weighted selection), bins [Q] (1 = easiest). Returns the written file names."""
  budgets = selected['budgets']
  files = []

  fig, ax = plt.subplots(figsize=(6, 4))
  for i, name in enumerate(names):
    ax.plot(budgets, acc[i].mean(axis=0), marker='o', label=f'{name} (weighted)')
  ax.plot(budgets, [selected['best_of_n_majority'][str(b)] for b in budgets], 'k--', label='best_of_n (majority)')
  _budget_axis(ax, budgets)
  ax.legend(fontsize=7)
  files.append('accuracy_vs_budget.png')
  fig.savefig(os.path.join(workdir, files[-1]), dpi=100, bbox_inches='tight')
  plt.close(fig)

  fig, axes = plt.subplots(1, n_bins, figsize=(3 * n_bins, 3), sharey=True)
  for b, ax in enumerate(np.atleast_1d(axes), start=1):
    members = bins == b
    for i, name in enumerate(names):
      if members.any():
        ax.plot(budgets, acc[i][members].mean(axis=0), marker='o', label=name)
    ax.set_title(f'bin {b}')
    _budget_axis(ax, budgets)
  np.atleast_1d(axes)[0].legend(fontsize=6)
  files.append('accuracy_by_bin.png')
  fig.savefig(os.path.join(workdir, files[-1]), dpi=100, bbox_inches='tight')
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(budgets, selected['compute_optimal_pass1']['accuracy'], marker='o', label='compute-optimal (oracle bins)')
  ax.plot(budgets, selected['compute_optimal_mean_score']['accuracy'], marker='s',
          label='compute-optimal (predicted bins)')
  ax.plot(budgets, selected['best_fixed']['accuracy'], 'k--', marker='^', label='best fixed strategy (hindsight)')
  if 'fixed_cv' in selected:
    ax.plot(budgets, selected['fixed_cv']['accuracy'], 'k:', marker='v', label='best fixed strategy (held out)')
  _budget_axis(ax, budgets)
  ax.legend(fontsize=8)
  files.append('compute_optimal.png')
  fig.savefig(os.path.join(workdir, files[-1]), dpi=100, bbox_inches='tight')
  plt.close(fig)
  return files
