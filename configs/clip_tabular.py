"""Image-tabular contrastive pretraining: ContIG (Taleb et al., CVPR 2022,
"ContIG: Self-supervised Multimodal Contrastive Learning for Medical Imaging
with Genetics"), images against each patient's other data, here the CSV's
metadata columns, with CLIP's symmetric loss (Radford et al., ICML 2021).

Run (a folder of images + a CSV with path, label and the tabular columns;
patient_id and split optional, data_pipelines/folder.py):
  python run.py --config=configs/clip_tabular.py:/data/fundus/labels.csv \
      --workdir=workdirs/clip_tabular
  more columns: --config.objective.numeric_columns="('age','bmi')" \
      --config.data.options.numeric_columns=bmi   (and categorical_columns /
      data.options.text_columns for categories such as smoker=yes/no)
Arg: the CSV. `age` and `sex` are metadata the source always reads; other
columns must be named in data.options too. Numbers are standardised and
categories coded with the training split's statistics (written to
`pretrain/vocab.json`); an empty cell is a bad row unless
data.options.allow_missing_metadata lists the column (then: the train mean,
or the 'missing' category). `finetune/` probes and fine-tunes the image
encoder at 1 / 10 / 100 % of the labels against the same network from
scratch.

Budget: the benchmark's CPU network (ResNet-18 x1/8, 28 px), 300 steps x
128, a 2-layer MLP of width 256 on the columns.
Measured: not yet on real data. On generated images whose columns are
written from their label and blob size (tests/test_multimodal.py; the
mechanics, not clinical value) a tiny version raises held-out
image->row retrieval well above chance.
"""
from configs import base


def get_config(arg: str = "labels.csv"):
  c = base.get_config()
  c.job = "pretrain_finetune"
  # A bare path, or 'csv:<path>' as the benchmark job passes data names.
  c.data.name = arg if arg.startswith("csv:") else f"csv:{arg}"
  c.model = dict(name="resnet18", width_multiplier=0.125,
                 stage_sizes=(2, 2, 2, 2))
  c.objective = dict(name="clip_tabular", numeric_columns=("age",),
                     categorical_columns=("sex",), category_embed_dim=8,
                     tabular_hidden_dim=256, tabular_layers=2,
                     proj_hidden_dim=256, proj_dim=128, proj_layers=2,
                     temperature=0.1, learn_temperature=True,
                     max_logit_scale=100.0, image_weight=0.5)
  c.augment = base.augment_config("medical_safe")
  c.train.steps = 300
  c.train.batch_size = 128
  c.train.log_every = 25
  c.train.checkpoint_every = 100
  c.optim = base.optim_config("adamw", 1e-3, weight_decay=1e-4,
                              warmup_steps=30)
  ft = c.finetune
  ft.protocols = ("linear", "finetune", "scratch")
  ft.steps = 100
  ft.eval_every = 20
  ft.log_every = 20
  return c
