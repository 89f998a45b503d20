"""MedMNIST written as folder + CSV reads back exactly through the csv: source."""
import numpy as np
import pytest

import data_pipelines
from data_pipelines import export_medmnist, fractions

WINDOW = {"window": export_medmnist.IDENTITY_WINDOW}


@pytest.fixture(scope="module")
def adrenal_csv(tmp_path_factory, medmnist_dir):
  out = tmp_path_factory.mktemp("adrenal_csv")
  return str(export_medmnist.export("adrenalmnist3d", out,
                                    data_dir=str(medmnist_dir)))


def test_nifti_volumes_read_back_as_their_exact_axial_slices(adrenal_csv,
                                                             medmnist_dir):
  name = f"csv:{adrenal_csv}"
  volumes, labels = data_pipelines.load("adrenalmnist3d", "val", size=28,
                                        data_dir=str(medmnist_dir))
  slices, slice_labels = data_pipelines.load(name, "val", size=28,
                                             options=WINDOW)
  n, depth = len(volumes), volumes.shape[1]
  assert slices.shape == (n * depth, 28, 28, 1)
  np.testing.assert_array_equal(slices, volumes.reshape(n * depth, 28, 28, 1))
  np.testing.assert_array_equal(slice_labels, np.repeat(labels, depth))
  meta = data_pipelines.metadata(name, "val", size=28, options=WINDOW)
  np.testing.assert_array_equal(meta["slice_index"], np.tile(np.arange(depth), n))
  assert len(set(meta["series_id"])) == n == len(set(meta["patient_id"]))


def test_patient_level_fractions_take_whole_volumes(adrenal_csv, medmnist_dir):
  name = f"csv:{adrenal_csv}"
  _, labels = data_pipelines.load(name, "train", size=28, options=WINDOW)
  groups = data_pipelines.metadata(name, "train", size=28,
                                   options=WINDOW)["patient_id"]
  picked = fractions.label_fraction_indices(labels, 0.01, seed=0, groups=groups)
  chosen = set(groups[picked])
  assert len(picked) == 28 * len(chosen)  # every slice of each chosen volume
  assert set(labels[picked]) == {0, 1}    # stratified: both classes present
  report = data_pipelines.report(name, size=28, options=WINDOW)
  # From the original npz, not the CSV path under test: 28 slices a volume.
  with np.load(f"{medmnist_dir}/adrenalmnist3d.npz") as npz:
    volume_counts = np.bincount(npz["train_labels"].reshape(-1), minlength=2)
  assert report["splits"]["train"] == {
      "images": 1188 * 28, "rows": 1188, "patients": 1188,
      "label_counts": {"0": int(volume_counts[0]) * 28,
                       "1": int(volume_counts[1]) * 28}}
  assert report["skipped"]["count"] == 0
