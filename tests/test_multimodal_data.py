"""The data side of multimodal pretraining: further CSV columns, the report
vocabulary and the tabular coding, each fitted on the train split only and
kept in the workdir. No model is compiled here."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from data_pipelines import folder, tabular, text
from data_pipelines import vocab as vocab_lib
from ssl_jax import columns
from tests.tiny import tiny_config

TRAIN = ["Round mass, 12 mm.", "round MASS seen", "no mass seen", "mass"]


def write_csv(tmp_path, header: str, rows: list[str]) -> str:
  """A CSV of 28 px gray PNGs; `rows` are the cells after `path`."""
  lines = ["path," + header]
  for i, cells in enumerate(rows):
    Image.fromarray(np.full((28, 28), 20 * i, np.uint8)).save(
        tmp_path / f"im{i}.png")
    lines.append(f"im{i}.png,{cells}")
  path = tmp_path / "labels.csv"
  path.write_text("\n".join(lines) + "\n")
  return str(path)


# ------------------------------------------------------------------ text --

def test_words_split_punctuation_and_lower_case():
  assert text.words("Round MASS, 12 mm.") == ["round", "mass", ",", "12",
                                               "mm", "."]


def test_vocabulary_comes_from_the_train_reports_only():
  vocab = text.fit(TRAIN, column="report", size=100, max_length=8)
  # specials, then by falling count (mass 4, round 2, seen 2), ties a-z
  assert vocab["tokens"][:6] == ["<pad>", "<unk>", "<cls>", "mass", "round",
                                 "seen"]
  assert "pneumothorax" not in vocab["tokens"]
  ids = text.encode(vocab, ["Pneumothorax and round mass"])[0]
  assert text.decode(vocab, ids) == ["<cls>", "<unk>", "<unk>", "round",
                                     "mass"]


def test_size_and_min_count_cap_the_vocabulary():
  vocab = text.fit(TRAIN, column="report", size=5, max_length=8)
  assert vocab["tokens"] == ["<pad>", "<unk>", "<cls>", "mass", "round"]
  rare = text.fit(TRAIN, column="report", size=100, max_length=8,
                  min_count=2)
  assert rare["tokens"][3:] == ["mass", "round", "seen"]


def test_sequences_are_cls_first_truncated_and_zero_padded():
  vocab = text.fit(TRAIN, column="report", size=100, max_length=4)
  ids = text.encode(vocab, ["mass", "round mass seen round mass", ""])
  assert ids.dtype == np.int32 and ids.shape == (3, 4)
  mass, round_, seen = (vocab["tokens"].index(w)
                        for w in ("mass", "round", "seen"))
  np.testing.assert_array_equal(ids, [[text.CLS, mass, 0, 0],
                                      [text.CLS, round_, mass, seen],
                                      [text.CLS, 0, 0, 0]])


def test_vocabulary_does_not_depend_on_row_order():
  rng = np.random.default_rng(0)
  shuffled = list(rng.permutation(TRAIN * 3))
  assert (text.fit(TRAIN * 3, column="r", size=6, max_length=5)
          == text.fit(shuffled, column="r", size=6, max_length=5))


def test_bad_vocabulary_settings_are_refused():
  with pytest.raises(ValueError, match="size=3"):
    text.fit(TRAIN, column="report", size=3, max_length=8)
  with pytest.raises(ValueError, match="max_length=1"):
    text.fit(TRAIN, column="report", size=10, max_length=1)


def test_vocabularies_round_trip_through_the_workdir(tmp_path):
  meta = {"report": np.array(TRAIN), "age": np.array([30.0, 40, 50, 60]),
          "sex": np.array(["F", "M", "F", "M"])}
  specs = {"text": {"column": "report", "size": 10, "max_length": 6},
           "tabular": {"numeric": ["age"], "categorical": ["sex"]}}
  fitted = vocab_lib.fit(specs, meta, "train")
  vocab_lib.write(tmp_path, fitted)
  assert not list(tmp_path.glob("*.tmp"))  # written whole, then renamed
  back = vocab_lib.read(tmp_path)
  assert back == fitted
  for key, value in vocab_lib.encode(fitted, meta, "train").items():
    np.testing.assert_array_equal(vocab_lib.encode(back, meta, "x")[key],
                                  value)


def test_a_resumed_pretraining_keeps_the_workdirs_vocabulary(tmp_path):
  """pretrain.vocabularies reads vocab.json back instead of refitting: the
  codes and embedding sizes of a resumed run cannot change."""
  from ssl_jax.jobs import pretrain
  config = tiny_config()
  config.objective = dict(name="clip_text", text_column="report",
                          vocab_size=50, max_length=6)
  first = pretrain.vocabularies(config, None, {"report": np.array(TRAIN)},
                                str(tmp_path))
  vocab_lib.write(tmp_path, first)
  other = {"report": np.array(["completely different words"])}
  assert pretrain.vocabularies(config, None, other, str(tmp_path)) == first
  assert "different" in pretrain.vocabularies(
      config, None, other, str(tmp_path / "fresh"))["text"]["tokens"]


# --------------------------------------------------------------- tabular --

def test_numbers_are_standardised_with_train_statistics():
  train = {"age": np.array([20.0, 30.0, 70.0, np.nan]),
           "sex": np.array(["F", "M", "M", ""]),
           "flat": np.array([5.0, 5.0, 5.0, 5.0])}
  vocab = tabular.fit(train, numeric=("age", "flat"), categorical=("sex",),
                      where="train")
  present = np.array([20.0, 30.0, 70.0])
  assert vocab["numeric"][0] == {"column": "age", "mean": present.mean(),
                                 "std": pytest.approx(present.std())}
  assert vocab["numeric"][1]["std"] == 1.0  # a constant column
  assert vocab["categorical"] == [{"column": "sex", "categories": ["F", "M"]}]
  test = {"age": np.array([40.0, np.nan]), "sex": np.array(["X", "M"]),
          "flat": np.array([5.0, 6.0])}
  out = tabular.encode(vocab, test, "test")
  np.testing.assert_allclose(
      out[columns.TABULAR_NUMERIC],
      [[(40 - present.mean()) / present.std(), 0.0], [0.0, 1.0]], rtol=1e-6)
  # unseen 'X' -> 0 (missing or unseen), 'M' -> 2 (F=1, M=2)
  np.testing.assert_array_equal(out[columns.TABULAR_CATEGORICAL], [[0], [2]])
  assert out[columns.TABULAR_NUMERIC].dtype == np.float32


def test_numbers_used_as_categories_are_coded():
  vocab = tabular.fit({"grade": np.array([1.0, 2.0, 2.0])}, numeric=(),
                      categorical=("grade",), where="train")
  assert vocab["categorical"][0]["categories"] == ["1", "2"]
  assert columns.TABULAR_NUMERIC not in tabular.encode(
      vocab, {"grade": np.array([2.0])}, "val")


def test_tabular_refuses_text_infinite_and_missing_columns():
  where = "data 'csv:/d/labels.csv', train split"
  meta = {"smoker": np.array(["yes", "no"]), "bmi": np.array([20.0, np.inf]),
          "csv_row": np.array([2, 3])}
  with pytest.raises(ValueError, match=re.escape(where) +
                     r".*'smoker' holds text.*numeric_columns"):
    tabular.fit(meta, numeric=("smoker",), categorical=(), where=where)
  with pytest.raises(ValueError, match=r"CSV row 3: column 'bmi' is inf"):
    tabular.fit(meta, numeric=("bmi",), categorical=(), where=where)
  with pytest.raises(ValueError, match=r"no column 'weight'.*"
                     r"data.options.numeric_columns"):
    tabular.fit(meta, numeric=("weight",), categorical=(), where=where)
  with pytest.raises(ValueError, match="both empty"):
    tabular.fit(meta, numeric=(), categorical=(), where=where)


# ----------------------------------------------------------- CSV source --

def test_csv_carries_the_named_columns(tmp_path):
  csv = write_csv(tmp_path, "label,age,bmi,smoker,report,split",
                  ["benign,40,21.5,no,Round mass.,train",
                   "malignant,61,30,yes,Spiculated mass.,train",
                   "benign,35,19.25,no,Nothing seen.,val",
                   "malignant,70,28,yes,Irregular mass.,test"])
  src = folder.CSVSource(csv, {"numeric_columns": ("age", "bmi"),
                               "text_columns": "smoker,report"})
  meta = src.metadata("train")
  np.testing.assert_array_equal(meta["bmi"], [21.5, 30.0])
  assert meta["bmi"].dtype == np.float64 and meta["age"].dtype == np.float64
  assert meta["smoker"].tolist() == ["no", "yes"]
  assert meta["report"].tolist() == ["Round mass.", "Spiculated mass."]
  assert src.info().class_names == ("benign", "malignant")


def test_csv_names_the_file_row_and_column_of_a_bad_number(tmp_path):
  csv = write_csv(tmp_path, "label,bmi", ["a,21", "b,twenty"])
  with pytest.raises(ValueError, match=re.escape(csv) + r", row 3 .*"
                     r"bmi 'twenty' is not a number"):
    folder.CSVSource(csv, {"numeric_columns": ("bmi",)}).load("train")


def test_csv_names_a_missing_column_and_its_option(tmp_path):
  csv = write_csv(tmp_path, "label,age", ["a,21", "b,30"])
  with pytest.raises(ValueError, match=re.escape(csv) + r", row 1 \(header\)"
                     r": no column 'report' for text.*text_columns"):
    folder.CSVSource(csv, {"text_columns": ("report",)}).parsed()


def test_an_empty_cell_is_refused_unless_declared_missing(tmp_path):
  csv = write_csv(tmp_path, "label,bmi,split", ["a,21,train", "b,,train",
                                                "a,20,val", "b,22,test"])
  with pytest.raises(ValueError, match=r"row 3 .*empty 'bmi'"):
    folder.CSVSource(csv, {"numeric_columns": ("bmi",)}).parsed()
  src = folder.CSVSource(csv, {"numeric_columns": ("bmi",),
                               "allow_missing_metadata": ("bmi",)})
  assert np.isnan(src.metadata("train")["bmi"][1])


@pytest.mark.parametrize("options, message", [
    ({"numeric_columns": ("sex",)}, "'sex', a known metadata column read as "
                                    "text"),
    ({"text_columns": ("age",)}, "'age', a known metadata column read as a "
                                 "number"),
    ({"numeric_columns": ("x",), "text_columns": ("x",)}, "in both"),
    ({"text_columns": ("label",)}, "'label', which is options.label_column"),
])
def test_column_options_that_contradict_are_refused(tmp_path, options,
                                                    message):
  with pytest.raises(ValueError, match=re.escape(message)):
    folder.CSVOptions.from_mapping(options)


def test_pretraining_names_a_column_the_data_does_not_carry(tmp_path):
  """Before anything compiles: the objective's column, and the option that
  would carry it."""
  from ssl_jax.jobs import pretrain
  csv = write_csv(tmp_path, "label,bmi,split",
                  [f"{'ab'[i % 2]},{20 + i},{s}" for i, s in
                   enumerate(["train"] * 4 + ["val", "val", "test", "test"])])
  config = tiny_config(**{"data.name": f"csv:{csv}", "online_probe": False})
  config.objective = dict(name="clip_tabular", numeric_columns=("bmi",),
                          categorical_columns=())
  with pytest.raises(ValueError, match=r"reads the batch columns \['bmi'\]"
                     r".*data.options.numeric_columns"):
    pretrain.train_and_evaluate(config, str(tmp_path / "run"))
