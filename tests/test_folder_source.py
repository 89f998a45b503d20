"""Image folder + CSV source: labels, windows, splits, bad rows, report, pool."""
from __future__ import annotations

import json
import pathlib

import ml_collections
import numpy as np
import pytest
from PIL import Image

import data_pipelines
from data_pipelines import folder
from ssl_jax.jobs import common

ROW = r"row {} \(spreadsheet numbering, header = row 1\)"


def _gray(seed: int, shape=(12, 10)) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_csv(tmp_path: pathlib.Path, lines: list[str],
              name: str = "labels.csv") -> str:
  path = tmp_path / name
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def make_dataset(tmp_path, n=8, patients=4, extra=""):
  """n 8-bit gray PNGs, labels 'cat'/'dog' alternating, n/patients each."""
  lines = ["path,label,patient_id" + (",split" if extra else "")]
  for i in range(n):
    Image.fromarray(_gray(i)).save(tmp_path / f"im{i}.png")
    split = f",{extra[i]}" if extra else ""
    lines.append(f"im{i}.png,{'cat' if i % 2 else 'dog'},p{i % patients}"
                 f"{split}")
  return write_csv(tmp_path, lines)


def source(csv_path, **options):
  return folder.CSVSource(csv_path, options)


def test_images_resized_like_pil_and_labels_by_sorted_names(tmp_path):
  make_dataset(tmp_path)  # writes im0.png ... im7.png
  lines = ["path,label,split"]
  for i, split in enumerate(["train", "train", "val", "test"]):
    lines.append(f"im{i}.png,{'cat' if i % 2 else 'dog'},{split}")
  csv_path = write_csv(tmp_path, lines)
  src = source(csv_path)
  images, labels = src.load("train", size=8)
  expected = np.asarray(Image.fromarray(_gray(0)).resize(
      (8, 8), Image.Resampling.BILINEAR))
  assert images.shape == (2, 8, 8, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(images[0, ..., 0], expected)
  np.testing.assert_array_equal(labels, [1, 0])  # classes sorted: cat, dog
  info = src.info(8)
  assert (info.num_classes, info.task, info.num_channels) == (
      2, "binary-class", 1)
  assert info.num_examples == {"train": 2, "val": 1, "test": 1}


def test_unlabelled_csv(tmp_path):
  make_dataset(tmp_path, n=2)
  csv_path = write_csv(tmp_path, ["path,split", "im0.png,train",
                                  "im1.png,train"])
  src = source(csv_path, label_column="")
  assert (src.info().num_classes, src.info().task) == (0, "unlabeled")
  assert src.load("train", size=8)[1].tolist() == [-1, -1]


def test_rgb_to_gray_and_gray_to_rgb(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / "c.png")
  Image.fromarray(_gray(1, (6, 6))).save(tmp_path / "g.png")
  csv_path = write_csv(tmp_path, ["path,label,split", "c.png,0,train",
                                  "g.png,1,train"])
  assert source(csv_path).info(6).num_channels == 3  # a tie: colour
  gray, _ = source(csv_path, channels=1).load("train", size=6)
  np.testing.assert_array_equal(
      gray[0, ..., 0], np.asarray(Image.fromarray(rgb).convert("L")))
  colour, _ = source(csv_path, channels=3).load("train", size=6)
  np.testing.assert_array_equal(colour[0], rgb)
  np.testing.assert_array_equal(colour[1], np.repeat(_gray(1, (6, 6))[..., None],
                                                     3, -1))


def test_16bit_window_and_min_max(tmp_path):
  raw = np.array([[100, 200], [300, 250]], np.uint16)
  Image.fromarray(raw).save(tmp_path / "w.png")
  csv_path = write_csv(tmp_path, ["path,label,split", "w.png,0,train"])
  minmax, _ = source(csv_path).load("train", size=2)
  # (v - 100) / 200 * 255, rounded: 0, 127.5 -> 128, 255, 191.25 -> 191
  np.testing.assert_array_equal(minmax[0, ..., 0], [[0, 128], [255, 191]])
  windowed, _ = source(csv_path, window=(200, 100)).load("train", size=2)
  # window [150, 250]: 100 -> 0, 200 -> 128, 300 -> 255, 250 -> 255
  np.testing.assert_array_equal(windowed[0, ..., 0], [[0, 128], [255, 255]])


def test_classes_option_int_labels_and_multi_label(tmp_path):
  for i in range(3):
    Image.fromarray(_gray(i)).save(tmp_path / f"{i}.png")
  csv_path = write_csv(tmp_path, ["path,label,split", "0.png,benign,train",
                                  "1.png,malignant,train", "2.png,2,train"])
  _, labels = source(csv_path, classes=["normal", "benign", "malignant"]
                     ).load("train", size=8)
  np.testing.assert_array_equal(labels, [1, 2, 2])  # '2' = index into classes
  csv_path = write_csv(tmp_path, ["path,label,split", "0.png,3,train",
                                  "1.png,0,train"], "ints.csv")
  src = source(csv_path)
  assert src.info().num_classes == 4 and src.info().task == "multi-class"
  csv_path = write_csv(tmp_path, ["path,a,b,split", "0.png,1,0,train",
                                  "1.png,1,1,train"], "multi.csv")
  src = source(csv_path, label_columns=["a", "b"])
  _, labels = src.load("train", size=8)
  np.testing.assert_array_equal(labels, [[1, 0], [1, 1]])
  assert src.info().multi_label and src.info().num_classes == 2


def test_patient_split_keeps_patients_whole_and_is_seeded(tmp_path):
  csv_path = make_dataset(tmp_path, n=20, patients=10)
  src = source(csv_path, split_fractions=(0.6, 0.2, 0.2), split_seed=3)
  seen = {}
  for split in ("train", "val", "test"):
    patients = src.metadata(split, size=8)["patient_id"]
    assert len(set(patients)) == {"train": 6, "val": 2, "test": 2}[split]
    assert len(patients) == 2 * len(set(patients))  # both images per patient
    seen[split] = set(patients)
  again = source(csv_path, split_fractions=(0.6, 0.2, 0.2), split_seed=3)
  assert set(again.metadata("test", size=8)["patient_id"]) == seen["test"]
  other = source(csv_path, split_fractions=(0.6, 0.2, 0.2), split_seed=4)
  assert any(set(other.metadata(s, size=8)["patient_id"]) != seen[s]
             for s in seen)
  report = src.report(size=8)
  # make_dataset: patient pK holds images K and K + 10, labelled 'cat' when
  # K is odd; classes sort as cat, dog.
  cats = sum(2 for p in seen["val"] if int(p[1:]) % 2)
  assert report["splits"]["val"] == {
      "images": 4, "rows": 4, "patients": 2,
      "label_counts": {"cat": cats, "dog": 4 - cats}}
  assert "patient_id groups" in report["split_by"]


def test_metadata_aligned_with_load(tmp_path):
  csv_path = make_dataset(tmp_path, n=6, patients=3)
  src = source(csv_path)
  for split in ("train", "val", "test"):
    images, labels = src.load(split, size=12)
    meta = src.metadata(split, size=12)
    for image, label, row, path in zip(images, labels, meta["csv_row"],
                                       meta["path"]):
      i = int(path[2:-4])
      assert row == i + 2  # spreadsheet row of im{i}.png
      assert label == (0 if i % 2 else 1)  # cat=0, dog=1
      expected = Image.fromarray(_gray(i)).resize(
          (12, 12), Image.Resampling.BILINEAR)
      np.testing.assert_array_equal(image[..., 0], np.asarray(expected))


def test_patient_in_two_given_splits_is_an_error(tmp_path):
  # p0: rows 2 (train) and 4 (val)
  csv_path = make_dataset(tmp_path, n=4, patients=2,
                          extra=["train", "train", "val", "test"])
  with pytest.raises(ValueError, match=r"labels.csv: patient 'p0' is in both "
                     r"the 'train' and the 'val' split \(train: rows 2; "
                     r"val: rows 4\)"):
    source(csv_path).load("train", size=8)


# --- every bad input names the CSV and the row --------------------------------


def _bad_csv(tmp_path, third_row: str, header="path,label,patient_id"):
  Image.fromarray(_gray(0)).save(tmp_path / "ok.png")
  return write_csv(tmp_path, [header, "ok.png,cat,p0", third_row,
                              "ok.png,dog,p2"])


@pytest.mark.parametrize("third_row,setup,problem", [
    ("nothere.png,cat,p1", None, r"file not found: .*nothere.png"),
    ("junk.png,cat,p1", lambda d: (d / "junk.png").write_bytes(b"not a png"),
     r"junk.png: cannot read image"),
    ("f.tif,cat,p1", lambda d: Image.fromarray(
        np.ones((4, 4), np.float32)).save(d / "f.tif"),
     r"f.tif has PIL mode 'F'.*\[bad_bit_depth\]"),
    ("b.png,cat,p1", lambda d: Image.fromarray(
        np.ones((4, 4), bool)).save(d / "b.png"),
     r"b.png is a 1-bit image.*allow_binary"),
    ("ok.png,bird,p1", None,
     r"label 'bird' is not one of the classes \['cat', 'dog'\]"),
    ("ok.png,cat,", None, r"empty 'patient_id'.*allow_missing_metadata"),
    ("ok.png,,p1", None, r"empty label in column 'label'"),
    ("ok.png,cat", None, r"2 cells, the header has 3"),
    ("x.bmp,cat,p1", None, r"x.bmp: extension '.bmp'; allowed: .*\.png"),
])
def test_bad_row_names_csv_and_row(tmp_path, third_row, setup, problem):
  if setup:
    setup(tmp_path)
  csv_path = _bad_csv(tmp_path, third_row)
  with pytest.raises(ValueError, match=r"labels.csv, " + ROW.format(3) +
                     ": " + problem):
    source(csv_path, classes=["cat", "dog"]).load("train", size=8)


def test_bad_split_value_and_age_name_the_row(tmp_path):
  csv_path = _bad_csv(tmp_path, "ok.png,cat,p1,valid",
                      header="path,label,patient_id,split")
  text = pathlib.Path(csv_path).read_text().splitlines()
  text[1] += ",train"
  text[3] += ",test"
  pathlib.Path(csv_path).write_text("\n".join(text) + "\n")
  with pytest.raises(ValueError, match=r"labels.csv, " + ROW.format(3) +
                     r": split 'valid'; allowed: train, val, test"):
    source(csv_path).info()
  csv_path = _bad_csv(tmp_path, "ok.png,cat,p1,forty",
                      header="path,label,patient_id,age")
  text = pathlib.Path(csv_path).read_text().splitlines()
  text[1] += ",40"
  text[3] += ",41"
  pathlib.Path(csv_path).write_text("\n".join(text) + "\n")
  with pytest.raises(ValueError, match=ROW.format(3) +
                     r": age 'forty' is not a number"):
    source(csv_path).info()


def test_missing_column_names_the_header_row(tmp_path):
  csv_path = write_csv(tmp_path, ["file,label", "a.png,0"])
  with pytest.raises(ValueError, match=r"labels.csv, row 1 \(header\): no "
                     r"column 'path' for the file path.*path_column"):
    source(csv_path).info()
  csv_path = write_csv(tmp_path, ["path,a", "a.png,0"], "multi.csv")
  with pytest.raises(ValueError, match=r"multi.csv, row 1 \(header\): no "
                     r"column 'b' for a multi-label class"):
    source(csv_path, label_columns=["a", "b"]).info()


def test_binary_image_allowed_when_asked(tmp_path):
  Image.fromarray(np.eye(4, dtype=bool)).save(tmp_path / "b.png")
  csv_path = write_csv(tmp_path, ["path,label,split", "b.png,0,train"])
  images, _ = source(csv_path, allow_binary=True).load("train", size=4)
  np.testing.assert_array_equal(images[0, ..., 0], np.eye(4) * 255)


def test_skip_counts_every_bad_row_in_the_report(tmp_path):
  for i in range(4):
    Image.fromarray(_gray(i)).save(tmp_path / f"{i}.png")
  (tmp_path / "junk.png").write_bytes(b"junk")
  csv_path = write_csv(tmp_path, [
      "path,label,patient_id,split", "0.png,a,p0,train", "gone.png,a,p1,train",
      "1.png,zebra,p2,train", "junk.png,b,p3,val", "2.png,b,,val",
      "", "3.png,b,p5,test"])
  src = source(csv_path, classes=["a", "b"], on_bad_row="skip")
  images, labels = src.load("train", size=8)
  assert len(images) == 1 and labels.tolist() == [0]
  report = src.report(size=8)
  assert report["skipped"]["count"] == 4
  assert report["skipped"]["by_reason"] == {
      "missing_file": 1, "label_not_in_classes": 1, "unreadable_file": 1,
      "missing_metadata": 1}
  assert [r["row"] for r in report["skipped"]["rows"]] == [3, 4, 5, 6]
  assert report["blank_lines"] == 1 and report["rows_used"] == 2
  assert report["data_rows"] == 7
  assert {s: v["images"] for s, v in report["splits"].items()} == {
      "train": 1, "val": 0, "test": 1}
  out = tmp_path / "out" / "data_report.json"
  data_pipelines.write_data_report(out, report)
  assert json.loads(out.read_text()) == json.loads(json.dumps(report))


def test_unknown_option_and_registry_caching(tmp_path):
  csv_path = make_dataset(tmp_path)
  with pytest.raises(ValueError, match="unknown option.*clases.*allowed:.*"
                     "classes"):
    data_pipelines.get(f"csv:{csv_path}", {"clases": ["a"]})
  name = f"csv:{csv_path}"
  a = data_pipelines.get(name, {"channels": 1})
  assert data_pipelines.get(name, ml_collections.ConfigDict(
      {"channels": 1})) is a
  assert data_pipelines.get(name, {"channels": 3}) is not a
  with pytest.raises(KeyError, match="allowed: .*breastmnist.*csv, pool, tfds"):
    data_pipelines.get("nosuch")
  with pytest.raises(ValueError, match="takes no options"):
    data_pipelines.get("breastmnist", {"channels": 1})
  assert data_pipelines.metadata("breastmnist", "train") == {}


def test_jobs_pass_config_options(tmp_path):
  csv_path = make_dataset(tmp_path)
  config = ml_collections.ConfigDict({"data": {
      "name": f"csv:{csv_path}", "size": 8, "data_dir": "",
      "options": {"channels": 3, "split_fractions": (0.5, 0.25, 0.25)}}})
  assert common.data_info(config).num_channels == 3
  images, _ = common.load_split(config, "train")
  assert images.shape == (4, 8, 8, 3)
  assert len(common.load_metadata(config, "train")["patient_id"]) == 4
  common.check_dataset_name(config.data.name)
  with pytest.raises(ValueError, match="unknown kind 'cvs'; allowed: csv"):
    common.check_dataset_name("cvs:/x.csv")


# --- pools ------------------------------------------------------------------


def test_pool_of_two_csvs_is_unlabelled_union(tmp_path):
  a_dir, b_dir = tmp_path / "a", tmp_path / "b"
  a_dir.mkdir()
  b_dir.mkdir()
  a = make_dataset(a_dir, n=4, patients=4)
  b = make_dataset(b_dir, n=6, patients=6)
  opts = {"split_fractions": (0.5, 0.25, 0.25)}
  name = f"pool:csv:{a}+csv:{b}"
  info = data_pipelines.info(name, 8, options=opts)
  assert (info.num_classes, info.task, info.num_channels) == (
      0, "unlabeled", 1)
  images, labels = data_pipelines.load(name, "train", size=8, options=opts)
  a_train, _ = data_pipelines.load(f"csv:{a}", "train", size=8, options=opts)
  b_train, _ = data_pipelines.load(f"csv:{b}", "train", size=8, options=opts)
  np.testing.assert_array_equal(images, np.concatenate([a_train, b_train]))
  assert np.all(labels == -1)
  val, _ = data_pipelines.load(name, "val", size=8, options=opts)
  a_val, _ = data_pipelines.load(f"csv:{a}", "val", size=8, options=opts)
  np.testing.assert_array_equal(val, a_val)
  meta = data_pipelines.metadata(name, "train", size=8, options=opts)
  assert meta["source"].tolist() == [f"csv:{a}"] * 2 + [f"csv:{b}"] * 3
  assert len(meta["patient_id"]) == 5


def test_pool_with_mixed_channels_is_an_error():
  # MedMNIST info needs no files: breastmnist is gray, retinamnist RGB.
  with pytest.raises(ValueError, match="'breastmnist' has num_channels=1 but "
                     "'retinamnist' has num_channels=3"):
    data_pipelines.info("pool:breastmnist+retinamnist")


def test_pool_of_medmnist_and_csv(tmp_path, medmnist_dir):
  csv_path = make_dataset(tmp_path, n=4, patients=4)
  name = f"pool:breastmnist+csv:{csv_path}"
  options = {"members": {f"csv:{csv_path}": {"split_fractions": (0.5, 0.25,
                                                                  0.25)}}}
  images, labels = data_pipelines.load(name, "train", data_dir=medmnist_dir,
                                       options=options)
  breast, _ = data_pipelines.load("breastmnist", "train",
                                  data_dir=medmnist_dir)
  assert images.shape == (546 + 2, 28, 28, 1) and np.all(labels == -1)
  np.testing.assert_array_equal(images[:546], breast)
  val, _ = data_pipelines.load(name, "val", data_dir=medmnist_dir,
                               options=options)
  assert len(val) == 78
  meta = data_pipelines.metadata(name, "train", data_dir=medmnist_dir,
                                 options=options)
  assert list(meta) == ["source"] and len(meta["source"]) == 548
  with pytest.raises(ValueError, match="appears twice"):
    data_pipelines.get("pool:breastmnist+breastmnist")


# --- options from the command line (issue 13, item 1) ---------------------


def parse_flags(*argv: str) -> ml_collections.ConfigDict:
  """The config run.py would build from these command-line flags."""
  from absl import flags  # noqa: PLC0415
  from ml_collections import config_flags  # noqa: PLC0415
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                  lock_config=True)
  import sys  # noqa: PLC0415
  saved, sys.argv = sys.argv, ["run.py", *argv]  # config_flags reads sys.argv
  try:
    values(sys.argv)
  finally:
    sys.argv = saved
  return values.config


def test_every_csv_option_can_be_set_by_a_dotted_override(tmp_path):
  csv_path = _bad_csv(tmp_path, "nothere.png,cat,p1")
  config = parse_flags(f"--config=configs/medical_csv.py:{csv_path}",
                       "--config.data.options.on_bad_row=skip",
                       "--config.data.options.classes=cat,dog",
                       "--config.data.options.channels=3")
  assert common.data_options(config) == {
      "on_bad_row": "skip", "classes": ("cat,dog",), "channels": 3,
      "window": (127.5, 255.0)}
  config.data.size = 8
  info = common.data_info(config)  # classes 'a,b' from the command line split
  assert (info.num_classes, info.num_channels) == (2, 3)
  report = data_pipelines.report(config.data.name, size=8,
                                 options=common.data_options(config))
  assert report["skipped"]["by_reason"] == {"missing_file": 1}
  for field in folder.CSVOptions.__dataclass_fields__:
    assert field in config.data.options, field


def test_medmnist_config_declares_options_but_passes_none():
  config = parse_flags("--config=configs/demo.py")
  assert common.data_options(config) == {}
  common.data_info(config)  # MedMNIST takes no options: none are passed
  with pytest.raises(ValueError, match="takes no options, got \\['channels'\\]"):
    common.data_info(parse_flags("--config=configs/demo.py",
                                 "--config.data.options.channels=1"))


def test_bad_row_message_shows_the_override_that_works(tmp_path):
  csv_path = _bad_csv(tmp_path, "nothere.png,cat,p1")
  with pytest.raises(ValueError) as e:
    source(csv_path).load("train", size=8)
  assert "--config.data.options.on_bad_row=skip" in str(e.value)
  config = parse_flags(f"--config=configs/medical_csv.py:{csv_path}",
                       "--config.data.options.on_bad_row=skip")
  config.data.size = 8
  images, _ = common.load_split(config, "train")  # the advice works
  assert len(images) > 0
