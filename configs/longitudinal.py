"""Longitudinal pretext task (Rivail et al. 2019): the time between two scans
of one patient, from a folder + CSV with `patient_id` and `days` or
`study_date` (data_pipelines/folder.py).

Run:  python run.py --config=configs/longitudinal.py:/data/oct/scans.csv \
        --workdir=workdirs/longitudinal
The arg is the CSV (its images' paths relative to it). Each row's partner is
another scan of its patient (`pairs.mode='patient'`); the head predicts
which of the two is later and |dt| in years. Flips are fine, crops mild:
progression shows in the whole image. Then fine-tune or probe the encoder
like any other (`--config.job=finetune --config.finetune.pretrained=...`).
Measured: only on synthetic data so far (tests/test_longitudinal.py: order
accuracy >= 0.8 and the interval error halved in 120 tiny steps).
"""
from configs import base


def get_config(arg: str = "scans.csv"):
  c = base.get_config()
  c.job = "pretrain"
  c.data.name = f"csv:{arg}"
  c.model = dict(name="resnet18", width_multiplier=1.0, conv_impl="auto",
                 norm_impl="auto")
  c.objective = dict(name="longitudinal", time_column="study_date",
                     interval_scale=365.0, order_weight=1.0,
                     interval_weight=1.0)
  c.pairs.mode = "patient"
  c.augment = base.augment_config("medical_safe")
  c.online_probe = False
  c.train.steps = 2000
  c.train.batch_size = 128
  c.optim = base.optim_config("adamw", 1e-3, weight_decay=1e-4)
  return c
