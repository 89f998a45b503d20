"""The stage-2 protocols the benchmark adds (logreg, early_layer, combine,
last_k), the last-k optax mask, layer-wise learning rates and test-time
flips, and the scoring every cell goes through (bootstrap CI; per-label
AUROC for multi-label tasks)."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssl_jax import augment, augment3d, models, parallel, views
from ssl_jax.evaluation import classifier, metrics, probes
from ssl_jax.evaluation.cells import score
from ssl_jax.evaluation.encoder_context import (FINAL, SPLITS, EncoderContext,
                                                Predictions)
from ssl_jax.evaluation.protocols import PROTOCOLS
from ssl_jax.jobs import common, finetune
from ssl_jax.models.heads import Classifier
from ssl_jax.pytree import path_keys
from tests.test_benchmark import tiny_benchmark_config


@pytest.fixture(scope="module")
def contexts(medmnist_dir, tmp_path_factory):
  """Two random-init tiny encoders on real BreastMNIST (no pretraining)."""
  config = tiny_benchmark_config(**{
      "data.data_dir": str(medmnist_dir), "finetune.logreg_l2s": (1e-2, 1.0),
      "finetune.logreg_max_iters": 200})
  config.model = config.benchmark.budget.model
  info = common.data_info(config)
  cfg = finetune.stage2_config(config, None, info)
  data = {s: common.load_split(cfg, s) for s in SPLITS}
  mesh = parallel.make_mesh(1)
  workdir = str(tmp_path_factory.mktemp("stage2"))  # cell logs land here
  make = lambda seed: EncoderContext(
      config=cfg, workdir=workdir, mesh=mesh, info=info, data=data,
      encoder_weights=None, init_seed=seed)
  return make(0), make(1)


def _score(ctx, preds: Predictions) -> dict:
  """`score` as a cell calls it, from a context's config, task and labels."""
  labels = {split: ctx.labels(split) for split in ("val", "test")}
  return score(ctx.config.finetune, ctx.task, labels, preds.probs, seed=0)


def _valid(preds: Predictions, ctx) -> dict:
  scores = _score(ctx, preds)
  for split in ("val", "test"):
    assert preds.probs[split].shape == (len(ctx.labels(split)), 2)
    assert 0.0 <= scores[split]["auroc"] <= 1.0
  return scores


def test_logreg_converges_and_reports_its_choice(contexts, tmp_path):
  ctx, _ = contexts
  preds = PROTOCOLS.get("logreg")(ctx, ctx.subset(0.1, 0), 0)
  _valid(preds, ctx)
  assert preds.info["l2"] in (1e-2, 1.0)
  assert preds.info["converged"] is True and preds.info["iterations"] < 200


def test_early_layer_probes_an_earlier_stage(contexts):
  ctx, _ = contexts
  assert ctx.features("train", "stage3").shape[1] == 16  # width 1/16: 4*2**2
  assert ctx.features("train").shape[1] == 32
  preds = PROTOCOLS.get("early_layer")(ctx, ctx.subset(0.1, 0), 0)
  _valid(preds, ctx)
  assert preds.info["layer"] == "stage3"
  with pytest.raises(ValueError, match="allowed: final, stage1, stage2"):
    ctx.features("train", "stage9")


def test_combine_concatenates_the_encoders(contexts, monkeypatch):
  ctx, peer = contexts
  with pytest.raises(ValueError, match="config.benchmark.combine"):
    PROTOCOLS.get("combine")(ctx, ctx.subset(0.1, 0), 0)
  seen = {}
  real = probes.fit_linear_probe

  def spy(train_feats, *args, **kwargs):
    seen["dim"] = train_feats.shape[1]
    return real(train_feats, *args, **kwargs)

  monkeypatch.setattr(probes, "fit_linear_probe", spy)
  combined = EncoderContext(**{**vars(ctx), "peers": (peer,)})
  _valid(PROTOCOLS.get("combine")(combined, ctx.subset(0.1, 0), 0), ctx)
  assert seen["dim"] == 32 + 32


def test_contexts_of_a_sweep_compile_the_feature_extractor_once(contexts):
  """Encoders of one architecture (the sweep's methods and seeds) share
  the compiled feature extractor: a second encoder adds no compile."""
  ctx, peer = contexts
  shared: dict = {}
  first, second = (EncoderContext(**{**vars(c), "compiled": shared,
                                     "_features": {}}) for c in (ctx, peer))
  first.features("train")
  (embed,) = shared.values()
  compiled = embed._cache_size()
  assert compiled >= 1
  second.features("train")
  assert embed._cache_size() == compiled
  assert not np.allclose(first.features("test"), second.features("test"))


def test_a_context_pickled_for_a_cell_worker_keeps_what_it_computes_with(
    contexts):
  """A context copied to a worker process (cells.py) has the same data,
  features and mesh shape, a lock of its own, and shares a compiled dict
  there exactly with the copies that shared one here."""
  import pickle  # noqa: PLC0415
  ctx, peer = contexts
  shared: dict = {}
  first, second = (EncoderContext(**{**vars(c), "compiled": shared,
                                     "_features": {}}) for c in (ctx, peer))
  first.features("train")
  combined = EncoderContext(**{**vars(ctx), "peers": (second,)})
  one, two, three = pickle.loads(pickle.dumps((first, second, combined)))
  np.testing.assert_array_equal(one.features("test"), first.features("test"))
  np.testing.assert_array_equal(one.data["val"][0], first.data["val"][0])
  assert one.mesh.shape == first.mesh.shape
  assert one.compiled is two.compiled is three.peers[0].compiled
  assert one.compiled == {} and three.compiled is not one.compiled
  assert one._features_lock is not first._features_lock


def test_trainers_of_other_run_lengths_share_init_and_inference(contexts):
  """Only the step holds the run length (its lr schedule): a trainer for
  another length reuses the init and predict programs, starts from the
  very state a trainer built alone would, and trains."""
  ctx, _ = contexts
  short = classifier.ClassifierTrainer(ctx, steps=4)
  longer = classifier.ClassifierTrainer(ctx, steps=6, like=short)
  alone = classifier.ClassifierTrainer(ctx, steps=6)
  assert longer._init is short._init and longer.predict is short.predict
  assert longer.step_fn is not short.step_fn
  for a, b in zip(jax.tree.leaves(longer.init_state(1, None)),
                  jax.tree.leaves(alone.init_state(1, None))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  preds = longer.run(ctx, ctx.subset(0.1, 0), 0, weights=None, name="like")
  _valid(preds, ctx)
  assert preds.info["steps"] == 6


def test_last_k_trains_only_the_last_stage_and_the_head(contexts):
  ctx, _ = contexts
  preds = PROTOCOLS.get("last_k")(ctx, ctx.subset(0.1, 0), 0)
  _valid(preds, ctx)
  assert preds.info["last_k"] == 1 and preds.info["selected_step"] in (2, 4)


def _labels(model, k):
  params = nnx.state(model, nnx.Param)
  flat = jax.tree_util.tree_flatten_with_path(
      classifier.trainable_labels(model, k)(params))[0]
  return {path_keys(p)[:3]: v for p, v in flat}


def test_last_k_mask_follows_stage_and_block_names():
  rngs = nnx.Rngs(0)
  resnet = Classifier(models.get("resnet18")(
      in_channels=1, image_size=28, rngs=rngs, width_multiplier=1 / 16,
      stage_sizes=(1, 1, 1, 1)), 2, rngs=rngs)
  labels = _labels(resnet, 2)
  assert labels[("encoder", "stages", 3)] == labels[("encoder", "stages", 2)] == "train"
  assert labels[("encoder", "stages", 1)] == labels[("encoder", "stem_conv", "kernel")] == "frozen"
  assert labels[("head", "linear", "kernel")] == "train"
  vit = Classifier(models.get("vit_tiny")(
      in_channels=1, image_size=28, rngs=rngs, depth=4, hidden_dim=32,
      num_heads=2), 2, rngs=rngs)
  labels = _labels(vit, 1)
  assert labels[("encoder", "blocks", 3)] == labels[("encoder", "norm", "scale")] == "train"
  assert labels[("encoder", "blocks", 2)] == labels[("encoder", "patch_embed", "kernel")] == "frozen"
  assert set(_labels(vit, 0).values()) == {"train", "frozen"}
  with pytest.raises(ValueError, match=r"last_k=5 must be in \[0, 4\]"):
    classifier.trainable_labels(vit, 5)

  # The mask in an optimizer: frozen leaves get exactly zero updates, even
  # with weight decay; trained ones move.
  params = nnx.state(resnet, nnx.Param)
  tx = optax.multi_transform(
      {"train": optax.adamw(1e-2, weight_decay=0.1), "frozen": optax.set_to_zero()},
      classifier.trainable_labels(resnet, 1))
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  flat = jax.tree_util.tree_flatten_with_path(updates)[0]
  moved = {path_keys(p)[:3] for p, u in flat if float(jnp.abs(u).sum()) > 0}
  assert moved == {k for k, v in _labels(resnet, 1).items() if v == "train"}


def test_unit_depths_count_from_the_stem_to_the_head():
  rngs = nnx.Rngs(0)
  resnet = Classifier(models.get("resnet18")(
      in_channels=1, image_size=28, rngs=rngs, width_multiplier=1 / 16,
      stage_sizes=(1, 1, 1, 1)), 2, rngs=rngs)
  vit = Classifier(models.get("vit_tiny")(
      in_channels=1, image_size=28, rngs=rngs, depth=3, hidden_dim=32,
      num_heads=2), 2, rngs=rngs)
  for model, expected in (
      (resnet, {("encoder", "stem_conv", "kernel"): 0,
                ("encoder", "stages", 0): 1, ("encoder", "stages", 3): 4,
                ("head", "linear", "kernel"): 5}),
      (vit, {("encoder", "patch_embed", "kernel"): 0,
             ("encoder", "blocks", 0): 1, ("encoder", "blocks", 2): 3,
             ("encoder", "norm", "scale"): 4, ("head", "linear", "bias"): 4})):
    depth, _ = classifier.unit_depths(model, "test")
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    depths = {path_keys(p)[:3]: depth(p) for p, _ in flat}
    assert {k: depths[k] for k in expected} == expected
  mlp = types.SimpleNamespace(encoder=object())
  with pytest.raises(ValueError, match="config.finetune.layer_decay needs an "
                     "encoder that declares its blocks"):
    classifier.layer_decay_scales(mlp, 0.5)


def test_layer_decay_scales_each_units_step(contexts):
  """One step from the same weights and batch: with layer_decay d every
  weight moves d ** (units + 1 - depth) times as far as at d = 1 (the
  head at the full rate, the stem at d ** 5); a from-scratch encoder's
  trainer keeps one rate."""
  ctx, _ = contexts
  cfg = ctx.config.copy_and_resolve_references()
  cfg.finetune.optim.warmup_steps = 0  # the first step at the peak rate
  cfg.finetune.layer_decay = 0.5
  ctx = EncoderContext(**{**vars(ctx), "config": cfg, "compiled": {}})
  plain = classifier.ClassifierTrainer(ctx, steps=4)
  decayed = classifier.ClassifierTrainer(ctx, steps=4, like=plain,
                                         layer_decay=0.5)
  assert decayed._init is not plain._init  # its optimizer state differs
  batch = {"image": ctx.data["train"][0][:16],
           "label": ctx.labels("train")[:16]}
  moved = []
  for trainer in (plain, decayed):
    state = trainer.init_state(0, None)
    before = jax.device_get(state.params)
    state, _ = trainer.step_fn(state, batch)
    moved.append(jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b),
                              jax.device_get(state.params), before))
  depth, units = classifier.unit_depths(
      nnx.eval_shape(lambda: plain._model(0)), "test")
  flat_plain = jax.tree_util.tree_flatten_with_path(moved[0])[0]
  flat_decayed = jax.tree.leaves(moved[1])
  for (path, step_plain), step_decayed in zip(flat_plain, flat_decayed):
    factor = 0.5 ** (units + 1 - depth(path))
    np.testing.assert_allclose(step_decayed, factor * step_plain,
                               rtol=1e-3, atol=1e-7, err_msg=str(path))
  stem = [np.abs(m).max() for p, m in flat_plain
          if path_keys(p)[:2] == ("encoder", "stem_conv")]
  assert min(stem) > 0  # the plain step moved the stem: the ratio is tested
  assert classifier.trainer_for(ctx, 20).layer_decay == 0.5
  assert classifier.trainer_for(ctx, 20, pretrained=False).layer_decay == 1.0


def test_sharpness_aware_stage_2_moves_only_what_trains(contexts):
  """`finetune.optim.sam_rho`: one step from the same weights and batch
  logs the same loss as the plain step (the first pass) but updates along
  another gradient; with `last_k` the frozen stages stay exactly put."""
  ctx, _ = contexts
  batch = {"image": ctx.data["train"][0][:16],
           "label": ctx.labels("train")[:16]}

  def one_step(sam_rho, last_k=None):
    cfg = ctx.config.copy_and_resolve_references()
    cfg.finetune.optim.warmup_steps = 0
    cfg.finetune.optim.sam_rho = sam_rho
    own = EncoderContext(**{**vars(ctx), "config": cfg, "compiled": {}})
    trainer = classifier.ClassifierTrainer(own, last_k=last_k, steps=4)
    state = trainer.init_state(0, None)
    before = jax.device_get(state.params)
    state, logged = trainer.step_fn(state, batch)
    return before, jax.device_get(state.params), float(logged["loss"])

  start, plain, plain_loss = one_step(0.0)
  _, sharp, sharp_loss = one_step(0.5)
  assert sharp_loss == pytest.approx(plain_loss, rel=1e-5)
  differ = [not np.allclose(a, b, rtol=1e-4, atol=0) for a, b in
            zip(jax.tree.leaves(plain), jax.tree.leaves(sharp))]
  assert sum(differ) > len(differ) // 2
  _, frozen_run, _ = one_step(0.5, last_k=1)
  _, frozen_plain, _ = one_step(0.0, last_k=1)
  assert not all(np.allclose(a, b, rtol=1e-4, atol=0) for a, b in zip(
      jax.tree.leaves(frozen_plain), jax.tree.leaves(frozen_run)))
  frozen = 0
  for (path, new), old in zip(
      jax.tree_util.tree_flatten_with_path(frozen_run)[0],
      jax.tree.leaves(start), strict=True):
    stage = path_keys(path)[:3]
    if stage[0] == "encoder" and stage[1:] != ("stages", 3):
      np.testing.assert_array_equal(new, old, err_msg=str(path))
      frozen += 1
  assert frozen > 0


def test_flipped_views_are_the_mirrorings_the_policy_trains_with():
  images = jnp.arange(2 * 3 * 4 * 1).reshape(2, 3, 4, 1)
  safe = views.flipped_views(augment.get("medical_safe"), images)
  assert len(safe) == 2  # left-right only: an upside-down view is never seen
  np.testing.assert_array_equal(safe[1], images[:, :, ::-1])
  both = views.flipped_views(augment.get("fundus"), images)
  np.testing.assert_array_equal(both[3], images[:, ::-1, ::-1])
  assert len(views.flipped_views(augment.get("none"), images)) == 1
  volumes = jnp.arange(2 * 2 * 3 * 4).reshape(2, 2, 3, 4, 1)
  lifted = views.flipped_views(
      augment3d.from_2d(augment.get("medical_safe")), volumes)
  np.testing.assert_array_equal(lifted[1], volumes[:, :, :, ::-1])


def test_test_time_flips_average_the_flipped_predictions(contexts):
  """A trainer with finetune.test_time_flips predicts the mean of the
  plain predictions on the image and on its mirror image (the tiny
  config's views flip left-right only), which differ."""
  ctx, _ = contexts
  cfg = ctx.config.copy_and_resolve_references()
  cfg.finetune.test_time_flips = True
  flipped = classifier.ClassifierTrainer(
      EncoderContext(**{**vars(ctx), "config": cfg, "compiled": {}}), steps=4)
  plain = classifier.ClassifierTrainer(ctx, steps=4)
  state = plain.init_state(0, None)
  rng = np.random.default_rng(0)
  dim = ctx.features("train").shape[1]
  state = classifier.with_head(state, rng.normal(size=(dim, 2)).astype(np.float32),
                               np.zeros(2, np.float32))
  images = ctx.data["test"][0][:32]
  one, mirror = (np.asarray(plain.predict(state.params, state.rest, x))
                 for x in (images, images[:, :, ::-1]))
  assert np.abs(one - mirror).max() > 1e-3  # the flip changes predictions
  np.testing.assert_allclose(
      flipped.predict(state.params, state.rest, images), (one + mirror) / 2,
      rtol=1e-5, atol=1e-6)


def test_logreg_matches_sklearn_at_convergence():
  sklearn = pytest.importorskip("sklearn.linear_model")
  rng = np.random.default_rng(0)
  x = rng.normal(size=(300, 12))
  w = rng.normal(size=12)
  y = (x @ w + rng.normal(size=300) > 0).astype(int)
  xv = rng.normal(size=(80, 12))
  yv = (xv @ w > 0).astype(int)
  l2 = 1e-2
  probe = probes.fit_logreg(x, y, xv, yv, num_classes=2, task=metrics.BINARY,
                            l2s=(l2,), tol=1e-5)
  assert probe.converged
  # Two-class softmax with l2/2 |W|^2 is binary logistic regression on the
  # logit difference with l2/4 |w|^2, i.e. sklearn's C = 2 / (l2 N).
  ref = sklearn.LogisticRegression(C=2 / (l2 * len(x)), tol=1e-10, max_iter=10_000)
  ref.fit((x - probe.mean) / probe.std, y)
  np.testing.assert_allclose(probe.w[:, 1] - probe.w[:, 0], ref.coef_[0], atol=2e-4)
  np.testing.assert_allclose(probe.predict_proba(xv)[:, 1],
                             ref.predict_proba((xv - probe.mean) / probe.std)[:, 1],
                             atol=2e-4)
  with pytest.raises(ValueError, match="positive l2s"):
    probes.fit_logreg(x, y, xv, yv, num_classes=2, task=metrics.BINARY, l2s=(0.0,))


def test_scores_give_per_label_auroc_and_ci_for_multi_label():
  rng = np.random.default_rng(0)
  y = (rng.random((200, 3)) < 0.3).astype(int)
  probs = np.clip(y * 0.3 + rng.random((200, 3)) * 0.7, 0, 1)
  ctx = types.SimpleNamespace(
      task=metrics.MULTI_LABEL, labels=lambda split: y,
      config=types.SimpleNamespace(finetune=tiny_benchmark_config().finetune))
  out = _score(ctx, Predictions({"val": probs, "test": probs}))
  per_label = out["test"]["auroc_per_class"]
  assert len(per_label) == 3
  assert out["test"]["auroc"] == pytest.approx(np.mean(per_label))
  low, high = out["test"]["auroc_ci"]
  assert low < out["test"]["auroc"] < high


def test_scores_cut_at_the_threshold_validation_chose():
  """val_balanced: the cut-off comes from validation scores alone and is
  applied to test as is; medmnist keeps 0.5 (here: only the majority)."""
  y_val, y_test = np.array([0, 0, 0, 1, 1, 0]), np.array([0, 0, 1, 1, 0, 0])
  probs = {"val": np.array([0.1, 0.2, 0.25, 0.3, 0.4, 0.05]),
           "test": np.array([0.1, 0.15, 0.35, 0.45, 0.2, 0.05])}
  labels = {"val": y_val, "test": y_test}

  def scored(rule, test_labels):
    ft = tiny_benchmark_config(**{"finetune.decision_threshold": rule}).finetune
    ctx = types.SimpleNamespace(
        task=metrics.BINARY, config=types.SimpleNamespace(finetune=ft),
        labels=lambda split: test_labels if split == "test" else labels[split])
    return _score(ctx, Predictions(probs))["test"]

  tuned, fixed = scored("val_balanced", y_test), scored("medmnist", y_test)
  assert tuned["threshold"] == pytest.approx(0.275) and fixed["threshold"] == 0.5
  assert tuned["accuracy"] == 1.0 and tuned["balanced_accuracy"] == 1.0
  assert fixed["balanced_accuracy"] == 0.5 and fixed["accuracy"] == pytest.approx(4 / 6)
  assert tuned["auroc"] == fixed["auroc"] == 1.0
  assert scored("val_balanced", 1 - y_test)["threshold"] == tuned["threshold"]
  # val_prior: 2 positives of 6 in validation -> the cut between ranks 4 and 5.
  assert scored("val_prior", y_test)["threshold"] == pytest.approx(0.275)


def _synthetic(ctx, separable: bool):
  """`ctx` with features where class 1 is shifted by 3 along 4 of 16 dims
  (separable) or labels independent of the features (not)."""
  import dataclasses  # noqa: PLC0415
  rng = np.random.default_rng(5)
  data, feats = {}, {}
  for split, n in (("train", 200), ("val", 100), ("test", 100)):
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 16)).astype(np.float32)
    if separable:
      x[:, :4] += 3.0 * (2 * y[:, None] - 1)
    else:
      y = rng.permutation(y)
    data[split] = (np.zeros((n, 1)), y)
    feats[split] = {FINAL: x}
  return dataclasses.replace(ctx, data=data, _features=feats)


@pytest.mark.parametrize("protocol", ["linear", "logreg", "knn"])
def test_protocols_separate_separable_features(contexts, protocol):
  """Validity beyond shapes: features a line separates must score AUROC
  near 1 under every feature protocol, and features without signal near
  0.5 (the score can fail)."""
  ctx, _ = contexts
  good = _synthetic(ctx, separable=True)
  preds = PROTOCOLS.get(protocol)(good, np.arange(200), 0)
  scores = _valid(preds, good)
  assert scores["test"]["auroc"] > 0.95 and scores["val"]["auroc"] > 0.95, scores
  noise = _synthetic(ctx, separable=False)
  scores = _valid(PROTOCOLS.get(protocol)(noise, np.arange(200), 0), noise)
  assert 0.3 < scores["test"]["auroc"] < 0.7, scores


def test_each_protocol_registers_its_kind_and_label_once():
  """Reports and plots read what a protocol trains and its table label from
  the registry: tables in registration order, plots end-to-end first."""
  from ssl_jax.evaluation import protocols  # noqa: PLC0415
  assert list(protocols.labels()) == [
      "linear", "knn", "finetune", "scratch", "distill", "scratch_distill",
      "fixmatch", "scratch_fixmatch", "logreg", "early_layer", "last_k", "combine", "zero_shot"]
  assert protocols.kinds() == {
      "finetune": "end-to-end", "scratch": "end-to-end",
      "distill": "end-to-end", "scratch_distill": "end-to-end",
      "fixmatch": "end-to-end", "scratch_fixmatch": "end-to-end",
      "last_k": "partial fine-tune", "linear": "frozen", "knn": "frozen",
      "logreg": "frozen", "early_layer": "frozen", "combine": "frozen",
      "zero_shot": "frozen"}
  assert list(protocols.kinds())[:7] == [
      "finetune", "scratch", "distill", "scratch_distill", "fixmatch",
      "scratch_fixmatch", "last_k"]
  assert protocols.labels()["scratch"] == "from scratch (same net, same budget)"
  with pytest.raises(ValueError, match="allowed: end-to-end, partial"):
    protocols.register("svm", kind="frozen features", label="SVM")
