"""DICOM and NIfTI readers: rescale, windows, header metadata, slices."""
from __future__ import annotations

import pathlib

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (ExplicitVRLittleEndian, SecondaryCaptureImageStorage,
                         generate_uid)

from data_pipelines import folder, medical_io

PIXELS = np.array([[0, 100], [200, 300]], np.uint16)


def write_dicom(path: pathlib.Path, pixels: np.ndarray = PIXELS,
                bits: int = 16, **fields) -> pathlib.Path:
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = SecondaryCaptureImageStorage
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Rows, ds.Columns = pixels.shape[-2:]
  if pixels.ndim == 3:
    ds.NumberOfFrames = pixels.shape[0]
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = "MONOCHROME2"
  ds.BitsAllocated = ds.BitsStored = bits
  ds.HighBit = bits - 1
  ds.PixelRepresentation = 0
  ds.PixelData = pixels.astype(f"<u{bits // 8}").tobytes()
  for key, value in fields.items():
    setattr(ds, key, value)
  ds.save_as(path, enforce_file_format=True)
  return path


def read(path, size=2, window=None):
  return medical_io.read(path, medical_io.ReadOptions(
      size=size, channels=1, window=window))


def test_dicom_rescale_then_first_header_window(tmp_path):
  # stored [0, 100, 200, 300] * 2 - 100 = [-100, 100, 300, 500]; window
  # [0, 400]: -100 -> 0, 100 -> 63.75 -> 64, 300 -> 191.25 -> 191, 500 -> 255
  path = write_dicom(tmp_path / "a.dcm", RescaleSlope=2, RescaleIntercept=-100,
                     WindowCenter=[200, 50], WindowWidth=[400, 10])
  (s,) = read(path)
  np.testing.assert_array_equal(s.image[..., 0], [[0, 64], [191, 255]])
  # options.window wins over the header: [0, 200]
  (s,) = read(path, window=(100, 200))
  np.testing.assert_array_equal(s.image[..., 0], [[0, 128], [255, 255]])


def test_dicom_min_max_without_window_and_monochrome1(tmp_path):
  (s,) = read(write_dicom(tmp_path / "a.dcm"))
  # [0, 300] -> 0, 85, 170, 255
  np.testing.assert_array_equal(s.image[..., 0], [[0, 85], [170, 255]])
  (s,) = read(write_dicom(tmp_path / "b.dcm",
                          PhotometricInterpretation="MONOCHROME1"))
  np.testing.assert_array_equal(s.image[..., 0], [[255, 170], [85, 0]])


def test_dicom_header_metadata(tmp_path):
  path = write_dicom(tmp_path / "a.dcm", PatientID="P42",
                     StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4",
                     ViewPosition="PA", ImageLaterality="L",
                     PatientAge="045Y", PatientSex="F")
  (s,) = read(path)
  assert s.meta == {"patient_id": "P42", "study_id": "1.2.3",
                    "series_id": "1.2.3.4", "view": "PA", "laterality": "L",
                    "age": 45.0, "sex": "F"}
  assert medical_io.parse_dicom_age("006M") == 0.5


def test_dicom_multi_frame_gives_slices(tmp_path):
  frames = np.stack([PIXELS, PIXELS * 2])
  slices = read(write_dicom(tmp_path / "m.dcm", frames))
  assert [s.meta["slice_index"] for s in slices] == [0, 1]
  # one window (min-max of the whole scan, [0, 600]) for both frames
  np.testing.assert_array_equal(slices[0].image[..., 0], [[0, 43], [85, 128]])
  np.testing.assert_array_equal(slices[1].image[..., 0], [[0, 85], [170, 255]])


def test_dicom_32_bit_is_refused(tmp_path):
  path = write_dicom(tmp_path / "a.dcm", bits=32)
  with pytest.raises(medical_io.ReadError, match="BitsAllocated=32"):
    read(path)


def test_dicom_in_csv_fills_metadata_and_splits_by_header_patient(tmp_path):
  lines = ["path,label"]
  for i in range(6):
    write_dicom(tmp_path / f"{i}.dcm", PatientID=f"P{i // 2}",
                PatientSex="MF"[i % 2])
    lines.append(f"{i}.dcm,{i % 2}")
  lines.append("junk.dcm,0")
  (tmp_path / "junk.dcm").write_bytes(b"junk")
  (tmp_path / "l.csv").write_text("\n".join(lines) + "\n")
  src = folder.CSVSource(str(tmp_path / "l.csv"), {
      "split_fractions": (1 / 3, 1 / 3, 1 / 3), "on_bad_row": "skip"})
  for split in ("train", "val", "test"):
    meta = src.metadata(split, size=2)
    assert len(set(meta["patient_id"])) == 1 and len(meta["patient_id"]) == 2
    assert sorted(meta["sex"]) == ["F", "M"]
  report = src.report(size=2)
  assert report["skipped"]["rows"][0]["row"] == 8
  assert "cannot read DICOM" in report["skipped"]["rows"][0]["detail"]
  with pytest.raises(ValueError, match=r"l.csv, row 8 .*junk.dcm: cannot read "
                     r"DICOM"):
    folder.CSVSource(str(tmp_path / "l.csv")).load("train", size=2)


VOLUME = np.arange(4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3)


def _expected_slice(volume: np.ndarray, k: int) -> np.ndarray:
  plane = np.flipud(volume[:, :, k].T)  # RAS: anterior (high y) at the top
  lo, hi = volume.min(), volume.max()
  return np.floor((plane - lo) / (hi - lo) * 255 + 0.5).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_axial_slices_with_one_volume_window(tmp_path, suffix):
  path = tmp_path / f"v{suffix}"
  nib.save(nib.Nifti1Image(VOLUME, np.eye(4)), path)
  slices = read(path, size=4)
  assert [s.meta["slice_index"] for s in slices] == [0, 1, 2]
  for k, s in enumerate(slices):
    np.testing.assert_array_equal(s.image[..., 0], _expected_slice(VOLUME, k))


def test_nifti_reoriented_to_canonical(tmp_path):
  # x axis stored right-to-left: canonical orientation flips it back.
  path = tmp_path / "lps.nii"
  nib.save(nib.Nifti1Image(VOLUME, np.diag([-1.0, 1, 1, 1])), path)
  slices = read(path, size=4)
  np.testing.assert_array_equal(slices[1].image[..., 0],
                                _expected_slice(VOLUME[::-1], 1))


def test_nifti_4d_is_refused(tmp_path):
  path = tmp_path / "t.nii"
  nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)),
           path)
  with pytest.raises(medical_io.ReadError, match=r"shape \[2, 2, 2, 3\]; only"
                     " 2D and 3D"):
    read(path)


def test_nifti_in_csv_one_row_per_slice(tmp_path):
  nib.save(nib.Nifti1Image(VOLUME, np.eye(4)), tmp_path / "a.nii.gz")
  nib.save(nib.Nifti1Image(VOLUME[..., :2] * 2, np.eye(4)), tmp_path / "b.nii")
  (tmp_path / "l.csv").write_text(
      "path,label,patient_id,split\na.nii.gz,1,p0,train\nb.nii,0,p1,test\n")
  src = folder.CSVSource(str(tmp_path / "l.csv"), {"channels": 3})
  images, labels = src.load("train", size=4)
  assert images.shape == (3, 4, 4, 3) and labels.tolist() == [1, 1, 1]
  np.testing.assert_array_equal(images[2, ..., 1], _expected_slice(VOLUME, 2))
  meta = src.metadata("train", size=4)
  assert meta["series_id"].tolist() == ["a.nii.gz"] * 3
  assert meta["slice_index"].tolist() == [0, 1, 2]
  assert meta["csv_row"].tolist() == [2, 2, 2]
  assert src.report(size=4)["splits"]["test"] == {
      "images": 2, "rows": 1, "patients": 1,
      "label_counts": {"0": 2, "1": 0}}
