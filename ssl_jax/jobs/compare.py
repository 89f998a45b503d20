"""Two protocols' cells on the same test images, compared by DeLong's test.

  python -m ssl_jax.jobs.compare A[:METHOD] [B[:METHOD]] [--a_protocol=finetune]
      [--b_protocol=scratch] [--out=compare.json]

Why: the seed-paired intervals of the reports weigh a difference against
the spread of label subsets and training seeds, on one test set. Whether
a cell's AUROC gap would survive another draw of test images is DeLong's
question (`metrics.delong_paired`): both classifiers scored the same
images, so their AUROCs are correlated and the paired test is the one that
fits. Cells are matched by label fraction and seed (so both trained on
the same label subset); B defaults to A (SSL end to end against scratch in
one workdir). Binary, multi-class and ordinal tasks (MedMNIST's macro
AUROC) and multi-label ones (the mean AUROC over labels); needs the cells'
stored predictions.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any, Sequence

from ssl_jax import files
from ssl_jax.evaluation import metrics
from ssl_jax.jobs.stored_cells import Source, check_same_images, source


def compare_cell(a: Source, protocol_a: str, b: Source, protocol_b: str,
                 fraction: float, seed: int, *, alpha: float = 0.05
                 ) -> dict[str, Any] | None:
  """DeLong's paired test of the two cells' test AUROCs; None when either
  cell or its stored predictions is missing."""
  stored = [s.store.predictions(s.cell(p, fraction, seed))
            for s, p in ((a, protocol_a), (b, protocol_b))]
  if any(arrays is None for arrays in stored):
    return None
  where = f"fraction {fraction:g}, seed {seed}"
  check_same_images((a, b), stored, where, splits=("test",))
  try:
    test = metrics.delong_paired(
        stored[0]["test_labels"], stored[0]["test_probs"],
        stored[1]["test_probs"], task=str(stored[0]["task"]), alpha=alpha)
  except ValueError as error:  # name the cells, not only the arrays
    raise ValueError(f"{a.spec} {protocol_a} vs {b.spec} {protocol_b}, "
                     f"{where}: {error}") from error
  return dict(test, fraction=fraction, seed=seed)


def compare(a: Source, protocol_a: str, b: Source, protocol_b: str,
            **kwargs) -> list[dict[str, Any]]:
  """Every (fraction, seed) both sides finished, in order."""
  def keys(s: Source, protocol: str) -> set[tuple[float, int]]:
    return {(c.fraction, c.seed) for c in s.finished() if c.protocol == protocol}
  rows = [compare_cell(a, protocol_a, b, protocol_b, fraction, seed, **kwargs)
          for fraction, seed in sorted(keys(a, protocol_a) & keys(b, protocol_b))]
  return [row for row in rows if row is not None]


def markdown(rows: Sequence[dict], title: str) -> str:
  """Per fraction: mean AUROCs and difference over seeds, and on how many
  seeds DeLong's test puts the difference beyond the test set's noise."""
  lines = [title, "",
           "| labels | seeds | AUROC a | AUROC b | a − b (mean ± sd over seeds) "
           "| DeLong p < 0.05: a higher / b higher | median p |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
  for fraction in sorted({r["fraction"] for r in rows}):
    mine = [r for r in rows if r["fraction"] == fraction]
    mean, sd = metrics.mean_sd([r["difference"] for r in mine])
    higher_a = sum(r["p_value"] < 0.05 and r["difference"] > 0 for r in mine)
    higher_b = sum(r["p_value"] < 0.05 and r["difference"] < 0 for r in mine)
    lines.append(
        f"| {fraction:.0%} | {len(mine)} | "
        f"{statistics.mean(r['auroc_a'] for r in mine):.3f} | "
        f"{statistics.mean(r['auroc_b'] for r in mine):.3f} | "
        f"{mean:+.3f} ± {sd:.3f} | {higher_a} / {higher_b} | "
        f"{statistics.median(r['p_value'] for r in mine):.3f} |")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m ssl_jax.jobs.compare",
      description="DeLong's paired test between two protocols' cells, "
                  "matched by label fraction and seed.")
  parser.add_argument("a", metavar="A[:METHOD]")
  parser.add_argument("b", nargs="?", default="", metavar="B[:METHOD]",
                      help="default: A")
  parser.add_argument("--a_protocol", default="finetune")
  parser.add_argument("--b_protocol", default="scratch")
  parser.add_argument("--out", default="", help="write the rows as JSON here")
  args = parser.parse_args(argv)
  a = source(args.a)
  b = source(args.b) if args.b else a
  rows = compare(a, args.a_protocol, b, args.b_protocol)
  if not rows:
    print(f"no (fraction, seed) has both {args.a_protocol} in {a.spec} and "
          f"{args.b_protocol} in {b.spec}, with stored predictions",
          file=sys.stderr)
    return 1
  if args.out:
    files.write_json_atomic(args.out, {"a": [args.a, args.a_protocol],
                                       "b": [b.spec, args.b_protocol],
                                       "rows": rows})
  print(markdown(rows, f"a = {args.a_protocol} in {a.spec}, "
                       f"b = {args.b_protocol} in {b.spec}; test AUROC"))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
