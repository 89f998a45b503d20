"""Where a config's compiled pretraining step spends its time, op by op.

  python bench/op_profile.py --config=configs/mae.py [--config.x=y ...] \
      [--steps=4] [--warmup=2] [--top=25]

Builds the job's step exactly as bench/throughput.py does (synthetic batch,
same jitted program), times `--steps` steps after `--warmup`, runs as many
again under jax.profiler and reads the trace back: every XLA op (thunk)
the backend ran, its time per step, grouped by kind (a library dot, an
Eigen dot, a loop fusion holding a transpose, a reduction, ...), then
the slowest single ops with their HLO result shape. On XLA:CPU each op
of the program is one trace event, so the sums add up to the step; on GPU
the trace holds kernels instead, and the grouping is by kernel name.

This is how the transposed copies behind the ViT's kernel gradients were
found (docs/performance.md): pass the same `--config.*` overrides as the
figure you want to explain.
"""
from __future__ import annotations

import collections
import glob
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402

import throughput  # noqa: E402  (`build`, `run_steps`, --config, --steps)

FLAGS = flags.FLAGS
flags.DEFINE_integer("top", 25, "How many single ops to list.")

# What a fused computation holds, in the order that names its kind best.
_KINDS = ("dot", "convolution", "reduce-window", "reduce", "transpose", "copy",
          "gather", "scatter", "sort", "exponential", "divide")


def op_times(trace_dir: str, steps: int, ops) -> dict[str, float]:
  """{op name: ms per step} of a jax.profiler trace's events named as an op
  of the program (`ops`); host frames and the executor's waits are not."""
  from jax.profiler import ProfileData  # noqa: PLC0415
  path = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0]
  times: collections.Counter = collections.Counter()
  for plane in ProfileData.from_file(path).planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in ops:
          times[event.name] += event.duration_ns / 1e6 / steps
  return dict(times)


def describe(hlo: str) -> dict[str, tuple[str, str]]:
  """{op name: (result shape, kind)} from the compiled program's text."""
  bodies = {m.group(1): m.group(2) for m in re.finditer(
      r"^%(\S+) [^\n]*\{\n(.*?)\n\}", hlo, re.M | re.S)}
  ops = {}
  for m in re.finditer(r"^\s*(?:ROOT )?%(\S+) = (\S+) (\w[\w-]*)\((.*)$",
                       hlo, re.M):
    name, shape, opcode, rest = m.groups()
    kind = opcode
    called = re.search(r"calls=%([\w.\-]+)", rest)
    if opcode == "fusion" and called:
      body = bodies.get(called.group(1), "")
      held = [k for k in _KINDS if re.search(rf"\s{k}\(", body)]
      library = "library " if "kCustom" in rest else ""
      held_kinds = "+".join(held[:2]) if held else "elementwise"
      kind = f"{library}{held_kinds} fusion"
    ops[name] = (shape, kind)
  return ops


def report(times: dict[str, float], ops: dict[str, tuple[str, str]],
           step_ms: float, top: int) -> str:
  by_kind: collections.Counter = collections.Counter()
  count: collections.Counter = collections.Counter()
  for name, ms in times.items():
    kind = ops[name][1]
    by_kind[kind] += ms
    count[kind] += 1
  lines = [f"step {step_ms:.1f} ms; ops traced {sum(times.values()):.1f} ms",
           "", "| op kind | ms / step | share | ops |", "|---|---:|---:|---:|"]
  total = sum(times.values()) or 1.0
  for kind, ms in by_kind.most_common():
    if ms >= 0.005 * total:
      lines.append(f"| {kind} | {ms:.1f} | {ms / total:.0%} | {count[kind]} |")
  lines += ["", f"slowest {top} ops:", "| ms / step | op | result | kind |",
            "|---:|---|---|---|"]
  for name, ms in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
    shape, kind = ops[name]
    lines.append(f"| {ms:.2f} | {name} | {shape} | {kind} |")
  return "\n".join(lines)


def main(argv):
  del argv
  import jax  # noqa: PLC0415
  step_fn, state, batch, _ = throughput.build(FLAGS.config)
  compiled = step_fn.lower(state, batch).compile()
  state, _, _ = throughput.run_steps(compiled, state, batch, FLAGS.warmup)
  state, _, step_s = throughput.run_steps(compiled, state, batch, FLAGS.steps)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      throughput.run_steps(compiled, state, batch, FLAGS.steps)
    ops = describe(compiled.as_text())
    times = op_times(trace_dir, FLAGS.steps, ops)
  print(report(times, ops, 1e3 * step_s, FLAGS.top))


if __name__ == "__main__":
  app.run(main)
