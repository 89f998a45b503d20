"""The one entry point: `python run.py --config=configs/X.py[:arg] --workdir=DIR`.

The config's `job` field picks pretrain, finetune or pretrain_finetune;
`--config.field=value` overrides any field. Everything a job writes lands in
`--workdir`.

Multi-host: set `--config.distributed.coordinator_address=HOST:PORT
--config.distributed.num_processes=N --config.distributed.process_id=I` (or
JAX's env vars); every process runs the same command with the same workdir.

Exit codes: 0 done; 75 (EX_TEMPFAIL) preempted by SIGTERM after saving a
checkpoint — rerun the same command to resume; anything else is a failure.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for every output of the job.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:  # Orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  # Before anything touches devices: jax.distributed must come first.
  from ssl_jax import parallel
  parallel.initialize_distributed(FLAGS.config.get("distributed"))
  from ssl_jax import runtime
  runtime.use_compilation_cache()
  from ssl_jax import jobs  # after flag parsing: keeps --help fast
  from ssl_jax.train import preemption
  try:
    jobs.get(FLAGS.config.job)(FLAGS.config, FLAGS.workdir)
  except preemption.Preempted as e:
    print(e, flush=True)
    print(e, file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_PREEMPTED)


if __name__ == "__main__":
  app.run(main)
