"""Positive pairs: partner tables, seeded draws, the pipeline's pair_image,
the contrastive views built from it, and one real pretraining run with them."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipelines import pairs

# 12 images of 4 patients. Patient p3 has one image, study s3 and s5 one
# each; series slices are unsorted in row order and partly far apart.
META = {
    "patient_id": np.array(["p0"] * 4 + ["p1"] * 3 + ["p2"] * 4 + ["p3"]),
    "study_id": np.array(["s0", "s0", "s1", "s1", "s2", "s2", "s3",
                          "s4", "s4", "s4", "s4", "s5"]),
    "series_id": np.array(["A", "A", "A", "B", "C", "C", "C",
                           "D", "D", "D", "D", "E"]),
    "slice_index": np.array([0, 1, 5, 0, 2, 3, 4, 10, 8, 9, 20, 0]),
    "age": np.array([60, 60, 61, 61, 63, 63, 63, 70, 70, 71, 71, 64.0]),
    "sex": np.array(["F"] * 4 + ["F"] * 3 + ["M"] * 4 + ["F"]),
}
N = 12


def _brute_force(mode: str, meta, *, max_age_gap=5.0, series_max_gap=1):
  """Each row's partner set, straight from the definitions (O(N^2))."""
  def ok(i, j):
    if mode in ("patient", "study"):
      key = f"{mode}_id"
      return i != j and meta[key][i] == meta[key][j]
    if mode == "series":
      position = (meta["slice_index"] if "slice_index" in meta else
                  [sum(meta["series_id"][k] == meta["series_id"][i]
                       for k in range(i)) for i in range(N)])
      return (i != j and meta["series_id"][i] == meta["series_id"][j]
              and abs(position[i] - position[j]) <= series_max_gap)
    assert mode == "metadata"
    return (meta["patient_id"][i] != meta["patient_id"][j]
            and meta["sex"][i] == meta["sex"][j]
            and abs(meta["age"][i] - meta["age"][j]) <= max_age_gap)
  return [sorted(j for j in range(N) if ok(i, j)) for i in range(N)]


@pytest.mark.parametrize("mode,kw,fell_back", [
    ("patient", {}, 1),                 # p3
    ("study", {}, 2),                   # s3, s5
    ("series", {}, 4),                  # slice 5 of A, B, slice 20 of D, E
    ("series", {"series_max_gap": 4}, 3),  # A's slice 5 reaches slice 1
    ("metadata", {}, 4),                # p2, the only male
    ("metadata", {"max_age_gap": 2.0}, 6),  # and p0's two 60-year-olds
])
def test_candidates_match_the_definitions(mode, kw, fell_back):
  table = pairs.build_partners(mode, META, **kw)
  expected = _brute_force(mode, META, **kw)
  for row in range(N):
    np.testing.assert_array_equal(table.candidates(row), expected[row])
  assert table.fell_back == fell_back == sum(not e for e in expected)
  assert table.stats()["fell_back_to_self"] == fell_back
  assert table.stats()["mode"] == mode


def test_missing_ids_pair_with_themselves_and_are_counted():
  patients = META["patient_id"].copy()
  patients[[0, 1]] = ""  # p0 keeps rows 2, 3
  table = pairs.build_partners("patient", dict(META, patient_id=patients))
  for row, expected in ((0, []), (1, []), (2, [3]), (4, [5, 6])):
    np.testing.assert_array_equal(table.candidates(row), expected)
  assert table.fell_back == 3  # rows 0, 1 and p3
  ages = {"sex": META["sex"], "age": META["age"]}
  table = pairs.build_partners("metadata", dict(ages, patient_id=patients))
  np.testing.assert_array_equal(table.candidates(0), [1, 2, 3, 4, 5, 6, 11])


def test_series_without_slice_index_uses_row_order():
  meta = {k: v for k, v in META.items() if k != "slice_index"}
  table = pairs.build_partners("series", meta)
  expected = _brute_force("series", meta)
  assert expected[8] == [7, 9]  # D: rows 7, 8, 9, 10 are slices 0..3
  for row in range(N):
    np.testing.assert_array_equal(table.candidates(row), expected[row])


@pytest.mark.parametrize("mode", ["patient", "study", "series", "metadata"])
def test_draws_stay_in_the_candidates_and_reach_all_of_them(mode):
  table = pairs.build_partners(mode, META)
  expected = _brute_force(mode, META)
  rng = np.random.default_rng(0)
  rows = np.tile(np.arange(N), 300)
  drawn = pairs.sample_partners(table, rows, rng)
  for row in range(N):
    got = set(drawn[rows == row].tolist())
    assert got == (set(expected[row]) or {row}), row  # never self if others
  if mode == "patient":
    assert (META["patient_id"][drawn] == META["patient_id"][rows]).all()
  if mode == "metadata":
    assert (META["sex"][drawn] == META["sex"][rows]).all()
    assert (np.abs(META["age"][drawn] - META["age"][rows]) <= 5.0).all()


def test_draws_are_uniform_over_candidates():
  table = pairs.build_partners("patient", META)
  drawn = pairs.sample_partners(table, np.zeros(30000, np.int64),
                                np.random.default_rng(1))
  counts = np.bincount(drawn, minlength=N)[[1, 2, 3]]
  np.testing.assert_allclose(counts / 30000, 1 / 3, atol=0.015)


def test_crowded_windows_use_the_exact_draw():
  # 200 images of one patient and one image of another, same sex and age:
  # a window of 201 with 1 candidate exhausts the redraws for most rows.
  meta = {"patient_id": np.r_[np.zeros(200), 1].astype(int),
          "sex": np.zeros(201, int), "age": np.full(201, 50.0)}
  table = pairs.build_partners("metadata", meta)
  drawn = pairs.sample_partners(table, np.arange(200), np.random.default_rng(0))
  assert (drawn == 200).all()
  assert table.fell_back == 0


def test_same_seed_same_partners():
  table = pairs.build_partners("study", META)
  rows = np.tile(np.arange(N), 20)
  a = pairs.sample_partners(table, rows, np.random.default_rng(7))
  b = pairs.sample_partners(table, rows, np.random.default_rng(7))
  c = pairs.sample_partners(table, rows, np.random.default_rng(8))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_views_mode_pairs_each_row_with_itself_without_fallbacks():
  table = pairs.build_partners("views", {}, num_rows=5)
  rows = np.array([4, 0, 2])
  np.testing.assert_array_equal(
      pairs.sample_partners(table, rows, np.random.default_rng(0)), rows)
  assert table.fell_back == 0


def test_errors_name_the_column_mode_and_row():
  with pytest.raises(ValueError, match="'series'.*'series_id'"):
    pairs.build_partners("series", {"patient_id": META["patient_id"]})
  with pytest.raises(ValueError, match="'metadata'.*'age'"):
    pairs.build_partners("metadata", {"sex": META["sex"]})
  age = META["age"].copy()
  age[3] = np.nan
  with pytest.raises(ValueError, match="'age' is nan at row 3"):
    pairs.build_partners("metadata", dict(META, age=age))
  with pytest.raises(ValueError, match="'sex' is missing at row 2"):
    pairs.build_partners("metadata", dict(META, sex=np.where(
        np.arange(N) == 2, "", META["sex"])))
  with pytest.raises(ValueError, match="'patient_id'.*shape \\(13,\\)"):
    pairs.build_partners("patient", META, num_rows=13)
  with pytest.raises(KeyError, match="allowed: metadata, patient, series"):
    pairs.build_partners("cousin", META)
  table = pairs.build_partners("patient", META)
  with pytest.raises(ValueError, match="rows must be in \\[0, 12\\)"):
    pairs.sample_partners(table, [12], np.random.default_rng(0))


# ---------------------------------------------------------------- pipeline --

def _pipeline(table, images, **kw):
  from data_pipelines import input_pipeline
  args = dict(batch_size=5, shuffle=True, repeat=True, seed=3,
              drop_remainder=True, process_index=0, process_count=1,
              extra={"id": np.arange(len(images))}, partners=table)
  return input_pipeline.make_iterator(images, np.zeros(len(images), int),
                                      **dict(args, **kw))


def test_pipeline_pair_image_is_the_drawn_partners_image():
  from data_pipelines import input_pipeline
  images = np.arange(N, dtype=np.uint8)[:, None, None, None] * np.ones(
      (1, 2, 2, 1), np.uint8)
  table = pairs.build_partners("patient", META)
  expected = _brute_force("patient", META)
  for position, batch in enumerate(itertools.islice(_pipeline(table, images),
                                                    6)):
    rng = input_pipeline.partner_rng(3, 0, position)
    rows = pairs.sample_partners(table, batch["id"], rng)
    np.testing.assert_array_equal(batch["pair_image"], images[rows])
    for row, partner in zip(batch["id"], batch["pair_image"][:, 0, 0, 0]):
      assert partner in (expected[row] or [row])
  with pytest.raises(ValueError, match="has 12 rows, images have 11"):
    _pipeline(table, images[:11])


def test_pipeline_passes_volumes_with_their_partners():
  volumes = np.arange(N, dtype=np.uint8)[:, None, None, None, None] * np.ones(
      (1, 3, 2, 2, 1), np.uint8)
  batch = next(_pipeline(pairs.build_partners("series", META), volumes))
  assert batch["image"].shape == batch["pair_image"].shape == (5, 3, 2, 2, 1)


# ------------------------------------------------------------------- views --

def test_pair_views_takes_view_two_from_the_partner():
  from ssl_jax import augment
  from ssl_jax.objectives import contrastive as C
  images = jax.random.randint(jax.random.PRNGKey(0), (3, 8, 8, 1), 0, 256
                              ).astype(jnp.uint8)
  partners = 255 - images
  identity = augment.get("none")
  v1, v2 = jax.jit(C.pair_views, static_argnums=0)(
      identity, jax.random.PRNGKey(1),
      {"image": images, "pair_image": partners})
  np.testing.assert_allclose(v1, images / 255.0, atol=1e-6)
  np.testing.assert_allclose(v2, partners / 255.0, atol=1e-6)
  # No partner: exactly augment.two_views, key split and all.
  policy = augment.get("none", crop_min_area=0.5, hflip_prob=0.5,
                       brightness=0.2, jitter_prob=1.0)  # every op keyed
  got = jax.jit(C.pair_views, static_argnums=0)(
      policy, jax.random.PRNGKey(2), {"image": images})
  want = jax.jit(augment.two_views, static_argnums=0)(
      policy, jax.random.PRNGKey(2), images)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
  # Multi-crop: global crop 2 from the partner, local crops from the anchor.
  global_views, local_views = jax.jit(lambda rng: C.multi_crop(
      identity, rng, images, global_area=(1.0, 1.0), local_area=(1.0, 1.0),
      num_local=2, local_size=8, partners=partners))(jax.random.PRNGKey(3))
  np.testing.assert_allclose(global_views[0], images / 255.0, atol=1e-6)
  np.testing.assert_allclose(global_views[1], partners / 255.0, atol=1e-6)
  for view in local_views:
    np.testing.assert_allclose(view, images / 255.0, atol=1e-6)


def test_every_pair_objective_reads_the_partner():
  """Traced only (no compile): each `uses_pairs` loss consumes pair_image."""
  from ssl_jax import objectives
  from ssl_jax.objectives import base
  from tests.tiny import bind, tiny_method_config
  info = type("Info", (), dict(num_channels=1, image_size=16, num_classes=2,
                               multi_label=False))
  image = jax.ShapeDtypeStruct((4, 16, 16, 1), jnp.uint8)
  users = [n for n in objectives.names() if objectives.get(n).uses_pairs]
  # Every image-image contrastive method takes its positive from the pair
  # (multimodal ones pair the image with its own metadata row instead).
  def pairs_images(name):
    objective = objectives.get(name)
    hp = base.resolve_hparams(objective, {"name": name})
    return objective.category == "contrastive" and not objective.vocabulary(hp)
  assert {n for n in objectives.names() if pairs_images(n)} <= set(users)
  for name in users:
    config = tiny_method_config(name)
    config.train.batch_size = 4
    objective = objectives.get(name)
    bound = bind(config, info, objective)
    def build(bound=bound):
      return bound.build_model(nnx.Rngs(0))

    graphdef, state = nnx.split(nnx.eval_shape(build))
    extra = jax.eval_shape(lambda: bound.init_extra(build()))  # noqa: B023
    loss_fn = bound.make_loss()
    # Columns it declares (a longitudinal task's days and pair_days).
    columns = {k: jax.ShapeDtypeStruct((4,), jnp.float32)
               for k in objective.reads(bound.hp)}

    def loss(state, extra, columns, image, pair_image):
      return loss_fn(nnx.merge(graphdef, state),  # noqa: B023
                     dict(columns, image=image, pair_image=pair_image),
                     jax.random.PRNGKey(0), extra)[0]

    jaxpr = jax.make_jaxpr(loss)(state, extra, columns, image, image).jaxpr
    pair = jaxpr.invars[-1]
    assert any(pair in eqn.invars for eqn in jaxpr.eqns), name


# -------------------------------------------------------------- the job --

def test_validate_needs_an_objective_that_reads_pairs():
  from ssl_jax.jobs import common
  from tests.tiny import tiny_config
  config = tiny_config(**{"pairs.mode": "patient"})
  common.check_pairs(config)  # simclr reads pairs
  with pytest.raises(ValueError, match="config.pairs.mode='cousin' is unknown"):
    common.check_pairs(tiny_config(**{"pairs.mode": "cousin"}))
  config.objective = dict(name="rotation")
  with pytest.raises(ValueError, match="'rotation' does not.*simclr"):
    common.check_pairs(config)
  config.objective = dict(name="combined", parts=("rotation", "simclr"))
  common.check_pairs(config)


def test_pretrain_step_on_patient_pairs(monkeypatch):
  """The job's wiring (metadata -> table -> pipeline), one real jitted simclr
  step on its batch, and the same step with the image as its own partner
  giving exactly the views-mode loss (train_and_evaluate would cost a full
  compile)."""
  import data_pipelines
  from data_pipelines import input_pipeline
  from ssl_jax import parallel
  from ssl_jax.jobs import pretrain
  from tests.tiny import FAST_COMPILE, tiny_method_config

  asked = []

  def metadata(name, split, **kw):
    asked.append((name, split, sorted(kw)))
    return {"patient_id": META["patient_id"]}

  monkeypatch.setattr(data_pipelines, "metadata", metadata, raising=False)
  config = tiny_method_config("simclr")
  config.pairs.mode = "patient"
  config.train.batch_size = 4
  partners = pretrain.make_partners(config, N)
  assert asked == [("breastmnist", "train", ["data_dir", "options", "size"])]
  assert pretrain.pairing_stats(partners) == {
      "mode": "patient", "rows": N, "fell_back_to_self": 1,
      "mean_candidates": 30 / 12}
  assert pretrain.pairing_stats(None) == {"mode": "views"}
  with pytest.raises(ValueError, match="'breastmnist' train split.*'study_id'"):
    config.pairs.mode = "study"
    pretrain.make_partners(config, N)

  images = np.random.default_rng(0).integers(0, 256, (N, 16, 16, 1), np.uint8)
  batch = next(input_pipeline.make_iterator(
      images, np.arange(N) % 2, batch_size=4, shuffle=True, repeat=True,
      seed=0, drop_remainder=True, partners=partners,
      extra=pairs.batch_columns(META)))  # metadata rides along (the job does)
  assert set(META) <= set(batch) and batch["patient_id"].dtype == np.int32
  mesh = parallel.make_mesh(1)
  assert not np.array_equal(batch["pair_image"], batch["image"])
  views = {k: v for k, v in batch.items() if k != "pair_image"}
  itself = dict(views, pair_image=batch["image"])
  batch, views, itself = (parallel.shard_batch(b, mesh)
                          for b in (batch, views, itself))
  info = data_pipelines.info("breastmnist", 28)  # facts only; any size runs
  built = pretrain.build_parts(config, info, mesh)
  init = built.init.lower().compile(FAST_COMPILE)
  state = init()
  paired_step = built.step_fn.lower(state, batch).compile(FAST_COMPILE)
  views_step = built.step_fn.lower(state, views).compile(FAST_COMPILE)
  loss = lambda step, b: float(step(init(), b)[1]["loss"])  # noqa: E731
  paired, views_loss = loss(paired_step, batch), loss(views_step, views)
  assert np.isfinite(paired) and paired != views_loss
  assert loss(paired_step, itself) == views_loss


def test_batch_columns_code_ids_and_keep_numbers():
  cols = pairs.batch_columns(dict(META, path=np.array(["a.png"] * N)))
  assert "path" not in cols
  codes = cols["patient_id"]
  assert codes.dtype == np.int32 and codes.shape == (N,)
  same = META["patient_id"][:, None] == META["patient_id"][None, :]
  np.testing.assert_array_equal(codes[:, None] == codes[None, :], same)
  assert cols["age"].dtype == np.float32 and cols["slice_index"].dtype == np.int32
  np.testing.assert_array_equal(cols["slice_index"], META["slice_index"])
