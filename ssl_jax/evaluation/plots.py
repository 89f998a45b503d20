"""The benchmark's four figures (matplotlib, Agg: no display needed).

Each plot is `fn(summary, path, *, title, references)`, where `summary` is
`jobs.report.summarise_benchmark`'s rows (one per method, protocol and
label fraction, with mean ± sd over seeds) and `references` the published
rows of `published.for_dataset`. They answer the review's questions:
(a) how much does pretraining help over training from scratch, per label
budget; (b) which strategy helps most on this task; (c) does fine-tuning
end to end beat frozen features; (d) how does each method scale with labels.
Beside them, `monitor_curve`: pretraining epochs vs the monitor's val AUROC
(evaluation/monitor.py), to see when a pretraining run plateaus.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from ssl_jax import files  # noqa: E402
from ssl_jax.evaluation.protocols import FROZEN, PARTIAL, kinds  # noqa: E402
from ssl_jax.evaluation.taxonomy import (CATEGORY_LABELS,  # noqa: E402
                                         CATEGORY_ORDER, SCRATCH)

Row = dict
DPI = 110
CATEGORY_COLORS = dict(zip(CATEGORY_ORDER, plt.get_cmap("tab10").colors))
# The protocol the strategy comparison (b) reads: end-to-end fine-tuning,
# the review's usual comparison; methods without it show their own protocol.
STRATEGY_PROTOCOL = "finetune"


def _ordered(values: Sequence, order: Sequence) -> list:
  unique = list(dict.fromkeys(values))
  return sorted(unique, key=lambda v: order.index(v) if v in order else len(order))


def _fractions(summary: list[Row]) -> list[float]:
  return sorted({r["fraction"] for r in summary})


def _methods(summary: list[Row]) -> list[str]:
  """Methods by review category, then in sweep order."""
  first = {}
  for r in summary:
    first.setdefault(r["method"], r["category"])
  return sorted(first, key=lambda m: (
      CATEGORY_ORDER.index(first[m]) if first[m] in CATEGORY_ORDER
      else len(CATEGORY_ORDER)))


def _grid(n: int, title: str, width: float = 5.0, height: float = 3.8,
          columns: int = 3):
  """Panels in rows of at most `columns`; unused ones are hidden."""
  n = max(n, 1)
  cols, rows = min(n, columns), -(-n // columns)
  fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows),
                           squeeze=False)
  fig.suptitle(title)
  axes = axes.ravel()
  for ax in axes[n:]:
    ax.set_axis_off()
  return fig, axes[:n]


def _save(fig, path: str) -> None:
  """Written beside and renamed (files.atomic_open): a job killed mid-save
  leaves the previous figure, never half a PNG."""
  try:
    fig.tight_layout()
    with files.atomic_open(path, "wb") as f:
      fig.savefig(f, dpi=DPI, format=os.path.splitext(path)[1][1:] or "png")
  finally:
    plt.close(fig)


def _empty(ax, text: str) -> None:
  ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True,
          transform=ax.transAxes)
  ax.set_axis_off()


def _auroc(row: Row) -> tuple[float, tuple[float, float]]:
  """(mean, (below, above)): ± sd over seeds, or for a single seed the
  bootstrap CI of the test AUROC."""
  mean, sd = row["auroc"]
  if row["seeds"] > 1:
    return mean, (sd, sd)
  low, high = row["ci"]
  return mean, (max(mean - low, 0.0), max(high - mean, 0.0))


def _auroc_axis(ax, rows: list[Row]) -> None:
  """0.4..1 unless something lies lower (tiny test models do)."""
  lowest = min((_auroc(r)[0] - _auroc(r)[1][0] for r in rows), default=0.5)
  ax.set_ylim(max(0.0, min(0.4, lowest - 0.05)), 1.0)
  ax.set_ylabel("test AUROC")


def _bars(ax, keys: list, labels: list[str], groups: list[str], value, *,
          colors=None, hatches=None) -> None:
  """Grouped bars: one group per key (ticks `labels`), one bar per `groups`
  entry; `value(key, group)` -> (mean, (below, above)) or None (no bar)."""
  width = 0.8 / max(len(groups), 1)
  x = np.arange(len(keys))
  for j, group in enumerate(groups):
    vals = [value(key, group) for key in keys]
    means = [v[0] if v else np.nan for v in vals]
    errs = np.array([v[1] if v else (0.0, 0.0) for v in vals]).T
    ax.bar(x + (j - (len(groups) - 1) / 2) * width, means, width, yerr=errs,
           capsize=2, label=group,
           color=colors[j] if colors else None,
           hatch=hatches[j] if hatches else None, edgecolor="black",
           linewidth=0.5)
  ax.set_xticks(x, labels)


def relative_to_scratch(summary: list[Row], path: str, *, title: str,
                        references=()) -> None:
  """(a) Relative AUROC difference (%) vs from scratch, per method and label
  fraction, one panel per protocol; bars are mean ± sd of paired deltas."""
  del references
  rows = [r for r in summary if r["delta"] is not None]
  kind = kinds()
  protocols = _ordered([r["protocol"] for r in rows], list(kind))
  fig, axes = _grid(len(protocols), f"{title}: test AUROC vs from scratch")
  if not rows:
    _empty(axes[0], "no from-scratch baseline in this sweep (method "
           f"'{SCRATCH[0]}' with protocol '{SCRATCH[1]}')")
  fractions = _fractions(summary)
  for ax, protocol in zip(axes, protocols):
    sub = {(r["method"], r["fraction"]): (r["delta"][0], (r["delta"][1],) * 2)
           for r in rows if r["protocol"] == protocol}
    methods = _methods([r for r in rows if r["protocol"] == protocol])
    _bars(ax, fractions, [f"{f:.0%}" for f in fractions], methods,
          lambda f, m: sub.get((m, f)),
          colors=[CATEGORY_COLORS.get(_category(summary, m), "grey")
                  for m in methods])
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_title(f"{protocol} ({kind.get(protocol, '?')})")
    ax.set_xlabel("labelled fraction of the training set")
    ax.set_ylabel("Δ test AUROC vs scratch (%)")
    ax.legend(fontsize=7)
  _save(fig, path)


def _category(summary: list[Row], method: str) -> str:
  return next(r["category"] for r in summary if r["method"] == method)


def strategies(summary: list[Row], path: str, *, title: str,
               references=()) -> None:
  """(b) Test AUROC per method, coloured by the review's category (four
  strategies, combined, supervised, and none = scratch), one panel per label
  fraction; published rows as dashed lines on the 100% panel."""
  fractions = _fractions(summary)
  fig, axes = _grid(len(fractions), f"{title}: strategies compared "
                    f"({STRATEGY_PROTOCOL} where run)", width=5.5)
  methods = _methods(summary)
  for ax, fraction in zip(axes, fractions):
    at = [r for r in summary if r["fraction"] == fraction]
    chosen = []
    for m in methods:
      rows = [r for r in at if r["method"] == m]
      if rows:
        best = next((r for r in rows if r["protocol"] == STRATEGY_PROTOCOL), rows[0])
        chosen.append(best)
    x = np.arange(len(chosen))
    ax.bar(x, [_auroc(r)[0] for r in chosen],
           yerr=np.array([_auroc(r)[1] for r in chosen]).T,
           capsize=3, edgecolor="black", linewidth=0.5,
           color=[CATEGORY_COLORS.get(r["category"], "grey") for r in chosen])
    ax.set_xticks(x, [r["method"] if r["protocol"] == STRATEGY_PROTOCOL
                      else f"{r['method']}\n({r['protocol']})" for r in chosen],
                  rotation=30, ha="right", fontsize=8)
    if fraction == 1.0:
      for ref in references:
        ax.axhline(ref.auroc, linestyle="--", color="grey", linewidth=0.8)
        ax.text(len(chosen) - 0.5, ref.auroc, f"{ref.model} (published)",
                fontsize=6, ha="right", va="bottom")
    _auroc_axis(ax, chosen)
    ax.set_title(f"{fraction:.0%} labels")
  cats = _ordered([r["category"] for r in summary], list(CATEGORY_ORDER))
  handles = [plt.Rectangle((0, 0), 1, 1, color=CATEGORY_COLORS.get(c, "grey"))
             for c in cats]
  fig.legend(handles, [CATEGORY_LABELS.get(c, c) for c in cats],
             loc="lower center", ncol=min(len(cats), 4), fontsize=7)
  fig.subplots_adjust(bottom=0.3, top=0.82)
  fig.savefig(path, dpi=DPI, bbox_inches="tight")
  plt.close(fig)


def protocols(summary: list[Row], path: str, *, title: str,
              references=()) -> None:
  """(c) End-to-end vs frozen-feature protocols: test AUROC per method, one
  bar per protocol (hatched = frozen features), one panel per fraction."""
  del references
  fractions = _fractions(summary)
  kind = kinds()
  names = _ordered([r["protocol"] for r in summary], list(kind))
  colors = plt.get_cmap("Set2").colors
  hatches = ["//" if kind.get(p) == FROZEN else
             (".." if kind.get(p) == PARTIAL else "") for p in names]
  fig, axes = _grid(len(fractions), f"{title}: end-to-end vs frozen features",
                    width=6.0)
  methods = _methods(summary)
  for ax, fraction in zip(axes, fractions):
    at = [r for r in summary if r["fraction"] == fraction]
    table = {(r["method"], r["protocol"]): _auroc(r) for r in at}
    _bars(ax, methods, methods, names, lambda m, p: table.get((m, p)),
          colors=[colors[i % len(colors)] for i in range(len(names))],
          hatches=hatches)
    ax.set_xticks(ax.get_xticks(), methods, rotation=30, ha="right", fontsize=8)
    _auroc_axis(ax, at)
    ax.set_title(f"{fraction:.0%} labels")
  axes[-1].legend([f"{p} ({kind.get(p, '?')})" for p in names],
                  fontsize=7)
  _save(fig, path)


def label_efficiency(summary: list[Row], path: str, *, title: str,
                     references=()) -> None:
  """(d) Test AUROC vs labelled fraction (log x), one line per method, one
  panel per protocol. Bands: ± sd over seeds when there are several, else
  the test-set bootstrap CI (as every error bar here). Published rows as
  dashed lines."""
  kind = kinds()
  names = _ordered([r["protocol"] for r in summary], list(kind))
  fig, axes = _grid(len(names), f"{title}: label efficiency")
  for ax, protocol in zip(axes, names):
    rows = [r for r in summary if r["protocol"] == protocol]
    for method in _methods(rows):
      line = sorted((r for r in rows if r["method"] == method),
                    key=lambda r: r["fraction"])
      x = [r["fraction"] for r in line]
      mean = np.array([_auroc(r)[0] for r in line])
      low = mean - np.array([_auroc(r)[1][0] for r in line])
      high = mean + np.array([_auroc(r)[1][1] for r in line])
      color = CATEGORY_COLORS.get(line[0]["category"], "grey")
      ax.plot(x, mean, marker="o", label=method, color=color)
      ax.fill_between(x, low, high, alpha=0.2, color=color)
    for ref in references:
      ax.axhline(ref.auroc, linestyle="--", color="grey", linewidth=0.8)
      ax.text(min(r["fraction"] for r in rows), ref.auroc, f"{ref.model} (published)", fontsize=6, va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("labelled fraction of the training set")
    ax.set_ylabel("test AUROC")
    ax.set_title(f"{protocol} ({kind.get(protocol, '?')})")
    ax.legend(fontsize=7)
  _save(fig, path)


# report.md names the files after these keys: (a), (b), (c), (d).
PLOTS: dict[str, Callable[..., None]] = {
    "relative_to_scratch": relative_to_scratch,
    "strategies": strategies,
    "protocols": protocols,
    "label_efficiency": label_efficiency,
}


def monitor_curve(curve: dict, path: str, *, title: str) -> None:
  """Pretraining epochs vs validation AUROC, one line per monitor protocol
  (`monitor.curve`'s dict), the best step of the first one ringed: where
  the line flattens, more pretraining stops paying."""
  fig, axes = _grid(1, title, width=6.0, height=4.0)
  ax, history = axes[0], curve["history"]
  if not history:
    _empty(ax, "no monitored step was logged")
  for protocol in curve["protocols"]:
    points = [(h["epoch"], h[f"{protocol}_auroc"]) for h in history
              if f"{protocol}_auroc" in h]
    if points:
      ax.plot(*zip(*points), marker="o", markersize=3, label=protocol)
  best = curve.get("best")
  if best:
    ax.plot([best["epoch"]], [best[curve["metric"]]], marker="o",
            markersize=10, fillstyle="none", color="black",
            label=f"best {curve['metric']}: step {best['step']}")
  if history:
    ax.set_xlabel("pretraining epochs")
    ax.set_ylabel("val AUROC (frozen features)")
    ax.legend(fontsize=7)
  _save(fig, path)
