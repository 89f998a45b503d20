"""Results -> the tables, CSV and plots a job writes (mean ± sd over seeds).

The finetune job writes one Markdown table (`markdown_table`); the benchmark
job writes report.md, results.csv and four PNGs (`write_benchmark_report`,
plots in ssl_jax/evaluation/plots.py).
"""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import numpy as np

from ssl_jax import files
from ssl_jax.evaluation.metrics import mean_sd
from ssl_jax.evaluation import protocols
from ssl_jax.evaluation.taxonomy import CATEGORY_LABELS, SCRATCH

METRICS = (("auroc", "AUROC"), ("accuracy", "ACC"),
           ("balanced_accuracy", "balanced ACC"), ("f1", "macro F1"))
NAN = float("nan")  # a metric cells stored before it existed lack


def stage2_length(meta: dict) -> str:
  """'100 epochs' of an epoch-based stage 2, else its fixed step count."""
  epochs = meta.get("finetune_epochs", 0)
  return f"{epochs:g} epochs" if epochs else f"{meta['finetune_steps']} steps"


def _cell(values: list[float]) -> str:
  mean, sd = mean_sd(values)
  return f"{mean:.3f} ± {sd:.3f}" if len(values) > 1 else f"{mean:.3f}"


def summarise(results: dict[str, Any]) -> list[dict[str, Any]]:
  """One row per (protocol, fraction): test metrics over seeds."""
  groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
  for cell in results["cells"].values():
    groups[(cell["protocol"], cell["fraction"])].append(cell)
  rows = []
  for (protocol, fraction), cells in groups.items():
    row = {"protocol": protocol, "fraction": fraction,
           "n_train": cells[0]["n_train"], "seeds": len(cells)}
    for key, _ in METRICS:
      row[key] = [c["test"].get(key, NAN) for c in cells]
    rows.append(row)
  order = list(protocols.labels())
  rows.sort(key=lambda r: (r["fraction"], order.index(r["protocol"])
                           if r["protocol"] in order else len(order)))
  return rows


THRESHOLD_NOTES = {
    "medmnist": "ACC, balanced ACC and F1 at the 0.5 threshold (MedMNIST's).",
    "val_balanced": "ACC, balanced ACC and F1 at each cell's cut-off with the "
                    "best balanced accuracy on validation (test only applies it).",
    "val_prior": "ACC, balanced ACC and F1 at each cell's cut-off that calls as "
                 "many validation images positive as validation holds (test "
                 "only applies it).",
}


def threshold_note(meta: dict) -> str:
  """How thresholded metrics were cut (results written before the choice
  existed were cut at 0.5)."""
  return THRESHOLD_NOTES[meta.get("decision_threshold", "medmnist")]


def markdown_table(results: dict[str, Any]) -> str:
  rows = summarise(results)
  seeds = max((r["seeds"] for r in rows), default=0)
  title = (f"{results['dataset']} ({results['image_size']} px, "
           f"{results['task']}) — test set, "
           f"{'mean ± sd over ' + str(seeds) + ' seeds' if seeds > 1 else '1 seed'}; "
           f"pretraining: {results.get('pretrain_objective') or 'none'}")
  labels = protocols.labels()
  lines = [title, "",
           "| labels | n train | protocol | " + " | ".join(n for _, n in METRICS) + " |",
           "|---:|---:|---|" + "---:|" * len(METRICS)]
  for r in rows:
    lines.append(f"| {r['fraction']:.0%} | {r['n_train']} | "
                 f"{labels.get(r['protocol'], r['protocol'])} | "
                 + " | ".join(_cell(r[k]) for k, _ in METRICS) + " |")
  lines += ["", threshold_note(results)]
  return "\n".join(lines) + "\n"


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
  """One results dict from several runs of the same setup (e.g. one per
  seed); cells are keyed by protocol|fraction|seed, so they do not collide."""
  merged = dict(results[0], cells={})
  for r in results:
    for key in ("dataset", "task", "pretrain_objective"):
      if r.get(key) != merged.get(key):
        raise ValueError(f"cannot merge runs with different {key}: "
                         f"{r.get(key)!r} vs {merged.get(key)!r}")
    overlap = set(merged["cells"]) & set(r["cells"])
    if overlap:
      raise ValueError(f"runs share cells {sorted(overlap)}: use distinct seeds")
    merged["cells"].update(r["cells"])
  return merged


# ------------------------------------------------------------------ benchmark
CSV_COLUMNS = (
    "method", "category", "augment_policy", "protocol", "fraction", "seed", "n_train",
    "test_auroc", "test_auroc_ci_low", "test_auroc_ci_high", "test_accuracy",
    "test_balanced_accuracy", "test_f1", "test_sensitivity", "test_specificity", "val_auroc",
    "test_auroc_per_class")


def pretrain_stats(workdir: str) -> dict[str, dict[str, Any]]:
  """Per method pretrained in `workdir`/pretrain/<method>/seed<k>: the view
  policy it trained with, its median images/s (compile excluded; logged
  intervals of every seed) and mean seconds per run. Read from the runs'
  own files, so a report rebuilt later shows the same numbers."""
  import glob
  import json
  out = {}
  for method_dir in sorted(glob.glob(os.path.join(workdir, "pretrain", "*"))):
    seconds, rates, policies = [], [], set()
    for run in sorted(glob.glob(os.path.join(method_dir, "seed*"))):
      summary = files.read_json(os.path.join(run, "pretrain_summary.json"))
      if summary is None:
        continue  # unfinished: resumes on the next invocation
      seconds.append(summary["seconds"])
      policies.add(files.read_json(os.path.join(run, "config.json"))
                   ["augment"]["policy"])
      with open(os.path.join(run, "metrics.jsonl")) as f:
        rates += [row["train/images_per_sec"] for row in map(json.loads, f)
                  if "train/images_per_sec" in row]
    if seconds:
      out[os.path.basename(method_dir)] = {
          "augment_policy": "/".join(sorted(policies)),
          "images_per_sec": float(np.median(rates)) if rates else float("nan"),
          "seconds": float(np.mean(seconds)), "runs": len(seconds)}
  return out


def _policy(method: str, stats: dict[str, dict]) -> str:
  """The pretraining view policy of a method ('a+b' for a combination)."""
  parts = [stats.get(m, {}).get("augment_policy", "") for m in method.split("+")]
  return "+".join(p for p in parts if p)


def benchmark_rows(cells: dict[str, dict], meta: dict) -> list[dict]:
  """One flat row per cell (the rows of results.csv), in sweep order:
  methods and protocols as configured, then fraction, then seed."""
  methods = list(meta["methods"])
  stats = meta.get("pretrain", {})
  protocols = list(meta["protocols"])
  rows = []
  for cell in cells.values():
    test = cell["test"]
    low, high = test.get("auroc_ci", (float("nan"), float("nan")))
    rows.append({
        "method": cell["method"],
        "category": meta["methods"].get(cell["method"], {}).get("category", ""),
        "augment_policy": _policy(cell["method"], stats),
        "protocol": cell["protocol"], "fraction": cell["fraction"],
        "seed": cell["seed"], "n_train": cell["n_train"],
        "test_auroc": test["auroc"], "test_auroc_ci_low": low,
        "test_auroc_ci_high": high, "test_accuracy": test["accuracy"],
        "test_balanced_accuracy": test.get("balanced_accuracy", ""),
        "test_f1": test["f1"],
        "test_sensitivity": test.get("sensitivity", ""),
        "test_specificity": test.get("specificity", ""),
        "val_auroc": cell["val"]["auroc"],
        "test_auroc_per_class": ";".join(
            repr(v) for v in test.get("auroc_per_class", ())),
    })

  def order(row):
    return (_index(methods, row["method"]), _index(protocols, row["protocol"]),
            row["fraction"], row["seed"])
  return sorted(rows, key=order)


def _index(seq: list, item) -> int:
  return seq.index(item) if item in seq else len(seq)


def to_csv(rows: list[dict]) -> str:
  """results.csv: full-precision numbers, no timings, so two runs of the
  same sweep (one killed and resumed) give the same bytes."""
  import csv
  import io
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  return buf.getvalue()


def summarise_benchmark(rows: list[dict]) -> list[dict]:
  """One row per (method, protocol, fraction): mean ± sd over seeds, the
  mean bootstrap CI bounds, and the paired relative difference (in %) of
  test AUROC vs the from-scratch baseline of the same fraction and seed."""
  scratch = {(r["fraction"], r["seed"]): r["test_auroc"] for r in rows
             if (r["method"], r["protocol"]) == SCRATCH}
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault((r["method"], r["protocol"], r["fraction"]), []).append(r)
  out = []
  for (method, protocol, fraction), group in groups.items():
    deltas = [100.0 * (r["test_auroc"] - scratch[(fraction, r["seed"])])
              / scratch[(fraction, r["seed"])] for r in group
              if (fraction, r["seed"]) in scratch]
    per_class = [[float(v) for v in r["test_auroc_per_class"].split(";")]
                 for r in group if r["test_auroc_per_class"]]
    out.append({
        "method": method, "category": group[0]["category"],
        "protocol": protocol, "fraction": fraction,
        "n_train": group[0]["n_train"], "seeds": len(group),
        "auroc": mean_sd([r["test_auroc"] for r in group]),
        "ci": (float(np.nanmean([r["test_auroc_ci_low"] for r in group])),
               float(np.nanmean([r["test_auroc_ci_high"] for r in group]))),
        "accuracy": mean_sd([r["test_accuracy"] for r in group]),
        "balanced_accuracy": mean_sd([
            NAN if r["test_balanced_accuracy"] == "" else
            r["test_balanced_accuracy"] for r in group]),
        "f1": mean_sd([r["test_f1"] for r in group]),
        "delta": mean_sd(deltas) if deltas and (method, protocol) != SCRATCH else None,
        "auroc_per_class": (np.nanmean(per_class, axis=0).tolist()
                            if per_class else None),
    })
  return out


def _pm(value: tuple[float, float], seeds: int, fmt: str = ".3f") -> str:
  mean, sd = value
  return (f"{mean:{fmt}} ± {sd:{fmt.lstrip('+')}}" if seeds > 1
          else f"{mean:{fmt}}")


def own_recipes(meta: dict) -> list[str]:
  """The methods fine-tuned with their own stage-2 fields
  (`benchmark.finetune_by_method`), as report lines; none: no lines."""
  by_method = meta.get("finetune_by_method") or {}
  if not by_method:
    return []
  recipes = "; ".join(
      f"{method}: " + ", ".join(f"`finetune.{k}={v!r}`" for k, v in fields.items())
      for method, fields in by_method.items())
  return [f"Stage 2 differs by method (every other one shares the one "
          f"above): {recipes}.", ""]


def benchmark_markdown(summary: list[dict], meta: dict, references: list,
                       plots: dict[str, str]) -> str:
  """report.md: setup, the table (ours + published), figures, notes."""
  budget = meta["budget"]
  model = ", ".join(f"{k}={v}" for k, v in budget["model"].items())
  seeds = meta["seeds"]
  per_class = any(s["auroc_per_class"] for s in summary)
  kind = protocols.kinds()
  lines = [
      f"# Benchmark: {meta['dataset']} ({meta['image_size']} px, {meta['task']})",
      "",
      f"Same budget for every method: backbone {model}; pretraining "
      f"{budget['train']['steps']} steps × {budget['train']['batch_size']} "
      f"images; end-to-end stage 2: {stage2_length(meta)} × "
      f"{meta['finetune_batch_size']}. Seeds {', '.join(map(str, seeds))} "
      "(label subsets redrawn per seed, stratified, nested across fractions). "
      "Test split; model selection on val. AUROC is mean ± sd over seeds; the "
      f"{meta['ci_level']:.0%} CI is a percentile bootstrap of the test set "
      f"({meta['bootstrap_samples']} resamples; mean of the per-seed bounds).",
      "",
      f"Stage-2 views: `{meta.get('finetune_augment', 'not recorded')}`.",
      "",
      *own_recipes(meta),
      f"Compute: pretraining "
      f"{sum(p['seconds'] * p['runs'] for p in meta['pretrain'].values()):.0f} s, "
      f"stage-2 cells {meta.get('cells_seconds', 0):.0f} s (sums over runs); "
      f"this invocation {meta.get('this_run_seconds', 0):.0f} s.",
      "",
      "| labels | n train | method | strategy | protocol | test AUROC | "
      f"{meta['ci_level']:.0%} CI | Δ vs scratch | ACC | balanced ACC | "
      "macro F1 |" + (" AUROC per class |" if per_class else ""),
      "|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|"
      + ("---|" if per_class else ""),
  ]
  for s in sorted(summary, key=lambda s: s["fraction"]):
    n = s["seeds"]
    delta = f"{_pm(s['delta'], n, '+.1f')} %" if s["delta"] else "—"
    extra = (" " + "/".join(f"{v:.2f}" for v in s["auroc_per_class"]) + " |"
             if per_class and s["auroc_per_class"] else (" |" if per_class else ""))
    lines.append(
        f"| {s['fraction']:.0%} | {s['n_train']} | {s['method']} | "
        f"{CATEGORY_LABELS.get(s['category'], s['category'])} | "
        f"{s['protocol']} ({kind.get(s['protocol'], '?')}) | "
        f"{_pm(s['auroc'], n)} | [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}] | {delta} | "
        f"{_pm(s['accuracy'], n)} | {_pm(s['balanced_accuracy'], n)} | "
        f"{_pm(s['f1'], n)} |{extra}")
  for ref in references:
    lines.append(
        f"| {ref.label_fraction:.0%} | all | **{ref.model} — published** | "
        f"supervised | end-to-end | {ref.auroc:.3f} | — | — | "
        f"{ref.accuracy:.3f} | — | — |" + (" — |" if per_class else ""))
  lines += ["", "## Pretraining", "",
            "| method | strategy | views (augment policy) | images/s | "
            "seconds per run | runs |", "|---|---|---|---:|---:|---:|"]
  ordered = [m for m in meta["methods"] if m in meta["pretrain"]]
  for method in ordered + sorted(set(meta["pretrain"]) - set(ordered)):
    p = meta["pretrain"][method]
    category = meta["methods"].get(method, {}).get("category", "")
    lines.append(f"| {method} | {CATEGORY_LABELS.get(category, category)} | "
                 f"{p['augment_policy']} | {p['images_per_sec']:.0f} | "
                 f"{p['seconds']:.0f} | {p['runs']} |")
  lines += ["", "Images/s: training-batch examples per second (each method "
            "turns them into its own views), median over logged intervals, "
            "compile excluded, on the machine that ran the sweep."]
  lines += ["", "## Figures", ""]
  lines += [f"![{name}]({os.path.basename(path)})" for name, path in plots.items()]
  lines += [
      "", "## Notes", "",
      "- `none` pretrains nothing: its frozen protocols probe a random-init "
      "encoder, and `none` + `finetune` is the from-scratch baseline.",
      "- Δ vs scratch = 100 × (AUROC − AUROC of `none` + `finetune`) / AUROC "
      "of `none` + `finetune`, paired by label fraction and seed.",
      "- `supervised` pretrains on the training labels of the source set in its "
      "config (by default the target itself, all labels): a reference, not a "
      "label-efficient result.",
      "- Published rows (bold) are supervised ResNets trained on all training "
      "labels at the same resolution, copied from their papers "
      "(ssl_jax/evaluation/published.py), not re-run here.",
      f"- {threshold_note(meta)}",
      "- Per-cell numbers: results.csv; raw cells: cells/<method>/*.json.",
  ]
  return "\n".join(lines) + "\n"


def write_benchmark_report(workdir: str, cells: dict[str, dict],
                           meta: dict) -> dict[str, str]:
  """report.md, results.csv and the four PNGs; returns their paths."""
  from ssl_jax.evaluation import plots, published  # matplotlib: only here

  meta = dict(meta, pretrain=pretrain_stats(workdir))
  rows = benchmark_rows(cells, meta)
  summary = summarise_benchmark(rows)
  # The seeds the cells hold, not the last invocation's config.finetune.seeds
  # (a sweep resumed or extended with other seeds reports them all).
  meta = dict(meta, seeds=sorted({r["seed"] for r in rows}))
  references = published.for_dataset(meta["dataset"], meta["image_size"])
  meta = dict(meta, cells_seconds=sum(c.get("seconds", 0.0) for c in cells.values()))
  title = f"{meta['dataset']} ({meta['image_size']} px)"
  pngs = {name: os.path.join(workdir, f"{name}.png") for name in plots.PLOTS}
  for name, path in pngs.items():
    plots.PLOTS[name](summary, path, title=title, references=references)
  paths = dict(pngs, report=os.path.join(workdir, "report.md"),
               csv=os.path.join(workdir, "results.csv"))
  files.write_text_atomic(paths["csv"], to_csv(rows))
  files.write_text_atomic(paths["report"],
                           benchmark_markdown(summary, meta, references, pngs))
  return paths


def rewrite_benchmark_report(workdir: str) -> dict[str, str]:
  """Rebuilds report.md, results.csv and the plots from a benchmark
  workdir's cell files (e.g. after changing a plot), without running cells."""
  import json
  with open(os.path.join(workdir, "benchmark.json")) as f:
    meta = json.load(f)
  cells = {}
  for method in os.listdir(os.path.join(workdir, "cells")):
    directory = os.path.join(workdir, "cells", method)
    for name in sorted(os.listdir(directory)):
      if name.endswith(".json"):
        cell = files.read_json(os.path.join(directory, name))
        cells[f"{cell['method']}|{cell['protocol']}|{cell['fraction']:g}|{cell['seed']}"] = cell
  return write_benchmark_report(workdir, cells, meta)


if __name__ == "__main__":
  # python -m ssl_jax.jobs.report WORKDIR [WORKDIR ...]: one table, seeds pooled.
  # python -m ssl_jax.jobs.report BENCHMARK_WORKDIR: rewrite its report.
  import json
  import sys

  if len(sys.argv) == 2 and os.path.exists(os.path.join(sys.argv[1], "benchmark.json")):
    print(open(rewrite_benchmark_report(sys.argv[1])["report"]).read())
    sys.exit(0)
  runs = []
  for workdir in sys.argv[1:]:
    path = os.path.join(workdir, "finetune", "results.json")  # a pipeline job
    if not os.path.exists(path):
      path = os.path.join(workdir, "results.json")  # a finetune job
    with open(path) as f:
      runs.append(json.load(f))
  print(markdown_table(merge(runs)))
