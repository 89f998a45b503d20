"""Results -> the Markdown table a job prints and writes (mean ± sd over seeds)."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from ssl_jax.evaluation.metrics import mean_sd

PROTOCOL_LABELS = {
    "linear": "SSL + linear probe (frozen)",
    "knn": "SSL + kNN (frozen)",
    "finetune": "SSL + end-to-end fine-tune",
    "scratch": "from scratch (same net, same budget)",
}
METRICS = (("auroc", "AUROC"), ("accuracy", "ACC"), ("f1", "F1"))


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
      row[key] = [c["test"][key] for c in cells]
    rows.append(row)
  order = list(PROTOCOL_LABELS)
  rows.sort(key=lambda r: (r["fraction"], order.index(r["protocol"])
                           if r["protocol"] in order else len(order)))
  return rows


def markdown_table(results: dict[str, Any]) -> str:
  rows = summarise(results)
  seeds = max((r["seeds"] for r in rows), default=0)
  title = (f"{results['dataset']} ({results['image_size']} px, "
           f"{results['task']}) — test set, "
           f"{'mean ± sd over ' + str(seeds) + ' seeds' if seeds > 1 else '1 seed'}; "
           f"pretraining: {results.get('pretrain_objective') or 'none'}")
  lines = [title, "",
           "| labels | n train | protocol | " + " | ".join(n for _, n in METRICS) + " |",
           "|---:|---:|---|" + "---:|" * len(METRICS)]
  for r in rows:
    lines.append(f"| {r['fraction']:.0%} | {r['n_train']} | "
                 f"{PROTOCOL_LABELS.get(r['protocol'], r['protocol'])} | "
                 + " | ".join(_cell(r[k]) for k, _ in METRICS) + " |")
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


if __name__ == "__main__":
  # python -m ssl_jax.jobs.report WORKDIR [WORKDIR ...]: one table, seeds pooled.
  import json
  import os
  import sys

  runs = []
  for workdir in sys.argv[1:]:
    path = os.path.join(workdir, "finetune", "results.json")  # a pipeline job
    if not os.path.exists(path):
      path = os.path.join(workdir, "results.json")  # a finetune job
    with open(path) as f:
      runs.append(json.load(f))
  print(markdown_table(merge(runs)))
