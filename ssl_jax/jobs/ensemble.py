"""Ensembles of finished stage-2 cells: their stored probabilities averaged.

  python -m ssl_jax.jobs.ensemble WORKDIR[:METHOD] WORKDIR[:METHOD] ... \
      [--protocols=finetune,scratch] [--workdir=OUT]

Why: combining what several pretrainings learned is one of the review's
guidelines, and averaging the predictions of classifiers fine-tuned from
different encoders (other pretraining seeds, other methods) is its
simplest form. Members are workdirs of finetune, pretrain_finetune or
benchmark jobs (METHOD picks one method of a benchmark's cells). Cells are
matched by (protocol, label fraction, seed), so every member trained on
the same label subset; their val and test probabilities (the `.npz` each
cell stores) are averaged, and the average is scored as a cell is (the
first member's `finetune` config: decision threshold from validation,
bootstrap CI). With --workdir the averaged cells are stored as cells of
method `ensemble` (JSON + predictions, the first member's config.json,
the members in ensemble.json), so an ensemble is itself a source for
`jobs/compare.py` or a further ensemble. A fair baseline is an ensemble of
as many from-scratch runs of the same subsets:
`finetune.training_seed_offset` gives them other inits and batch orders.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import numpy as np

from ssl_jax import files
from ssl_jax.evaluation import metrics
from ssl_jax.evaluation.cells import Cell, CellStore, prediction_arrays, score
from ssl_jax.evaluation.encoder_context import EVAL_SPLITS
from ssl_jax.jobs import common
from ssl_jax.jobs.stored_cells import Source, check_same_images, source

METHOD = "ensemble"  # the method name of stored ensemble cells


def ensemble_cell(members: Sequence[Source], protocol: str, fraction: float,
                  seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
  """The averaged cell scored, with each member's test AUROC, and its
  averaged predictions (as a cell stores them); None when a member lacks
  the cell or its stored predictions."""
  cells = [m.cell(protocol, fraction, seed) for m in members]
  stored = [m.store.predictions(c) for m, c in zip(members, cells)]
  if any(arrays is None for arrays in stored):
    return None
  check_same_images(members, stored, f"cell {protocol}|{fraction:g}|{seed}")
  task = str(stored[0]["task"])
  labels = {s: stored[0][f"{s}_labels"] for s in EVAL_SPLITS}
  probs = {s: np.mean([a[f"{s}_probs"] for a in stored], axis=0)
           for s in EVAL_SPLITS}
  result = dict(score(members[0].config.finetune, task, labels, probs, seed),
                method=METHOD, protocol=protocol, fraction=fraction, seed=seed,
                members=[m.spec for m in members],
                member_test_auroc=[m.store.get(c)["test"]["auroc"]
                                   for m, c in zip(members, cells)])
  return result, prediction_arrays(task, labels, probs)


def ensemble(members: Sequence[Source], protocols: Sequence[str] = (), *,
             store: CellStore | None = None) -> dict[str, dict]:
  """Every (protocol, fraction, seed) all members finished (and stored
  predictions for), averaged and scored, by key; each also put into
  `store` (as method `ensemble`) when one is given."""
  keys = None
  for m in members:
    mine = {(c.protocol, c.fraction, c.seed) for c in m.finished()
            if not protocols or c.protocol in protocols}
    keys = mine if keys is None else keys & mine
  out = {}
  for protocol, fraction, seed in sorted(keys or ()):
    averaged = ensemble_cell(members, protocol, fraction, seed)
    if averaged is None:
      continue
    result, arrays = averaged
    if store is not None:
      store.put(Cell(METHOD, protocol, fraction, seed), result, arrays)
    out[f"{protocol}|{fraction:g}|{seed}"] = result
  return out


def _mean_sd(values: Sequence[float]) -> str:
  return "{:.3f} ± {:.3f}".format(*metrics.mean_sd(values))


def markdown(results: dict[str, dict], members: Sequence[Source]) -> str:
  """Per (protocol, fraction): each member's mean test AUROC over the seeds
  all members share, the ensemble's, and the ensemble minus the members'
  mean, per seed (mean ± sd)."""
  groups: dict[tuple[str, float], list[dict]] = {}
  for result in results.values():
    groups.setdefault((result["protocol"], result["fraction"]), []).append(result)
  names = " / ".join(m.spec for m in members)
  lines = [f"Ensemble of {len(members)} (mean of probabilities): {names}", "",
           "| protocol | labels | seeds | members' test AUROC | ensemble AUROC "
           "| ensemble − members' mean | balanced ACC | ACC |",
           "|---|---:|---:|---|---:|---:|---:|---:|"]
  for (protocol, fraction), rows in sorted(groups.items()):
    per_member = np.array([r["member_test_auroc"] for r in rows])
    gain = [r["test"]["auroc"] - float(np.mean(r["member_test_auroc"]))
            for r in rows]
    lines.append(
        f"| {protocol} | {fraction:.0%} | {len(rows)} | "
        f"{' / '.join(f'{v:.3f}' for v in per_member.mean(axis=0))} | "
        f"{_mean_sd([r['test']['auroc'] for r in rows])} | "
        f"{_mean_sd(gain)} | "
        f"{_mean_sd([r['test']['balanced_accuracy'] for r in rows])} | "
        f"{_mean_sd([r['test']['accuracy'] for r in rows])} |")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m ssl_jax.jobs.ensemble",
      description="Average the stored predictions of matching stage-2 cells "
                  "of several workdirs and score the average.")
  parser.add_argument("members", nargs="+", metavar="WORKDIR[:METHOD]")
  parser.add_argument("--protocols", default="",
                      help="comma-separated protocols (default: all shared)")
  parser.add_argument("--workdir", default="",
                      help="store the averaged cells here (method 'ensemble')")
  args = parser.parse_args(argv)
  if len(args.members) < 2:
    parser.error("an ensemble needs at least two members")
  members = [source(spec) for spec in args.members]
  protocols = tuple(p for p in args.protocols.split(",") if p)
  store = None
  if args.workdir:
    record = os.path.join(args.workdir, "ensemble.json")
    before = files.read_json(record)
    if before is not None and before["members"] != args.members:
      raise ValueError(f"{record} holds an ensemble of {before['members']}, "
                       f"not {args.members}; use a fresh --workdir")
    common.save_config(members[0].config, args.workdir)
    files.write_json_atomic(record, {"members": args.members})
    store = CellStore(os.path.join(args.workdir, "cells"))
  results = ensemble(members, protocols, store=store)
  if not results:
    print("no cell is finished, with stored predictions, in every member",
          file=sys.stderr)
    return 1
  print(markdown(results, members))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
