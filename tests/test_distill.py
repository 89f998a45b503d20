"""Stage 2's self-distillation (`distill`, `scratch_distill`): the soft-target
loss, the student's targets, and a student that reads no label outside the
labelled subset."""
import dataclasses
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from ssl_jax.evaluation import classifier, distill, metrics, protocols
from ssl_jax.evaluation.protocols import PROTOCOLS
from ssl_jax.jobs import benchmark, finetune
from ssl_jax.objectives import base, supervised
from ssl_jax.train import encoder_weights
from tests.test_benchmark import tiny_benchmark_config
from tests.test_benchmark_protocols import _valid, contexts  # noqa: F401


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_soft_target_loss_on_one_hot_targets_is_the_labelled_loss():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(10, 3)), jnp.float32)
  labels = rng.integers(0, 3, size=10)
  one_hot = jnp.eye(3)[labels]
  class_w = jnp.asarray([0.5, 2.0, 1.0])
  for weights in (None, class_w):
    soft = supervised.soft_target_loss(logits, one_hot, False,
                                       class_weights=weights)
    hard, _ = supervised.classification_loss(logits, jnp.asarray(labels),
                                             False, class_weights=weights)
    assert float(soft) == pytest.approx(float(hard), rel=1e-6)


def test_soft_target_loss_divides_the_students_logits_by_the_temperature():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(6, 2)).astype(np.float32)
  targets = np.array([[0.3, 0.7]] * 6, np.float32)
  loss = supervised.soft_target_loss(jnp.asarray(logits), jnp.asarray(targets),
                                     False, temperature=2.0)
  expected = -(targets * _log_softmax(logits / 2.0)).sum(-1).mean()
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  # Its gradient vanishes where the student's tempered probabilities are the
  # targets: the minimum of a cross-entropy against soft labels.
  at_targets = jnp.asarray(np.log(targets) * 2.0)
  grad = jax.grad(lambda z: supervised.soft_target_loss(
      z, jnp.asarray(targets), False, temperature=2.0))(at_targets)
  np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-6)


def test_tempering_keeps_the_ranking_and_flattens_with_the_temperature():
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
  np.testing.assert_allclose(distill.tempered(probs, 1.0, False), probs,
                             atol=1e-6)
  warm = distill.tempered(probs, 4.0, False)
  np.testing.assert_allclose(warm.sum(-1), 1.0, atol=1e-6)
  assert 0.5 < warm[0, 0] < 0.9 and 0.5 < warm[1, 1] < 0.8
  assert warm[2, 0] == pytest.approx(0.5)
  sharp = distill.tempered(probs, 0.25, False)
  assert sharp[0, 0] > 0.99
  multi = distill.tempered(np.array([[0.9, 0.2]]), 2.0, True)
  np.testing.assert_allclose(multi, [[0.75, 1 / 3]], atol=1e-6)  # sqrt odds


def test_student_targets_keep_the_labels_of_the_labelled_rows(contexts):  # noqa: F811
  ctx, _ = contexts
  train_idx = ctx.subset(0.1, 0)
  teacher = np.tile(np.array([[0.6, 0.4]], np.float32),
                    (len(ctx.labels("train")), 1))
  targets = distill.student_targets(ctx, train_idx, teacher, 1.0)
  labels = ctx.labels("train").reshape(-1)
  np.testing.assert_array_equal(targets[train_idx].argmax(-1),
                                labels[train_idx])
  assert set(np.unique(targets[train_idx])) == {0.0, 1.0}
  rest = np.setdiff1d(np.arange(len(labels)), train_idx)
  np.testing.assert_allclose(targets[rest], teacher[rest], atol=1e-6)


def unmoved_by_unlabelled_labels(ctx, protocol: str, train_idx):
  """`protocol`'s predictions on the labelled subset `train_idx`, checked
  to be identical when the labels of the other train rows are shuffled
  (class counts kept, so the balanced loss weights stay): only the
  subset's labels reach stage 2."""
  images, labels = ctx.data["train"]
  rest = np.setdiff1d(np.arange(len(labels)), train_idx)
  shuffled = labels.copy()
  shuffled[rest] = labels[np.random.default_rng(0).permutation(rest)]
  assert (shuffled[rest] != labels[rest]).any()
  other = dataclasses.replace(ctx, data=dict(ctx.data, train=(images, shuffled)))
  runs = [PROTOCOLS.get(protocol)(c, train_idx, 0) for c in (ctx, other)]
  for split in ("val", "test"):
    np.testing.assert_array_equal(runs[0].probs[split], runs[1].probs[split])
  _valid(runs[0], ctx)
  assert runs[0].info["rows_trained"] == len(labels) > len(train_idx)
  return runs[0]


def test_the_student_reads_no_label_outside_the_labelled_subset(contexts):  # noqa: F811
  """Neither the teacher nor the student reads a label outside the subset."""
  ctx, _ = contexts
  train_idx = ctx.subset(0.1, 0)
  preds = unmoved_by_unlabelled_labels(ctx, "distill", train_idx)
  assert preds.info["temperature"] == 1.0
  assert preds.info["teacher_selected_step"] in (2, 4)
  # The teacher is the `finetune` cell of the same subset and seed.
  finetuned = PROTOCOLS.get("finetune")(ctx, train_idx, 0)
  assert finetuned.info["selected_step"] == preds.info["teacher_selected_step"]
  assert (finetuned.info["selected_val_auroc"]
          == preds.info["teacher_selected_val_auroc"])
  for split in ("val", "test"):
    assert preds.info[f"teacher_{split}_auroc"] == metrics.auroc(
        ctx.labels(split), finetuned.probs[split], ctx.task)


def test_a_fixmatch_teacher_is_the_fixmatch_cell(contexts):  # noqa: F811
  """`finetune.distill_teacher='fixmatch'`: the first teacher is exactly the
  `fixmatch` cell of the same subset and seed, also when the students
  train with mixup (FixMatch trains without it)."""
  ctx, _ = contexts
  config = ctx.config.copy_and_resolve_references()
  config.finetune.distill_teacher = "fixmatch"
  config.finetune.mixup_alpha = config.objective.mixup_alpha = 0.4
  train_idx = ctx.subset(0.1, 0)
  preds = PROTOCOLS.get("distill")(dataclasses.replace(ctx, config=config),
                                   train_idx, 0)
  _valid(preds, ctx)
  fixmatched = PROTOCOLS.get("fixmatch")(ctx, train_idx, 0)
  assert fixmatched.info["selected_step"] == preds.info["teacher_selected_step"]
  assert preds.info["teacher_test_auroc"] == metrics.auroc(
      ctx.labels("test"), fixmatched.probs["test"], ctx.task)
  config.finetune.distill_teacher = "mean_teacher"
  with pytest.raises(ValueError, match=r"distill_teacher must be one of "
                     r"\['finetune', 'fixmatch'\], got 'mean_teacher'"):
    PROTOCOLS.get("distill").check(dataclasses.replace(ctx, config=config))


@pytest.mark.parametrize("control,protocol", [
    ("scratch_distill", "distill"), ("scratch_fixmatch", "fixmatch")])
def test_a_from_scratch_control_needs_no_encoder_and_the_benchmark_refuses_it(
    control, protocol):
  assert not PROTOCOLS.get(control).needs_encoder
  assert PROTOCOLS.get(protocol).needs_encoder
  config = tiny_benchmark_config(**{"finetune.protocols": ("finetune", control)})
  with pytest.raises(ValueError, match=rf"protocols has '{control}': in the "
                     r"benchmark the from-scratch baselines are method 'none' "
                     r"with the protocols that read an encoder \(finetune, "
                     r"distill, fixmatch\)"):
    benchmark.validate(config)


def test_a_non_positive_temperature_or_no_round_is_refused(contexts):  # noqa: F811
  ctx, _ = contexts
  bad = ctx.config.copy_and_resolve_references()
  bad.finetune.distill_temperature = 0.0
  with pytest.raises(ValueError, match="distill_temperature must be > 0 and "
                     "distill_rounds >= 1, got 0.0 and 1"):
    PROTOCOLS.get("distill")(dataclasses.replace(ctx, config=bad),
                             ctx.subset(0.1, 0), 0)


@pytest.mark.parametrize("make_loss", [supervised.make_supervised_loss,
                                       supervised.make_distillation_loss])
def test_class_weights_on_a_multi_label_objective_are_refused(make_loss):
  hp = ml_collections.ConfigDict(dict(multi_label=True, class_weights=(1.0, 2.0),
                                      temperature=1.0))
  with pytest.raises(ValueError, match="class_weights needs a single-label"):
    make_loss(hp, types.SimpleNamespace(policy=None))
  hp.class_weights = None
  assert callable(make_loss(hp, types.SimpleNamespace(policy=None)))


def test_each_round_teaches_the_next_student(contexts, monkeypatch):  # noqa: F811
  """With distill_rounds=2 the second student's targets are the first
  student's probabilities on the train images, not the teacher's."""
  ctx, _ = contexts
  two = ctx.config.copy_and_resolve_references()
  two.finetune.distill_rounds = 2
  taught = []
  monkeypatch.setattr(distill, "student_targets", lambda c, idx, probs, t: (
      taught.append(probs) or np.asarray(probs, np.float32).copy()))
  preds = PROTOCOLS.get("distill")(dataclasses.replace(ctx, config=two),
                                   ctx.subset(0.1, 0), 0)
  _valid(preds, ctx)
  assert preds.info["rounds"] == 2 and len(taught) == 2
  assert taught[0].shape == taught[1].shape == (len(ctx.labels("train")), 2)
  assert not np.allclose(taught[0], taught[1])


def test_an_ensemble_teacher_averages_runs_with_their_own_seeds(
    contexts, monkeypatch):  # noqa: F811
  """distill_teachers=2: the students learn from the average of two
  `finetune` runs on the same subset, the cell's seed and that seed +
  TEACHER_SEED_STRIDE; the cell records the average's AUROC and each
  member's. Fewer than one teacher is refused before anything trains."""
  ctx, _ = contexts
  two = ctx.config.copy_and_resolve_references()
  two.finetune.distill_teachers = 2
  train_idx = ctx.subset(0.1, 0)
  taught = []
  real_targets = distill.student_targets
  monkeypatch.setattr(distill, "student_targets", lambda c, idx, probs, t: (
      taught.append(probs) or real_targets(c, idx, probs, t)))
  preds = PROTOCOLS.get("distill")(dataclasses.replace(ctx, config=two),
                                   train_idx, 0)
  _valid(preds, ctx)
  members = [PROTOCOLS.get("finetune")(ctx, train_idx, seed)
             for seed in (0, distill.TEACHER_SEED_STRIDE)]
  assert preds.info["teachers"] == 2 and len(taught) == 1
  assert not np.array_equal(members[0].probs["test"], members[1].probs["test"])
  for split in ("val", "test"):
    member_aurocs = [metrics.auroc(ctx.labels(split), m.probs[split], ctx.task)
                     for m in members]
    assert preds.info[f"teacher_member_{split}_aurocs"] == member_aurocs
    mean = (members[0].probs[split] + members[1].probs[split]) / 2
    assert preds.info[f"teacher_{split}_auroc"] == pytest.approx(
        metrics.auroc(ctx.labels(split), mean, ctx.task), abs=1e-9)
  assert taught[0].shape == (len(ctx.labels("train")), 2)
  assert (preds.info["teacher_selected_step"]
          == members[0].info["selected_step"])
  two.finetune.distill_teachers = 0
  with pytest.raises(ValueError, match=r"distill_teachers=0: expected >= 1"):
    PROTOCOLS.get("distill").check(dataclasses.replace(ctx, config=two))


def _distill_with_a_further_encoder(ctx, monkeypatch, rounds, **finetune):
  """A `distill` cell (10 %, seed 0) from an own encoder with one further
  teacher encoder, `rounds` rounds and the `finetune` fields, watched:
  returns the two encoders, the cell's predictions, the probabilities
  each student was taught from, and each training run's (name, start
  weights, predictions, teacher networks it matched)."""
  own, other = (encoder_weights.of_module(
      base.build_encoder(ctx.config, ctx.info, nnx.Rngs(seed)))
      for seed in (3, 4))
  taught, runs = [], []
  real_targets = distill.student_targets
  real_run = classifier.ClassifierTrainer.run
  monkeypatch.setattr(distill, "student_targets", lambda c, idx, probs, t: (
      taught.append(probs) or real_targets(c, idx, probs, t)))

  def spy_run(self, c, idx, seed, *, weights, name, **kwargs):
    preds = real_run(self, c, idx, seed, weights=weights, name=name, **kwargs)
    runs.append((name, weights, preds, kwargs.get("teachers", ())))
    return preds
  monkeypatch.setattr(classifier.ClassifierTrainer, "run", spy_run)
  config = ctx.config.copy_and_resolve_references()
  config.finetune.distill_rounds = rounds
  config.finetune.update(finetune)
  multi = dataclasses.replace(ctx, config=config, encoder_weights=own,
                              teacher_encoders=(other,))
  preds = PROTOCOLS.get("distill")(multi, ctx.subset(0.1, 0), 0)
  _valid(preds, ctx)
  return own, other, preds, taught, runs


def test_teachers_from_further_encoders_join_the_average(contexts, monkeypatch):  # noqa: F811
  """`teacher_encoders` (finetune.distill_teacher_pretrained): each further
  encoder trains the teacher on the same subset with the cell's seed, the
  run its own `finetune` cell would be; the students learn from the
  average with the own teacher and start from the own encoder. The
  from-scratch control refuses them."""
  ctx, _ = contexts
  own, other, preds, taught, runs = _distill_with_a_further_encoder(
      ctx, monkeypatch, rounds=1)
  train_idx = ctx.subset(0.1, 0)
  cell = f"distill_n{len(train_idx)}_s0"
  assert [(n, w) for n, w, *_ in runs] == [
      (f"{cell}_teacher", own), (f"{cell}_teacher_encoder1", other),
      (f"{cell}_student", own)]
  members = [protocols._fine_tuned(  # the `finetune` cell, scored on train too
      dataclasses.replace(ctx, encoder_weights=w), train_idx, 0, weights=w,
      name="member", score=("train", "val", "test")) for w in (own, other)]
  assert preds.info["teachers"] == 2 and preds.info["teacher_encoders"] == 2
  assert not np.array_equal(members[0].probs["test"], members[1].probs["test"])
  for split in ("val", "test"):
    assert preds.info[f"teacher_member_{split}_aurocs"] == [
        metrics.auroc(ctx.labels(split), m.probs[split], ctx.task)
        for m in members]
  np.testing.assert_allclose(
      taught[0], (members[0].probs["train"] + members[1].probs["train"]) / 2,
      atol=1e-6)
  with pytest.raises(ValueError, match="'scratch_distill' is the from-scratch "
                     "control: its teachers train from scratch too"):
    PROTOCOLS.get("scratch_distill").check(
        dataclasses.replace(ctx, teacher_encoders=(other,)))


def test_with_two_rounds_each_encoder_teaches_its_own_student(
    contexts, monkeypatch):  # noqa: F811
  """distill_rounds=2 with a further encoder: each encoder's teacher
  teaches a student from that encoder (the run its own one-encoder
  `distill` cell's student would be), and the final student, from the own
  encoder, learns from the two students averaged; the cell records that
  average's AUROC and each student's."""
  ctx, _ = contexts
  own, other, preds, taught, runs = _distill_with_a_further_encoder(
      ctx, monkeypatch, rounds=2)
  cell = f"distill_n{len(ctx.subset(0.1, 0))}_s0"
  assert [(n, w) for n, w, *_ in runs] == [
      (f"{cell}_teacher", own), (f"{cell}_teacher_encoder1", other),
      (f"{cell}_student", own), (f"{cell}_student_encoder1", other),
      (f"{cell}_student2", own)]
  teachers, students = [r[2] for r in runs[:2]], [r[2] for r in runs[2:4]]
  for i in range(2):  # each student learns from its own encoder's teacher
    np.testing.assert_array_equal(taught[i], teachers[i].probs["train"])
  np.testing.assert_allclose(
      taught[2], (students[0].probs["train"] + students[1].probs["train"]) / 2,
      atol=1e-6)
  np.testing.assert_array_equal(preds.probs["test"], runs[4][2].probs["test"])
  for split in ("val", "test"):
    assert preds.info[f"final_teacher_member_{split}_aurocs"] == [
        metrics.auroc(ctx.labels(split), s.probs[split], ctx.task)
        for s in students]
    assert preds.info[f"final_teacher_{split}_auroc"] == pytest.approx(
        metrics.auroc(ctx.labels(split), (students[0].probs[split]
                                          + students[1].probs[split]) / 2,
                      ctx.task), abs=1e-9)


def test_function_matching_students_run_their_teachers_networks(
    contexts, monkeypatch):  # noqa: F811
  """distill_targets='function_matching': every student's step holds the
  networks its teacher averages, exactly those its teacher runs selected
  (each chain's student its own teacher's, the final student both chain
  students'), and distill_epochs sets the students' length alone."""
  ctx, _ = contexts
  ft, n_train = ctx.config.finetune, len(ctx.labels("train"))
  epochs = 6 * ft.batch_size / n_train  # ~six steps (the teachers take four)
  _, _, preds, _, runs = _distill_with_a_further_encoder(
      ctx, monkeypatch, rounds=2, distill_targets="function_matching",
      distill_epochs=epochs, min_steps=1)
  assert [len(r[3]) for r in runs] == [0, 0, 1, 1, 2]
  for student, teachers in ((runs[2], runs[0:1]), (runs[3], runs[1:2]),
                            (runs[4], runs[2:4])):
    assert len(student[3]) == len(teachers)
    for matched, teacher in zip(student[3], teachers):
      assert matched is teacher[2].networks[0]
  short = ft.copy_and_resolve_references()
  short.min_steps = 1
  steps = classifier.run_length(short, n_train, ctx.mesh, epochs)
  assert steps > ft.steps
  assert [r[2].info["steps"] for r in runs] == [ft.steps] * 2 + [steps] * 3
  assert preds.info["distill_targets"] == "function_matching"
  assert preds.info["student_epochs"] == epochs
  assert not preds.networks  # a cell's result carries no weights


class _Linear(nnx.Module):
  def __init__(self, rngs):
    self.linear = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x, *, train):
    del train
    return self.linear(x.reshape(x.shape[0], -1))


def test_function_matching_targets_are_the_teachers_on_the_students_view():
  """Unlabelled rows' targets are the teachers' (tempered, averaged)
  probabilities on the very view the student sees, mixup included;
  labelled rows keep their labels, and a mixed view's label share."""
  student, *teachers = (_Linear(nnx.Rngs(seed)) for seed in range(3))
  hp = ml_collections.ConfigDict(dict(multi_label=False, temperature=2.0,
                                      mixup_alpha=0.0, label_smoothing=0.0,
                                      teachers=2))
  slots = supervised.init_teachers_extra(student, hp, None)
  extra = {supervised.TEACHERS: tuple(
      supervised.teacher_slot(*nnx.split(t, nnx.Param, ...)[1:])
      for t in teachers)}
  assert jax.tree.structure(slots) == jax.tree.structure(extra)
  x = jax.random.normal(jax.random.key(0), (6, 2, 2))
  labels = jnp.eye(2)[jnp.array([0, 1, 1, 0, 1, 0])]
  batch = {"target": labels, "labelled": jnp.array([1, 1, 0, 0, 0, 0])}

  def on(view):  # the two teachers, tempered by 2, averaged
    return np.mean([jax.nn.softmax(t(view, train=False) / 2.0)
                    for t in teachers], axis=0)

  view, targets = supervised.matched_targets(student, batch, x,
                                             jax.random.key(1), hp, extra)
  np.testing.assert_array_equal(view, x)
  np.testing.assert_allclose(targets[:2], labels[:2])
  np.testing.assert_allclose(targets[2:], on(x)[2:], atol=1e-6)
  hp.mixup_alpha = 0.4
  view, targets = supervised.matched_targets(student, batch, x,
                                             jax.random.key(1), hp, extra)
  assert not np.allclose(view, x)  # mixed
  np.testing.assert_allclose(targets.sum(-1), 1.0, atol=1e-6)
  unlabelled = dict(batch, labelled=jnp.zeros(6))
  view, targets = supervised.matched_targets(student, unlabelled, x,
                                             jax.random.key(1), hp, extra)
  np.testing.assert_allclose(targets, on(view), atol=1e-6)
  every = dict(batch, labelled=jnp.ones(6))  # labels alone, mixed
  view, targets = supervised.matched_targets(student, every, x,
                                             jax.random.key(1), hp, extra)
  mixed_x, mixed_labels = supervised.mixed(
      jax.random.fold_in(jax.random.key(1), 1), x, labels, 0.4)
  np.testing.assert_allclose(view, mixed_x, atol=1e-6)
  np.testing.assert_allclose(targets, mixed_labels, atol=1e-6)


@pytest.mark.parametrize("fields,message", [
    (dict(distill_targets="online"), "distill_targets='online'; allowed: "
     "fixed, function_matching"),
    (dict(distill_targets="function_matching", distill_teachers=2,
          distill_teacher_pretrained=("W2",)),
     "averages its teacher networks equally: with distill_teacher_pretrained, "
     "keep distill_teachers=1"),
    (dict(distill_epochs=-1), r"distill_epochs=-1.0: expected >= 0"),
    (dict(distill_student_init="scratch"), "distill_student_init='scratch'; "
     "allowed: encoder, teacher"),
    (dict(distill_student_init="teacher", distill_teachers=2),
     "starts the student from its one teacher network")])
def test_distill_target_modes_and_lengths_are_checked_first(
    contexts, fields, message):  # noqa: F811
  ctx, _ = contexts
  config = ctx.config.copy_and_resolve_references()
  config.finetune.update(fields)
  with pytest.raises(ValueError, match=message):
    PROTOCOLS.get("distill").check(dataclasses.replace(ctx, config=config))


def test_further_teacher_encoders_must_be_built_as_the_student(monkeypatch):
  """The finetune job refuses a teacher pretraining of another model or
  image size, and further teachers without an own pretrained encoder; the
  benchmark, which pretrains its own encoders, refuses the field."""
  def pretraining(width, size):
    c = ml_collections.ConfigDict(dict(model=dict(name="resnet18",
                                                  width_multiplier=width),
                                       data=dict(size=size)))
    return c, {"w": np.zeros(1, np.float32)}
  made = {"own": pretraining(0.25, 28), "same": pretraining(0.25, 28),
          "wider": pretraining(0.5, 28), "larger": pretraining(0.25, 64)}
  monkeypatch.setattr(finetune, "read_pretrained", lambda path, _k=0: made[path])
  ft = ml_collections.ConfigDict(dict(pretrained="own",
                                      distill_teacher_pretrained=("same",)))
  assert len(finetune.read_teacher_encoders(ft, made["own"][0])) == 1
  for path, field in (("wider", "model"), ("larger", "data.size")):
    ft.distill_teacher_pretrained = ("same", path)
    with pytest.raises(ValueError, match=rf"distill_teacher_pretrained has "
                       rf"{path}, whose {field} is .*; the student's encoder "
                       r"\(own\) has"):
      finetune.read_teacher_encoders(ft, made["own"][0])
  with pytest.raises(ValueError, match="needs config.finetune.pretrained"):
    finetune.read_teacher_encoders(ft, None)
  config = tiny_benchmark_config(**{
      "finetune.distill_teacher_pretrained": ("same",)})
  with pytest.raises(ValueError, match="distill_teacher_pretrained is the "
                     "finetune job's"):
    benchmark.validate(config)


def test_a_student_from_its_teacher_starts_from_the_teachers_network(
    contexts, monkeypatch):  # noqa: F811
  """distill_student_init='teacher': each student run starts from its
  teacher's selected network (the second round's from the first
  student's); the teacher itself starts from the encoder."""
  ctx, _ = contexts
  config = ctx.config.copy_and_resolve_references()
  config.finetune.distill_student_init = "teacher"
  config.finetune.distill_rounds = 2
  runs = []
  real_run = classifier.ClassifierTrainer.run

  def spy_run(self, c, idx, seed, **kwargs):
    preds = real_run(self, c, idx, seed, **kwargs)
    runs.append((kwargs.get("start"), preds))
    return preds
  monkeypatch.setattr(classifier.ClassifierTrainer, "run", spy_run)
  preds = PROTOCOLS.get("distill")(dataclasses.replace(ctx, config=config),
                                   ctx.subset(0.1, 0), 0)
  _valid(preds, ctx)
  assert len(runs) == 3 and runs[0][0] is None
  assert runs[1][0] is runs[0][1].networks[0]
  assert runs[2][0] is runs[1][1].networks[0]
  assert preds.info["student_init"] == "teacher"


def test_a_started_network_is_placed_whole_on_the_states_shardings(contexts):  # noqa: F811
  """`with_network` puts every param and statistic of another run's
  network into a state, on the state's own shardings, and refuses a
  network of another model by naming the leaves that differ."""
  ctx, _ = contexts
  trainer = classifier.trainer_for(ctx, len(ctx.labels("train")))
  state, other = (trainer.init_state(seed, None) for seed in (0, 1))
  network = jax.device_get((other.params, other.rest))
  placed = classifier.with_network(state, network)
  for got, want, live in zip((placed.params, placed.rest), network,
                             (state.params, state.rest)):
    got, want, live = (jax.tree.leaves(nnx.to_pure_dict(t))
                       for t in (got, want, live))
    assert len(got) == len(want) > 0
    for leaf, source, before in zip(got, want, live):
      np.testing.assert_array_equal(np.asarray(leaf), np.asarray(source))
      assert leaf.sharding == before.sharding
  assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
      *(jax.tree.leaves(nnx.to_pure_dict(t.params)) for t in (state, placed))))
  params = nnx.to_pure_dict(network[0])
  params["head"]["extra"] = {"kernel": np.zeros(2)}
  with pytest.raises(ValueError, match=r"leaves in one only: "
                     r"\['head/extra/kernel'\]"):
    classifier.with_network(state, (nnx.State(params), network[1]))
