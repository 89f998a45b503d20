"""Does the real training loop run at the compiled step's pace?

  python bench/loop_efficiency.py --config=configs/demo.py [--config.x=y] \
      [--loop_steps=60] [--repeats=2] [--stage=pretrain|finetune]

Alternates, `--repeats` times: (a) bench/throughput.py's `measure` (the
compiled step alone, synthetic batch already on the device) and (b) a real
pretraining job of `--loop_steps` steps in a fresh temporary workdir (data
pipeline, host->device prefetch, metric fetches, NaN checks, logging,
checkpoints), whose steady-state images/s is the median of the
`train/images_per_sec` values the loop logged after its first log step.
Prints both, best of the repeats, and their ratio. Needs the dataset files
(the job reads them) and TensorFlow, as a real run does.

`--stage=finetune` measures stage 2's end-to-end classifier instead (the
`finetune` / `scratch` protocols' trainer, here from a random encoder on
all training labels): (a) its compiled step on one real batch, (b) the
trainer's real run over `--loop_steps` steps (input pipeline, prefetch,
metric fetches, logging), validation every epoch as configured; the loop
excludes evaluation time from its images/s. Every batch is full
(`finetune.last_batch='carry'`), like the one the step alone runs on.
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
flags.DEFINE_integer("loop_steps", 60, "Steps of the real training run.")
flags.DEFINE_integer("repeats", 2, "Alternations of step and loop.")
flags.DEFINE_enum("stage", "pretrain", ["pretrain", "finetune"],
                  "Which training loop: pretraining, or stage 2's classifier.")


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
    return median_logged_rate(workdir)


def median_logged_rate(workdir: str) -> float:
  """`train/images_per_sec` of every metrics.jsonl under `workdir`, the
  first logged interval of each dropped (it can hold a recompile)."""
  rates = []
  for path, _, files in os.walk(workdir):
    if "metrics.jsonl" in files:
      with open(os.path.join(path, "metrics.jsonl")) as f:
        rates += [r["train/images_per_sec"] for r in map(json.loads, f)
                  if "train/images_per_sec" in r][1:]
  if not rates:
    raise ValueError("the run logged no images/s after its first interval; "
                     "raise --loop_steps above 2 x its log_every")
  return statistics.median(rates)


class Stage2:
  """Stage 2's end-to-end classifier trainer, built as a `scratch` cell on
  all training labels builds it, and a timer for its step and its loop."""

  def __init__(self, config, steps: int, workdir: str):
    from ssl_jax import parallel  # noqa: PLC0415
    from ssl_jax.evaluation import classifier  # noqa: PLC0415
    from ssl_jax.evaluation.encoder_context import SPLITS, EncoderContext  # noqa: PLC0415
    from ssl_jax.jobs import common, finetune  # noqa: PLC0415
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.finetune.epochs, config.finetune.steps = 0, steps
      config.finetune.last_batch = "carry"
      config.train.progress = False
    info = common.data_info(config)
    cfg = finetune.stage2_config(config, None, info)
    self.mesh = parallel.config_mesh(config)
    self.ctx = EncoderContext(
        config=cfg, workdir=workdir, mesh=self.mesh, info=info,
        data={s: common.load_split(cfg, s) for s in SPLITS},
        encoder_weights=None, log_dir=workdir)
    self.train_idx = self.ctx.subset(1.0, 0)
    self.trainer = classifier.trainer_for(self.ctx, len(self.train_idx))
    self.batch_size = cfg.finetune.batch_size

  def step_images_per_sec(self, steps: int, warmup: int) -> float:
    from data_pipelines import input_pipeline  # noqa: PLC0415
    from ssl_jax import parallel  # noqa: PLC0415
    images, labels = self.ctx.data["train"]
    batch = next(input_pipeline.make_iterator(
        images, labels, batch_size=parallel.local_batch_size(self.batch_size),
        shuffle=True, repeat=True, seed=0, drop_remainder=True))
    batch = parallel.shard_batch(batch, self.mesh)
    state = self.trainer.init_state(0, None)
    state, _, _ = throughput.run_steps(self.trainer.step_fn, state, batch,
                                       max(warmup, 1))
    _, _, step_s = throughput.run_steps(self.trainer.step_fn, state, batch, steps)
    return self.batch_size / step_s

  def loop_images_per_sec(self, name: str) -> float:
    self.trainer.run(self.ctx, self.train_idx, 0, weights=None, name=name)
    return median_logged_rate(os.path.join(self.ctx.workdir, name))


def pretrain_pair(config):
  step = throughput.measure(config, steps=FLAGS.steps,
                            warmup=FLAGS.warmup)["images_per_s"]
  return step, loop_images_per_sec(config, FLAGS.loop_steps)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = FLAGS.config
  step, loop = 0.0, 0.0
  with tempfile.TemporaryDirectory() as workdir:
    stage2 = (Stage2(config, FLAGS.loop_steps, workdir)
              if FLAGS.stage == "finetune" else None)
    for repeat in range(FLAGS.repeats):
      if stage2 is None:
        pair = pretrain_pair(config)
      else:
        pair = (stage2.step_images_per_sec(FLAGS.steps, FLAGS.warmup),
                stage2.loop_images_per_sec(f"loop{repeat}"))
      step, loop = max(step, pair[0]), max(loop, pair[1])
  print("| config | compiled step img/s | training loop img/s | loop / step |")
  print("|---|---:|---:|---:|")
  name = os.path.basename(throughput.config_flags.get_config_filename(
      FLAGS["config"]))
  if FLAGS.stage == "finetune":
    name += " (stage 2, end to end)"
  print(f"| {name} | {step:.1f} | {loop:.1f} | {loop / step:.2f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
