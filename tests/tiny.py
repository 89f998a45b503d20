"""A tiny but real configuration shared by the end-to-end tests.

ResNet-18 at width 1/16 (4..32 channels) and one block a stage on 28 px
BreastMNIST: every kind of layer of the real network runs (the stem, an
identity and a projection shortcut, every stage's stride), at half the
compile time of two blocks a stage, which is most of what a test costs on
this 2-core CPU.
"""
from configs import demo


def tiny_config(**overrides):
  c = demo.get_config()
  c.model.width_multiplier = 1 / 16
  c.model.stage_sizes = (1, 1, 1, 1)
  c.objective.proj_hidden_dim = 32
  c.objective.proj_dim = 16
  c.train.steps = 4
  c.train.batch_size = 16
  c.train.log_every = 2
  c.train.checkpoint_every = 2
  c.train.progress = False
  c.optim.warmup_steps = 1
  c.finetune.epochs = 0  # a fixed, tiny step count (the demo trains epochs)
  c.finetune.last_batch = "carry"
  c.finetune.steps = 4
  c.finetune.optim.warmup_steps = 1  # warmup must fit in the run
  c.finetune.batch_size = 8
  c.finetune.eval_every = 2
  c.finetune.log_every = 2
  c.finetune.eval_batch_size = 64
  c.finetune.fractions = (0.1, 1.0)
  # One cell at a time: worker processes (auto on CPU) would add their
  # start-up and compiles to every test; tests/test_benchmark.py and
  # tests/test_jobs.py run cells side by side.
  c.finetune.cells_at_once = 1
  return apply_overrides(c, overrides)


def apply_overrides(config, overrides: dict):
  """Sets dotted fields, as `--config.a.b=v` would: {'a.b': v}."""
  for key, value in overrides.items():
    section = config
    *path, last = key.split(".")
    for p in path:
      section = section[p]
    section[last] = value
  return config


# Heads shrunk to match the tiniest backbone (fields a method lacks are skipped).
TINY_OBJECTIVE = dict(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32,
                      queue_size=128, num_prototypes=16, num_local_crops=2,
                      momentum=0.9)


def tiny_method_config(method: str):
  """configs/<method>.py's objective on a (1,1,1,1) ResNet-18 at width 1/16,
  AdamW at a fixed lr 1e-2 (schedules stay near their start for a few steps)."""
  import importlib
  config = tiny_config()
  config.objective = importlib.import_module(f"configs.{method}").get_config().objective
  for key, value in TINY_OBJECTIVE.items():
    if key in config.objective:
      config.objective[key] = value
  config.online_probe = False  # its own test exists; saves compile time
  config.train.steps = 1000
  config.optim = dict(name="adamw", lr=1e-2, scale_by_batch=False, weight_decay=0.0,
                      warmup_steps=0, final_lr_fraction=0.0, grad_clip_norm=0.0)
  return config


# Compile time is all that counts for a few tiny steps on this CPU.
FAST_COMPILE = {"xla_backend_optimization_level": 0,
                "xla_llvm_disable_expensive_passes": True,
                "xla_cpu_use_fusion_emitters": False}


def compiled_on_fixed_batch(config, *, batch_size: int = 16, data_dir=None,
                            columns=None, vocab=None):
  """The real pretraining init and jitted step (compiled with XLA's backend
  optimisations off) and one fixed batch of the first BreastMNIST training
  images: the smoke test every objective gets.

  `columns(images)` adds batch columns (partner images, metadata);
  `vocab` the objective's fitted vocabularies (Objective.vocabulary).
  Returns (graphdef, state, step_fn, batch). The step folds state.step into
  its rng, so resetting state.step replays the same views and masks.
  """
  import data_pipelines
  from ssl_jax import parallel
  from ssl_jax.jobs import pretrain

  mesh = parallel.make_mesh(1)
  info = data_pipelines.info(config.data.name, config.data.size)
  images, labels = data_pipelines.load(config.data.name, "train",
                                       size=config.data.size, data_dir=data_dir)
  columns = columns(images[:batch_size]) if columns else {}
  batch = parallel.shard_batch(dict(columns, image=images[:batch_size],
                                    label=labels[:batch_size]), mesh)
  built = pretrain.build_parts(config, info, mesh, vocab)
  state = built.init.lower().compile(FAST_COMPILE)()
  step_fn = built.step_fn.lower(state, batch).compile(FAST_COMPILE)
  return built.graphdef, state, step_fn, batch


def fixed_batch_losses(config, num_steps: int, batch_size: int = 16):
  """Losses of `num_steps` real steps on one fixed batch, and the state."""
  _, state, step_fn, batch = compiled_on_fixed_batch(config, batch_size=batch_size)
  losses = []
  for _ in range(num_steps):
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics["loss"]))
  return losses, state


class TinyInfo:
  """BreastMNIST's shape: 1 channel, 28 px, 2 classes (objective builders'
  DataInfo without opening data)."""
  num_channels, image_size, num_classes, multi_label, spatial_dims = (
      1, 28, 2, False, 2)


def bind(config, info=TinyInfo, objective=None, vocab=None):
  """`objective` (default: the config's) bound to the config's objective
  block and run context for `info`, as objectives.bind does for a job."""
  from ssl_jax.objectives import base
  objective = objective or base.lookup(config.objective)
  return base.Bound(objective,
                    base.resolve_hparams(objective, config.objective),
                    base.run_context(config, info, vocab))
