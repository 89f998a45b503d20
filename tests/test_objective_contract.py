"""The contract every registered objective keeps, run over the registry.

No hand-kept method list: an objective registered anywhere (in the package
or through `objective.module`) is picked up here. Each gets a tiny config
built from its own declared hyperparameters, shrunk where it declares the
field, and must:
- train: a few real compiled steps replaying one BreastMNIST batch (same
  views) give finite metrics and weights that score a lower loss than the
  initial ones under the same extra (a `minimax` game: every player's
  weights move instead), and move the encoder (its gradients reach it);
- give gradients shaped like its params (every leaf, nothing more);
  objectives reading metadata columns get made-up ones, coded with
  vocabularies fitted on them where they declare some;
- keep its state whole: `extra` (teachers, queues, centres) and the params
  survive an Orbax checkpoint round trip bit for bit;
- accumulate exactly where it declares so (`accumulates_exactly`): one step
  over 2 micro-batches updates the params as one step over the whole batch.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

from data_pipelines import pairs
from data_pipelines import vocab as vocab_lib
from ssl_jax import objectives
from ssl_jax.train import checkpoint
from tests.tiny import (TINY_OBJECTIVE, TinyInfo, compiled_on_fixed_batch,
                        tiny_config)

# Shrunk sizes, applied to the fields an objective declares.
SHRINK = dict(TINY_OBJECTIVE, decoder_channels=(16, 8, 4), latent_dim=16,
              head_hidden_dim=32, num_permutations=10,
              permutation_pool_size=500, tile_size=8, patch_resize=8,
              decoder_dim=16, decoder_heads=2, decoder_depth=1,
              tabular_hidden_dim=32, category_embed_dim=4, text_width=32,
              text_heads=2, text_depth=1, text_mlp_dim=64, vocab_size=32,
              max_length=8)
TINY_VIT = dict(name="vit_tiny", patch_size=7, depth=1, hidden_dim=32,
                num_heads=2, mlp_dim=64)
TINY_RESNET = dict(name="resnet18", width_multiplier=1 / 16,
                   stage_sizes=(1, 1, 1, 1))
# Objectives that need more than their defaults to mean anything.
BLOCKS = {"combined": dict(parts=("simclr", "rotation"), weights=(1.0, 0.5),
                           simclr=dict(proj_hidden_dim=32, proj_dim=16),
                           rotation=dict(head_hidden_dim=32))}


def shrunk_block(name: str) -> dict:
  objective = objectives.get(name)
  block = {k: v for k, v in SHRINK.items() if k in objective.hparams}
  return dict(block, **BLOCKS.get(name, {}), name=name)


def contract_config(name: str, *, model: dict | None = None):
  config = tiny_config()
  config.objective = shrunk_block(name)
  needs_vit = objectives.get(name).encoder == "vit"
  config.model = model or (TINY_VIT if needs_vit else TINY_RESNET)
  config.online_probe = False
  config.optim = dict(name="adamw", lr=3e-3, scale_by_batch=False,
                      weight_decay=0.0, warmup_steps=0, final_lr_fraction=0.0,
                      grad_clip_norm=0.0)
  return config


# Made-up metadata for each vocabulary kind an objective may declare
# (data_pipelines/vocab.py): the contract needs rows, not meaning.
MADE_UP = {
    "tabular": lambda spec, n: dict(
        {c: 20.0 + 3.0 * np.arange(n) for c in spec["numeric"]},
        **{c: np.array(["F", "M", "X"])[np.arange(n) % 3]
           for c in spec["categorical"]}),
    "text": lambda spec, n: {spec["column"]: np.array(
        [f"finding {i % 4} grade {i % 3}." for i in range(n)])},
}


def declared_inputs(name: str, n: int = 16):
  """(columns(images) -> the batch columns the objective reads, or None;
  its fitted vocabularies). Vocabularies are fitted on made-up metadata
  (MADE_UP) and its rows coded into the batch, as the pretrain job does."""
  objective = objectives.get(name)
  hp = objectives.base.resolve_hparams(objective, shrunk_block(name))
  specs = objective.vocabulary(hp)
  if specs:
    metadata = {}
    for kind, spec in specs.items():
      metadata.update(MADE_UP[kind](spec, n))
    fitted = vocab_lib.fit(specs, metadata, "made-up metadata")
    derived = dict(pairs.batch_columns(metadata),
                   **vocab_lib.encode(fitted, metadata, "made-up metadata"))
    return (lambda images: derived), fitted
  return declared_columns(objective.reads(hp)), {}


def declared_columns(reads: tuple[str, ...]):
  """Batch columns the objective declares it reads (Objective.reads), made
  up: partners are the batch rolled by one, numbers a month apart, a
  distillation target two-class probabilities, FixMatch's labelled mask
  every other row."""
  if not reads:
    return None

  def columns(images):
    n = len(images)
    out = {"pair_image": np.roll(images, 1, axis=0)}
    for key in reads:
      base = 30.0 * np.arange(n, dtype=np.float32)
      out[key] = np.roll(base, 1) if key.startswith("pair_") else base
    if "target" in reads:  # a teacher's class probabilities, rows sum to 1
      first = np.linspace(0.1, 0.9, n, dtype=np.float32)
      out["target"] = np.stack([first, 1.0 - first], axis=1)
    if "labelled" in reads:
      out["labelled"] = (np.arange(n) % 2).astype(np.float32)
    return out
  return columns


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _moved(new, old) -> bool:
  """Whether any leaf of `new` differs from `old` (in numpy: a jnp op per
  leaf shape would compile one tiny program each)."""
  return any(np.any(a != b) for a, b in zip(_leaves(new), _leaves(old),
                                             strict=True))


@pytest.mark.parametrize("name", objectives.names())
def test_objective_trains_and_checkpoints(name, medmnist_dir, monkeypatch,
                                          tmp_path):
  monkeypatch.setenv("SSL_JAX_DATA_DIR", str(medmnist_dir))
  config = contract_config(name)
  columns, vocab = declared_inputs(name)
  graphdef, state, step_fn, batch = compiled_on_fixed_batch(
      config, columns=columns, vocab=vocab)
  loss_fn = objectives.bind(config, TinyInfo, vocab).make_loss()

  def loss_of(params):
    model = nnx.merge(graphdef, params, state.rest, copy=True)
    return loss_fn(model, batch, jax.random.PRNGKey(0), state.extra)[0]

  grads = jax.eval_shape(jax.grad(loss_of), state.params)  # traced only
  assert jax.tree.structure(grads) == jax.tree.structure(state.params)
  for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(state.params)):
    assert (g.shape, g.dtype) == (p.shape, p.dtype)
  copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731 (donated)
  start = copy(state)
  for _ in range(4):  # step held at 0: the same views, masks and labels
    state, metrics = step_fn(state.replace(step=state.step * 0), batch)
    assert all(np.isfinite(float(v)) for v in jax.tree.leaves(metrics)), metrics

  def loss_with(params, rest):
    # Same step index (views, masks, labels) and extra (teacher, queue,
    # centre): only the trained weights differ.
    _, m = step_fn(copy(state.replace(step=state.step * 0, params=params,
                                      rest=rest)), batch)
    return float(m["loss"])

  before = loss_with(start.params, start.rest)
  after = loss_with(state.params, state.rest)
  if objectives.get(name).minimax:  # a game: every player moves instead
    for player in state.params:
      assert _moved(state.params[player], start.params[player]), player
  else:
    assert after < before, (before, after)
  assert _moved(state.params["encoder"], start.params["encoder"]), (
      "no gradient reached the encoder")
  if "teacher" in state.extra:  # an EMA teacher follows the online weights
    assert _moved(state.extra["teacher"]["params"],
                  start.extra["teacher"]["params"])

  saver = checkpoint.Checkpointer(tmp_path / "ckpt", every_steps=1)
  saver.save(1, state)
  saver.wait()
  restored = saver.restore(start)
  saver.close()
  assert (jax.tree.structure(restored.extra)
          == jax.tree.structure(state.extra))
  for a, b in zip(_leaves((restored.extra, restored.params, restored.rest)),
                  _leaves((state.extra, state.params, state.rest)),
                  strict=True):
    np.testing.assert_array_equal(a, b)


EXACT = [n for n in objectives.names() if objectives.get(n).accumulates_exactly]


def test_some_objectives_declare_exact_accumulation():
  assert "supervised" in EXACT


@pytest.mark.parametrize("name", EXACT)
def test_accumulation_matches_the_whole_batch(name, medmnist_dir, monkeypatch):
  """On a LayerNorm encoder without random views, 2 micro-batches of 8
  update the params as the batch of 16 does."""
  monkeypatch.setenv("SSL_JAX_DATA_DIR", str(medmnist_dir))
  updated = []
  for k in (1, 2):
    config = contract_config(name, model=TINY_VIT)
    config.augment.policy = "none"
    config.optim.name = "sgd"
    config.optim.momentum = 0.0
    config.train.grad_accum_steps = k
    columns, vocab = declared_inputs(name)
    _, state, step_fn, batch = compiled_on_fixed_batch(
        config, columns=columns, vocab=vocab)
    state, _ = step_fn(state, batch)
    updated.append(_leaves(state.params))
  for whole, split in zip(*updated, strict=True):
    np.testing.assert_allclose(split, whole, rtol=1e-4, atol=1e-6)
