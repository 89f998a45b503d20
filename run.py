"""The one entry point: `python run.py --config=configs/X.py[:arg] --workdir=DIR`.

The config's `job` field picks pretrain, finetune or pretrain_finetune;
`--config.field=value` overrides any field. Everything a job writes lands in
`--workdir`.
"""
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
  from ssl_jax import jobs  # after flag parsing: keeps --help fast
  jobs.get(FLAGS.config.job)(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
