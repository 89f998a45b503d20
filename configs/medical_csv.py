"""SimCLR on your own image folder + CSV, positives from the same series.

Run (AdrenalMNIST3D's volumes - binary adrenal-gland shapes segmented from
abdominal CT - written as NIfTI files + a CSV, read back as axial slices:
series_id = the file, slice_index = the slice):
  python -m data_pipelines.export_medmnist adrenalmnist3d workdirs/adrenal_csv
  python run.py --config=configs/medical_csv.py:workdirs/adrenal_csv/labels.csv \
      --workdir=workdirs/adrenal_series
  ... --config.pairs.mode=views --workdir=workdirs/adrenal_views   (baseline)
Arg: the CSV path (columns: data_pipelines/folder.py).

`pairs.mode=series`: the second view of each slice is another slice of the
same volume at most `series_max_gap` slices away (data_pipelines/pairs.py),
so the pair differs by anatomy the way neighbouring slices do, not only by
augmentation. Label fractions take whole scans (patient_id), so no volume is
split between labelled and unlabelled. Each slice inherits its volume's
label (adrenal mass or not), so the task is slice-level and noisier than the
volume-level AdrenalMNIST3D benchmark. Writes data_report.json (rows,
patients and images per split) next to the results.

Budget: the benchmark's CPU network (ResNet-18 x1/8, 28 px), 150 steps x 128.
Measured results: docs/medical_data.md, "End to end: NIfTI volumes + CSV".
"""
from configs import base


def get_config(arg: str = "workdirs/adrenal_csv/labels.csv"):
  c = base.get_config()
  c.job = "pretrain_finetune"
  c.data.name = f"csv:{arg}"
  # Voxel values 0..255 map to themselves (export_medmnist.IDENTITY_WINDOW).
  c.data.options.window = (127.5, 255.0)
  c.pairs.mode = "series"
  c.pairs.series_max_gap = 2
  c.model = dict(name="resnet18", width_multiplier=0.125,
                 stage_sizes=(2, 2, 2, 2))
  c.objective = dict(name="simclr", temperature=0.2, proj_hidden_dim=256,
                     proj_dim=64, proj_layers=2)
  c.train.steps = 150
  c.train.batch_size = 128
  c.train.log_every = 25
  c.train.checkpoint_every = 50
  c.optim = base.optim_config("adamw", 2e-3, weight_decay=1e-4, warmup_steps=15)
  ft = c.finetune
  ft.protocols = ("linear", "finetune")
  ft.fractions = (0.01, 0.1, 1.0)
  ft.steps = 100
  ft.batch_size = 64
  ft.eval_every = 20
  ft.log_every = 20
  return c
