"""Innate-relationship pretext tasks: rotation, jigsaw, relative patch.

Reference checks on tiny fixed inputs against numpy, then a few real train
steps per method on a fixed BreastMNIST batch.
"""
import itertools

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from ssl_jax import objectives
from ssl_jax.objectives import innate
from tests.tiny import bind


def _batch(image):
  """[H, W] numpy -> [1, H, W, 1] jax array."""
  return jnp.asarray(image, jnp.float32)[None, :, :, None]


# --------------------------------------------------------------- rotation --

def test_rotation_of_a_known_image_and_its_label():
  image = np.array([[0, 1], [2, 3]])
  # Counter-clockwise by k * 90 degrees, written out by hand.
  expected = {0: [[0, 1], [2, 3]], 1: [[1, 3], [0, 2]],
              2: [[3, 2], [1, 0]], 3: [[2, 0], [3, 1]]}
  stack = innate.rotations(_batch(image))
  for k, want in expected.items():
    np.testing.assert_array_equal(stack[k, 0, :, :, 0], want)
  # Per-example gather: example b is rotated by its own label k[b].
  rng = np.random.default_rng(0)
  images = rng.normal(size=(6, 5, 5, 2)).astype(np.float32)
  k = np.array([0, 1, 2, 3, 1, 3])
  got = np.asarray(innate.rotate(jnp.asarray(images), jnp.asarray(k)))
  for b in range(6):
    np.testing.assert_array_equal(got[b], np.rot90(images[b], k[b]))


def test_rotation_rejects_non_square_images():
  with pytest.raises(ValueError, match="square"):
    innate.rotations(jnp.zeros((1, 4, 5, 1)))


# ----------------------------------------------------------------- jigsaw --

def _pairwise_hamming(perms):
  return np.array([[np.sum(a != b) for b in perms] for a in perms])


def test_permutation_set_size_uniqueness_distance_and_determinism():
  make = innate.permutation_set.__wrapped__  # bypass the cache
  perms = make(9, 30, pool_size=2000, seed=0)
  assert perms.shape == (30, 9) and perms.dtype == np.int32
  for p in perms:
    assert sorted(p) == list(range(9))
  assert len({tuple(p) for p in perms}) == 30
  dist = _pairwise_hamming(perms)
  assert dist[~np.eye(30, dtype=bool)].min() > 0
  np.testing.assert_array_equal(make(9, 30, pool_size=2000, seed=0), perms)
  assert not np.array_equal(make(9, 30, pool_size=2000, seed=1), perms)


def test_permutation_set_is_greedy_maximin_over_a_full_pool():
  # 4 tiles: 24 <= pool_size, so the pool is every permutation. Each pick
  # after the first maximises the minimum distance to those before it.
  perms = innate.permutation_set.__wrapped__(4, 6, pool_size=100, seed=3)
  pool = list(itertools.permutations(range(4)))
  for i in range(1, len(perms)):
    best = max(min(np.sum(np.array(c) != q) for q in perms[:i]) for c in pool)
    assert min(np.sum(perms[i] != q) for q in perms[:i]) == best
  all24 = innate.permutation_set.__wrapped__(4, 24, pool_size=100, seed=0)
  assert len({tuple(p) for p in all24}) == 24
  with pytest.raises(ValueError, match="num_permutations"):
    innate.permutation_set.__wrapped__(4, 25, pool_size=100, seed=0)


def test_jigsaw_tiles_shuffle_and_inverse_reassembly():
  image = np.arange(29 * 29, dtype=np.float32).reshape(29, 29)
  cropped = innate.crop_to_grid(_batch(image), 3)
  np.testing.assert_array_equal(cropped[0, :, :, 0], image[1:28, 1:28])
  images = jnp.concatenate([cropped, -cropped])
  tiles = innate.to_tiles(images, 3)
  assert tiles.shape == (2, 9, 9, 9, 1)
  ref = image[1:28, 1:28]
  for r, c in itertools.product(range(3), range(3)):
    np.testing.assert_array_equal(tiles[0, 3 * r + c, :, :, 0],
                                  ref[9 * r:9 * r + 9, 9 * c:9 * c + 9])
  perms = innate.permutation_set(9, 10, pool_size=500, seed=0)[[4, 7]]
  shuffled = innate.shuffle_tiles(tiles, jnp.asarray(perms))
  for b, i in itertools.product(range(2), range(9)):
    np.testing.assert_array_equal(shuffled[b, i], tiles[b, perms[b, i]])
  inverse = jnp.asarray(np.argsort(perms, axis=1))
  restored = innate.from_tiles(innate.shuffle_tiles(shuffled, inverse), 3)
  np.testing.assert_array_equal(restored, images)
  assert not np.array_equal(innate.from_tiles(shuffled, 3), images)


# --------------------------------------------------------- relative patch --

def test_relative_patch_corners_and_patches_for_all_8_positions():
  p, gap = 3, 2
  stride = p + gap
  span = innate.grid_span(p, gap)
  assert span == 13
  image = np.arange(span * span, dtype=np.float32).reshape(span, span)
  labels = jnp.arange(8)
  centre, neighbour = innate.patch_pair_corners(
      jax.random.PRNGKey(0), labels, image_hw=(span, span), patch_size=p,
      gap=gap, jitter=0)
  # Neighbours in row-major order around the centre, centre skipped.
  offsets = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0),
             (1, 1)]
  np.testing.assert_array_equal(centre, np.full((8, 2), stride))
  np.testing.assert_array_equal(
      neighbour, stride + stride * np.array(offsets))
  images = jnp.broadcast_to(_batch(image), (8, span, span, 1))
  centres = innate.extract_patches(images, centre, p)
  neighbours = innate.extract_patches(images, neighbour, p)
  for label, (dy, dx) in enumerate(offsets):
    np.testing.assert_array_equal(centres[label, :, :, 0],
                                  image[stride:stride + p, stride:stride + p])
    y, x = stride * (1 + dy), stride * (1 + dx)
    np.testing.assert_array_equal(neighbours[label, :, :, 0],
                                  image[y:y + p, x:x + p])


def test_relative_patch_jitter_and_placement_stay_inside_the_image():
  p, gap, jitter, size = 4, 2, 2, 24
  labels = jnp.asarray(np.tile(np.arange(8), 64))
  centre, neighbour = innate.patch_pair_corners(
      jax.random.PRNGKey(1), labels, image_hw=(size, size), patch_size=p,
      gap=gap, jitter=jitter)
  centre, neighbour = np.asarray(centre), np.asarray(neighbour)
  for corners in (centre, neighbour):
    assert corners.min() >= 0 and corners.max() + p <= size
  offset = (p + gap) * (innate.NEIGHBOURS[np.asarray(labels)] - 1)
  error = neighbour - centre - offset
  assert np.abs(error).max() <= 2 * jitter and np.abs(error).max() > 0
  with pytest.raises(ValueError, match="need 20 px"):
    innate.patch_pair_corners(jax.random.PRNGKey(0), labels, image_hw=(19, 19),
                              patch_size=p, gap=gap, jitter=jitter)


class _Info:
  num_channels, image_size, num_classes, multi_label = 1, 28, 2, False


def _trace_loss(objective: dict, **overrides):
  """Builds the model and its loss inside jax.eval_shape: shapes, no compile."""
  from flax import nnx
  from tests.tiny import bind, tiny_config
  config = tiny_config(objective=objective, **overrides)
  method = objectives.get(objective["name"])
  batch = {"image": jnp.zeros((4, 28, 28, 1), jnp.uint8),
           "label": jnp.zeros((4,), jnp.int32)}

  def run():
    model = bind(config, _Info, method).build_model(nnx.Rngs(0))
    return bind(config, objective=method).make_loss()(model, batch, jax.random.PRNGKey(0), {})

  return jax.eval_shape(run)


def test_rotation_all_four_copies_and_policy_check():
  from tests.tiny import tiny_config
  objective = dict(name="rotation", all_rotations=True, head_hidden_dim=8,
                   head_layers=1)
  loss, metrics, _ = _trace_loss(objective)
  assert loss.shape == () and "rotation_acc" in metrics
  config = tiny_config(objective=objective)
  config.augment.overrides.rot90 = True  # views that rotate: ambiguous labels
  with pytest.raises(ValueError, match="rot90"):
    bind(config, objective=objectives.get("rotation")).make_loss()


def test_vit_backbone_needs_full_size_tiles():
  vit = dict(name="vit_tiny", patch_size=4)
  with pytest.raises(ValueError, match="tile_size=16"):
    _trace_loss(dict(name="jigsaw", num_permutations=10,
                     permutation_pool_size=500, tile_size=16), model=vit)
  loss, _, _ = _trace_loss(dict(name="relative_patch", patch_resize=28),
                           model=vit)
  assert loss.shape == ()


# ------------------------------------------------------- real train steps --
# (Every objective trains in tests/test_objective_contract.py; run_steps is
# the helper the generative tests share.)

@pytest.fixture(scope="module")
def fixed_batch(medmnist_dir):
  """Where the smoke tests read their fixed BreastMNIST batch."""
  return medmnist_dir


def run_steps(objective: dict, fixed_batch, *, lr: float, steps: int):
  """Losses of `steps` real train steps on one batch, replaying one sample.

  The step draws its randomness from fold_in(rng, state.step); holding
  state.step at 0 replays the same views and pretext labels each step, so
  the loss must fall: a test of the gradients and the wiring, not of how
  hard the pretext task is.
  """
  from tests.tiny import compiled_on_fixed_batch, tiny_config
  config = tiny_config(**{"model.stage_sizes": (1, 1, 1, 1),
                          "objective": objective, "online_probe": False,
                          "optim.lr": lr, "optim.warmup_steps": 0})
  _, state, step_fn, batch = compiled_on_fixed_batch(config, data_dir=fixed_batch)
  history = []
  for _ in range(steps):
    state = state.replace(step=state.step * 0)
    state, metrics = step_fn(state, batch)
    history.append(jax.device_get(metrics))
  return history
