"""Jobs by name; the config's `job` field picks one. Each job is
`train_and_evaluate(config, workdir) -> dict` and writes only in `workdir`."""
from ssl_jax.registry import Registry

JOBS = Registry("job")


def get(name: str):
  _register_all()
  return JOBS.get(name)


def names() -> list[str]:
  _register_all()
  return JOBS.names()


def _register_all() -> None:
  # Imported lazily: jobs pull in data_pipelines/ (image readers; TensorFlow
  # for tfds: sources), which the core library must not need.
  if not JOBS.names():
    from ssl_jax.jobs import benchmark, finetune, pipeline, pretrain
    JOBS.add("pretrain", pretrain.train_and_evaluate)
    JOBS.add("finetune", finetune.train_and_evaluate)
    JOBS.add("pretrain_finetune", pipeline.train_and_evaluate)
    JOBS.add("benchmark", benchmark.train_and_evaluate)
