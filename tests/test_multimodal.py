"""Multimodal contrastive pretraining: the shared loss against numpy and
the pieces of the two towers (end to end: test_multimodal_e2e.py)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl_jax.models.text import TextTransformer
from ssl_jax.objectives import multimodal

# ------------------------------------------------------------------ loss --


def numpy_symmetric_infonce(a, b, scale, image_weight):
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  logits = scale * a.astype(np.float64) @ b.T.astype(np.float64)

  def diagonal_ce(x):  # row i's target is column i
    x = x - x.max(1, keepdims=True)
    log_p = x - np.log(np.exp(x).sum(1, keepdims=True))
    return -np.mean(np.diag(log_p))

  return (image_weight * diagonal_ce(logits)
          + (1 - image_weight) * diagonal_ce(logits.T))


@pytest.mark.parametrize("seed, scale, image_weight",
                         [(0, 14.3, 0.5), (1, 2.0, 0.75), (2, 100.0, 0.0)])
def test_symmetric_infonce_matches_numpy(seed, scale, image_weight):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(7, 5)).astype(np.float32)
  b = (a + rng.normal(size=(7, 5))).astype(np.float32)
  loss, metrics = multimodal.symmetric_infonce(
      jnp.asarray(a), jnp.asarray(b), jnp.asarray(scale), image_weight)
  np.testing.assert_allclose(float(loss), numpy_symmetric_infonce(
      a, b, scale, image_weight), rtol=2e-5)
  logits = a @ b.T / np.linalg.norm(a, axis=1)[:, None] / np.linalg.norm(
      b, axis=1)[None]
  assert float(metrics["image_to_paired_acc"]) == pytest.approx(
      np.mean(logits.argmax(1) == np.arange(7)))
  assert float(metrics["paired_to_image_acc"]) == pytest.approx(
      np.mean(logits.argmax(0) == np.arange(7)))


def test_symmetric_infonce_collapse_and_perfect_pairs():
  """Every row alike: log N, whatever the scale; orthogonal exact pairs:
  about 0 at a large scale."""
  same = jnp.ones((6, 4))
  loss, _ = multimodal.symmetric_infonce(same, same, jnp.asarray(50.0))
  assert float(loss) == pytest.approx(np.log(6), rel=1e-5)
  eye = jnp.eye(6)
  loss, metrics = multimodal.symmetric_infonce(eye, eye, jnp.asarray(100.0))
  assert float(loss) < 1e-6 and float(metrics["image_to_paired_acc"]) == 1.0


def test_logit_scale_is_learned_clipped_or_fixed():
  learned = multimodal.LogitScale(0.07, learn=True, max_scale=100.0)
  assert float(learned()) == pytest.approx(1 / 0.07, rel=1e-5)
  learned.log_scale[...] = jnp.asarray(10.0)  # exp(10) > 100: clipped
  assert float(learned()) == pytest.approx(100.0, rel=1e-5)
  fixed = multimodal.LogitScale(0.1, learn=False, max_scale=100.0)
  assert fixed.log_scale is None and float(fixed()) == pytest.approx(10.0)
  with pytest.raises(ValueError, match="max_logit_scale=5"):
    multimodal.LogitScale(0.1, learn=True, max_scale=5.0)


def test_text_tower_ignores_padding():
  """Masked keys and the masked mean: a sequence padded to 6 encodes as
  the same sequence padded to 4 (same weights, positions truncated)."""
  kwargs = dict(vocab_size=12, width=16, depth=2, num_heads=2, mlp_dim=32)
  long = TextTransformer(max_length=6, rngs=nnx.Rngs(0), **kwargs)
  short = TextTransformer(max_length=4, rngs=nnx.Rngs(1), **kwargs)
  weights = nnx.to_pure_dict(nnx.state(long))
  weights["positions"] = weights["positions"][:4]
  state = nnx.state(short)
  nnx.replace_by_pure_dict(state, weights)
  nnx.update(short, state)
  tokens = np.array([[2, 5, 7, 3], [2, 9, 0, 0]], np.int32)
  padded = np.pad(tokens, ((0, 0), (0, 2)))
  np.testing.assert_allclose(long(jnp.asarray(padded)),
                             short(jnp.asarray(tokens)), atol=1e-5)
  assert not np.allclose(long(jnp.asarray(padded))[1],
                         long(jnp.asarray(padded).at[1, 2].set(4))[1])


# -------------------------------------------------------------- zero-shot --

class _Info:
  num_classes, class_names, task = 2, ("benign", "malignant"), "binary-class"


def test_prompts_default_to_the_class_names_in_label_order():
  from ssl_jax.evaluation import zero_shot
  from tests.tiny import tiny_config
  config = tiny_config()
  assert zero_shot.class_prompts(config, _Info) == ["benign", "malignant"]
  config.finetune.class_prompts = ("a benign mass", "a malignant mass")
  assert zero_shot.class_prompts(config, _Info)[1] == "a malignant mass"
  config.finetune.class_prompts = ("one",)
  with pytest.raises(ValueError, match=r"class_prompts has 1 prompts; the "
                     r"data has 2 classes"):
    zero_shot.class_prompts(config, _Info)
  config.finetune.class_prompts = ()
  unnamed = type("Unnamed", (), dict(num_classes=2, class_names=()))
  with pytest.raises(ValueError, match=r"no class names.*class_prompts"):
    zero_shot.class_prompts(config, unnamed)


def test_zero_shot_needs_an_image_text_workdir(tmp_path):
  from ssl_jax.evaluation import zero_shot
  with pytest.raises(ValueError, match=r"text tower of an image-text "
                     r"pretraining \(clip_text\): set config.finetune."
                     r"pretrained"):
    zero_shot.pretrained_setup("")
  with pytest.raises(ValueError, match="config.json is missing"):
    zero_shot.pretrained_setup(str(tmp_path))
