"""Losses against independent numpy computations on tiny fixed inputs."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest

from ssl_jax import objectives
from ssl_jax.objectives.contrastive import nt_xent
from ssl_jax.objectives.self_prediction import mae_loss, random_masking
from ssl_jax.objectives.supervised import classification_loss


def numpy_nt_xent(z1, z2, t):
  """SimCLR's loss written out the long way: loop over the 2N anchors."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n2 = len(z)
  n = n2 // 2
  losses = []
  for i in range(n2):
    j = (i + n) % n2
    others = [k for k in range(n2) if k != i]
    denom = sum(np.exp(z[i] @ z[k] / t) for k in others)
    losses.append(-np.log(np.exp(z[i] @ z[j] / t) / denom))
  return np.mean(losses)


@pytest.mark.parametrize("n,d,t", [(2, 3, 0.5), (4, 8, 0.1), (7, 5, 1.0)])
def test_nt_xent_matches_numpy(n, d, t):
  rng = np.random.default_rng(n)
  z1, z2 = rng.normal(size=(n, d)), rng.normal(size=(n, d))
  loss, _ = nt_xent(jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32), t)
  np.testing.assert_allclose(float(loss), numpy_nt_xent(z1, z2, t), rtol=1e-5)


def test_nt_xent_collapse_value():
  # All embeddings identical: every one of the 2N-1 candidates is equally
  # likely, so the loss is exactly log(2N - 1) and nothing is learned.
  n = 5
  z = jnp.ones((n, 4))
  loss, _ = nt_xent(z, z, 0.1)
  np.testing.assert_allclose(float(loss), np.log(2 * n - 1), rtol=1e-6)


def test_nt_xent_perfect_pairs_have_low_loss_and_full_accuracy():
  z1 = jnp.eye(4) * 10
  loss, acc = nt_xent(z1, z1, 0.05)
  assert float(acc) == 1.0
  assert float(loss) < 1e-3


def numpy_mae_loss(pred, target, mask, norm_pix):
  if norm_pix:
    mu = target.mean(-1, keepdims=True)
    var = target.var(-1, keepdims=True)
    target = (target - mu) / np.sqrt(var + 1e-6)
  per_patch = ((pred - target) ** 2).mean(-1)
  return (per_patch * mask).sum() / mask.sum()


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_matches_numpy_and_ignores_visible_patches(norm_pix):
  rng = np.random.default_rng(0)
  pred, target = rng.normal(size=(2, 6, 12)), rng.normal(size=(2, 6, 12))
  mask = np.array([[1, 0, 1, 0, 0, 1], [0, 0, 1, 1, 1, 0]], np.float32)
  got = mae_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask), norm_pix)
  np.testing.assert_allclose(float(got), numpy_mae_loss(pred, target, mask, norm_pix),
                             rtol=1e-5)
  # Changing predictions of visible (unmasked) patches changes nothing.
  pred2 = pred.copy()
  pred2[mask == 0] += 100.0
  got2 = mae_loss(jnp.asarray(pred2), jnp.asarray(target), jnp.asarray(mask), norm_pix)
  np.testing.assert_allclose(float(got2), float(got), rtol=1e-6)


def test_random_masking_keeps_the_configured_fraction():
  ids_keep, mask, ids_restore = random_masking(jax.random.PRNGKey(0), 3, 16, 0.75)
  assert ids_keep.shape == (3, 4)
  np.testing.assert_array_equal(np.asarray(mask.sum(1)), [12, 12, 12])
  for b in range(3):
    # kept ids are exactly the unmasked positions; restore inverts the shuffle
    assert set(np.asarray(ids_keep[b])) == set(np.flatnonzero(np.asarray(mask[b]) == 0))
    assert sorted(np.asarray(ids_restore[b])) == list(range(16))


def test_classification_loss_matches_log_softmax():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
  labels = jnp.array([0, 2])
  loss, acc = classification_loss(logits, labels, multi_label=False)
  lp = logits - jax.scipy.special.logsumexp(logits, axis=1, keepdims=True)
  np.testing.assert_allclose(float(loss), -float(lp[0, 0] + lp[1, 2]) / 2, rtol=1e-6)
  assert float(acc) == 0.5


def test_registry_names_and_unknown_name():
  assert {"simclr", "mae", "supervised"} <= set(objectives.names())
  with pytest.raises(KeyError, match="allowed: .*simclr"):
    objectives.get("simclrr")


def test_online_probe_trains_its_head_without_touching_the_encoder():
  from flax import nnx
  from ssl_jax.objectives.online_probe import with_online_probe
  from tests.tiny import bind, tiny_config

  class Info:
    num_channels, image_size, num_classes, multi_label = 1, 28, 2, False

  config = tiny_config(**{"model.stage_sizes": (1, 1, 1, 1)})
  plain, probed = objectives.get("simclr"), with_online_probe(objectives.get("simclr"))
  model = bind(config, Info, probed).build_model(nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 255, (8, 28, 28, 1), np.uint8)),
           "label": jnp.asarray(rng.integers(0, 2, (8,)))}

  def grads(objective):
    loss_fn = bind(config, objective=objective).make_loss()
    def f(p):
      return loss_fn(nnx.merge(graphdef, p, rest, copy=True), batch,
                     jax.random.PRNGKey(1), {})[0]
    return jax.jit(jax.grad(f))(params)

  with_probe, without = grads(probed), grads(plain)
  for a, b in zip(jax.tree.leaves(with_probe["encoder"]),
                  jax.tree.leaves(without["encoder"]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(with_probe["online_probe"]["linear"]["kernel"]).sum()) > 0


def test_mae_trains_a_tiny_vit_on_a_fixed_batch(medmnist_dir, monkeypatch):
  from tests.tiny import fixed_batch_losses, tiny_config
  monkeypatch.setenv("SSL_JAX_DATA_DIR", str(medmnist_dir))
  config = tiny_config(**{"online_probe": False})
  config.model = dict(name="vit_tiny", patch_size=7, depth=1, hidden_dim=32,
                      num_heads=2, mlp_dim=64)
  config.objective = dict(name="mae", mask_ratio=0.75, norm_pix_loss=True,
                          decoder_dim=32, decoder_depth=1, decoder_heads=2)
  config.augment.policy = "none"
  config.optim.lr = 3e-3
  losses, _ = fixed_batch_losses(config, 8)
  assert all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < np.mean(losses[:3])
