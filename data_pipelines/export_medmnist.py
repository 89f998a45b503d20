"""Writes a MedMNIST set as an image folder + CSV: the layout of your own data.

Why: the `csv:` source (folder.py) is how a hospital's export enters ssl_jax,
and this turns a public, md5-checked set into exactly that layout, so the
whole medical path (file readers, windowing, patient-level checks, positive
pairs) runs end to end on real images anyone can download.

  python -m data_pipelines.export_medmnist adrenalmnist3d OUT_DIR [--size 28]

2D sets: one PNG per image. 3D sets: one NIfTI file per volume (identity
affine, oriented so that folder.py's axial slice k is the set's volume[k]);
the CSV source reads each back as its slices, with `series_id` = the file
and `slice_index` = k, so `pairs.mode=series` pairs adjacent slices of one
scan. Columns: path, label, patient_id, split (the set's own split).

MedMNIST ships no patient ids: `patient_id` is the scan (or image) id,
`<split>-<index>`. For AdrenalMNIST3D one patient can contribute two scans
(left and right gland), so read "patient" here as "scan". Read the volumes
back with `options.window=(127.5, 255)`: voxel values map to themselves.
"""
from __future__ import annotations

import argparse
import csv
import os
import pathlib

import numpy as np

import data_pipelines
from data_pipelines.source import SPLITS
from ssl_jax import files

IDENTITY_WINDOW = (127.5, 255.0)  # uint8 0..255 -> 0..255 unchanged


def nifti_array(volume: np.ndarray) -> np.ndarray:
  """[D, H, W] -> the NIfTI data array whose axial slice k is volume[k]
  under medical_io.read_nifti's orientation (transpose + flip of rows)."""
  return np.ascontiguousarray(np.transpose(volume[:, ::-1, :], (2, 1, 0)))


def _write_png(path: pathlib.Path, image: np.ndarray) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def _write_nifti(path: pathlib.Path, volume: np.ndarray) -> None:
  import nibabel  # pylint: disable=g-import-not-at-top
  nibabel.save(nibabel.Nifti1Image(nifti_array(volume[..., 0]), np.eye(4)),
               str(path))


def export(name: str, out_dir: str | os.PathLike, *, size: int = 28,
           data_dir: str | None = None) -> pathlib.Path:
  """Writes the files and OUT_DIR/labels.csv; returns the CSV path."""
  out = pathlib.Path(out_dir)
  (out / "images").mkdir(parents=True, exist_ok=True)
  volumes = data_pipelines.info(name, size).spatial_dims == 3
  suffix, write = (".nii.gz", _write_nifti) if volumes else (".png", _write_png)
  rows = []
  for split in SPLITS:
    images, labels = data_pipelines.load(name, split, size=size,
                                         data_dir=data_dir)
    if labels.ndim != 1:
      raise ValueError(f"{name}: export writes one label column; this set "
                       f"has {labels.shape[1]} labels per image")
    for i, (image, label) in enumerate(zip(images, labels)):
      relative = f"images/{split}-{i:05d}{suffix}"
      write(out / relative, image)
      rows.append({"path": relative, "label": int(label),
                   "patient_id": f"{split}-{i:05d}", "split": split})
  csv_path = out / "labels.csv"
  # A killed export never leaves a partial CSV.
  with files.atomic_open(csv_path, newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return csv_path


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("name", help="a MedMNIST set, e.g. adrenalmnist3d")
  parser.add_argument("out_dir")
  parser.add_argument("--size", type=int, default=28)
  parser.add_argument("--data_dir", default=None)
  args = parser.parse_args()
  print(export(args.name, args.out_dir, size=args.size, data_dir=args.data_dir))


if __name__ == "__main__":
  main()
