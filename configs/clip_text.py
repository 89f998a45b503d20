"""Image-report contrastive pretraining, then zero-shot classification from
class prompts: ConVIRT (Zhang et al., MLHC 2022, "Contrastive Learning of
Medical Visual Representations from Paired Images and Text") with CLIP's
learned temperature and prompts (Radford et al., ICML 2021).

Run (a folder of images + a CSV with path, label and a free-text `report`
column; patient_id and split optional, data_pipelines/folder.py):
  python run.py --config=configs/clip_text.py:/data/cxr/reports.csv \
      --workdir=workdirs/clip_text
  ... --config.finetune.class_prompts="('no finding','pneumonia')"
Arg: the CSV. `pretrain/` learns an image encoder and a report transformer
whose embeddings agree for an image and its own report (symmetric InfoNCE
over the batch); the word vocabulary is fitted on the training reports only
and written to `pretrain/vocab.json`. `finetune/` then scores zero-shot
classification (one prompt per class, default the class names, embedded by
the report tower: no label is trained on), a linear probe and end-to-end
fine-tuning at 1 / 10 / 100 % of the labels against the same network from
scratch.

Budget: the benchmark's CPU network (ResNet-18 x1/8, 28 px), 300 steps x
128, a 2-block report transformer of width 128 over <= 64 words.
Measured: not yet on real reports. On generated images whose reports are
written from their label and blob size (tests/test_multimodal.py; the
mechanics, not clinical value) a tiny version raises held-out image->report
retrieval well above chance and zero-shot test AUROC well above 0.5.
"""
from configs import clip_tabular


def get_config(arg: str = "reports.csv"):
  """clip_tabular's data, network and schedule; the report instead of the
  row's numbers as the image's partner, and zero-shot first in stage 2."""
  c = clip_tabular.get_config(arg)
  c.data.options.text_columns = ("report",)
  c.objective = dict(name="clip_text", text_column="report", vocab_size=2000,
                     min_word_count=1, max_length=64, text_width=128,
                     text_depth=2, text_heads=4, text_mlp_dim=512,
                     text_pool="mean", proj_hidden_dim=256, proj_dim=128,
                     proj_layers=2, temperature=0.07, learn_temperature=True,
                     max_logit_scale=100.0, image_weight=0.5)
  c.finetune.protocols = ("zero_shot",) + tuple(c.finetune.protocols)
  return c
