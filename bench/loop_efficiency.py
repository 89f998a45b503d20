"""Does the real training loop run at the compiled step's pace?

  python bench/loop_efficiency.py --config=configs/demo.py [--config.x=y] \
      [--loop_steps=60] [--repeats=2]

Alternates, `--repeats` times: (a) bench/throughput.py's `measure` (the
compiled step alone, synthetic batch already on the device) and (b) a real
pretraining job of `--loop_steps` steps in a fresh temporary workdir (data
pipeline, host->device prefetch, metric fetches, NaN checks, logging,
checkpoints), whose steady-state images/s is the median of the
`train/images_per_sec` values the loop logged after its first log step.
Prints both, best of the repeats, and their ratio. Needs the dataset files
(the job reads them) and TensorFlow, as a real run does.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags, logging  # noqa: E402

import throughput  # noqa: E402  (its --config, --steps and --warmup flags)

FLAGS = flags.FLAGS
flags.DEFINE_integer("loop_steps", 60, "Steps of the real pretraining run.")
flags.DEFINE_integer("repeats", 2, "Alternations of step and loop.")


def loop_images_per_sec(config, steps: int) -> float:
  """Median logged images/s of a real `pretrain` job (first log dropped)."""
  from ssl_jax.jobs import pretrain  # noqa: PLC0415
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.job = "pretrain"
    config.train.steps = steps
    config.train.progress = False
  with tempfile.TemporaryDirectory() as workdir:
    pretrain.train_and_evaluate(config, workdir)
    rates = []
    for path, _, files in os.walk(workdir):
      if "metrics.jsonl" in files:
        with open(os.path.join(path, "metrics.jsonl")) as f:
          rates += [r["train/images_per_sec"] for r in map(json.loads, f)
                    if "train/images_per_sec" in r]
  if len(rates) < 2:
    raise ValueError(f"--loop_steps={steps} logged {len(rates)} rates; raise "
                     "it above 2 x train.log_every")
  return statistics.median(rates[1:])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = FLAGS.config
  step, loop = 0.0, 0.0
  for _ in range(FLAGS.repeats):
    step = max(step, throughput.measure(
        config, steps=FLAGS.steps, warmup=FLAGS.warmup)["images_per_s"])
    loop = max(loop, loop_images_per_sec(config, FLAGS.loop_steps))
  print("| config | compiled step img/s | training loop img/s | loop / step |")
  print("|---|---:|---:|---:|")
  name = os.path.basename(throughput.config_flags.get_config_filename(
      FLAGS["config"]))
  print(f"| {name} | {step:.1f} | {loop:.1f} | {loop / step:.2f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
