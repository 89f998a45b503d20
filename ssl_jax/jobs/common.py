"""What every job does first: check the config, record it, open the data."""
from __future__ import annotations

import json
import os
from typing import Iterable

import ml_collections

import data_pipelines
from data_pipelines import pairs
from ssl_jax import augment, files, models, objectives, views
from ssl_jax.evaluation import classifier, metrics, monitor
from ssl_jax.evaluation.protocols import PROTOCOLS
from ssl_jax.jobs import method_configs
from ssl_jax.objectives import supervised
from ssl_jax.objectives.base import view_policy
from ssl_jax.train import metrics_writer, optim


def check_name(field: str, value: str, allowed: Iterable[str]) -> None:
  allowed = sorted(allowed)
  if value not in allowed:
    raise ValueError(f"config.{field}={value!r} is unknown; allowed: "
                     f"{', '.join(allowed)}")


COMPUTE_DTYPES = ("bfloat16", "float32")


def vit_patch_size(config: ml_collections.ConfigDict) -> int | None:
  """The ViT patch size a config builds (models/vit.py's default: 4 px up
  to 64 px images, else 16), or None for non-ViT backbones."""
  if not config.model.name.startswith("vit"):
    return None
  return config.model.get("patch_size") or (4 if config.data.size <= 64 else 16)


def check_fit(config: ml_collections.ConfigDict) -> None:
  """Numbers that must fit each other (no data, no TF, no compile needed)."""
  train = config.train
  check_name("train.compute_dtype", train.get("compute_dtype", "float32"),
             COMPUTE_DTYPES)
  accum = train.get("grad_accum_steps", 1)
  if accum < 1:
    raise ValueError(f"config.train.grad_accum_steps must be >= 1, got {accum}")
  if train.batch_size % accum:
    raise ValueError(f"config.train.batch_size={train.batch_size} is not "
                     f"divisible by config.train.grad_accum_steps={accum}")
  patch, size = vit_patch_size(config), config.data.size
  if patch is not None and size % patch:
    allowed = [p for p in range(1, size + 1) if size % p == 0]
    raise ValueError(f"config.data.size={size} is not divisible by "
                     f"config.model.patch_size={patch}; allowed patch sizes "
                     f"for {size} px: {', '.join(map(str, allowed))}")
  model_axis = config.get("mesh", {}).get("model_axis_size", 1)
  if model_axis < 1:
    raise ValueError(f"config.mesh.model_axis_size must be >= 1, got {model_axis}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Fails before anything compiles, naming the field and allowed values."""
  check_dataset_name(config.data.name)
  check_name("model.name", config.model.name, models.names())
  import_objective_module(config)
  check_name("objective.name", config.objective.name, objectives.names())
  check_name("augment.policy", config.augment.policy, augment.names())
  check_name("optim.name", config.optim.name, optim.OPTIMIZERS.names())
  ft = config.finetune
  check_name("finetune.augment.policy", ft.augment.policy, augment.names())
  check_name("finetune.optim.name", ft.optim.name, optim.OPTIMIZERS.names())
  for protocol in ft.protocols:
    check_name("finetune.protocols", protocol, PROTOCOLS.names())
  check_name("finetune.last_batch", ft.get("last_batch", "carry"),
             classifier.LAST_BATCH)
  classifier.layer_decay(ft)  # each refuses a factor out of its range
  classifier.weight_average_decay(ft)
  check_test_time_flips(config)
  supervised.target_regularizers(ft, field="finetune")
  if not tuple(ft.fractions):
    raise ValueError("config.finetune.fractions is empty: nothing would be "
                     "trained or evaluated; give at least one label fraction "
                     "in (0, 1], e.g. --config.finetune.fractions=\"(1.0,)\"")
  for name in ("protocols", "seeds"):
    if not tuple(ft[name]):
      raise ValueError(f"config.finetune.{name} is empty: nothing would be "
                       "evaluated; give at least one")
  for fraction in ft.fractions:
    if not 0.0 < fraction <= 1.0:
      raise ValueError(f"config.finetune.fractions has {fraction}; each "
                       "fraction must be in (0, 1]")
  for field in ("train.steps", "train.batch_size", "finetune.steps",
                "finetune.batch_size"):
    section, key = field.split(".")
    if config[section][key] <= 0:
      raise ValueError(f"config.{field} must be positive, got "
                       f"{config[section][key]}")
  optim.check(config.optim, config.train.steps)
  check_stage2_length(ft)
  if ft.get("epochs", 0):
    optim.check(ft.optim, ft.min_steps, "finetune.optim", "finetune.min_steps")
  else:
    optim.check(ft.optim, ft.steps, "finetune.optim", "finetune.steps")
  check_encoder(config)
  check_objective(config)
  check_fit(config)
  check_pairs(config)
  check_monitor(config)


def check_test_time_flips(config: ml_collections.ConfigDict) -> None:
  """`finetune.test_time_flips` needs a fine-tuning view policy that
  mirrors: its test-time views are the flips the model trains with."""
  ft = config.finetune
  if not classifier.test_time_flips(ft):
    return
  dims = getattr(data_info(config), "spatial_dims", 2)
  policy = view_policy(ft.augment, dims)
  if not views.flip_axes(policy, dims):
    raise ValueError(
        "config.finetune.test_time_flips=True averages over the flips the "
        f"fine-tuning views train with, but finetune.augment.policy="
        f"{ft.augment.policy!r} (with its overrides) flips no axis; set a "
        "flip probability (e.g. --config.finetune.augment.overrides."
        "hflip_prob=0.5) or test_time_flips=False")


def check_monitor(config: ml_collections.ConfigDict) -> None:
  """`train.monitor_*` (evaluation/monitor.py): a period >= 0, known
  protocols, and, when on, a labelled dataset with a val split to score."""
  train = config.train
  every = train.get("monitor_every", 0)
  if every < 0:
    raise ValueError(f"config.train.monitor_every must be >= 0 (0 = off), "
                     f"got {every}")
  protocols = train.get("monitor_protocols", ())
  if isinstance(protocols, str):
    raise ValueError(f"config.train.monitor_protocols={protocols!r} must be a "
                     f"tuple of names, e.g. ({protocols!r},)")
  protocols = tuple(protocols)
  for protocol in protocols:
    check_name("train.monitor_protocols", protocol, monitor.PROTOCOLS.names())
  if not every:
    return
  if not protocols:
    raise ValueError("config.train.monitor_protocols is empty but "
                     f"train.monitor_every={every}: give at least one of "
                     f"{', '.join(monitor.PROTOCOLS.names())}, or set "
                     "train.monitor_every=0")
  if train.monitor_max_train < 1:
    raise ValueError(f"config.train.monitor_max_train must be >= 1, got "
                     f"{train.monitor_max_train}")
  if "linear" in protocols and not train.monitor_linear_l2 > 0:
    raise ValueError(f"config.train.monitor_linear_l2 must be > 0, got "
                     f"{train.monitor_linear_l2}")
  info = data_info(config)
  if info.num_classes < 1:
    raise ValueError(
        f"config.train.monitor_every={every} needs labels, but "
        f"config.data.name={config.data.name!r} has none ({info.task}): "
        "set train.monitor_every=0 (or monitor on a labelled dataset)")
  if info.num_examples and not info.num_examples.get("val"):
    raise ValueError(
        f"config.train.monitor_every={every} scores the val split, but "
        f"config.data.name={config.data.name!r} has no val images: set "
        "train.monitor_every=0")


def check_stage2_length(ft: ml_collections.ConfigDict) -> None:
  """Epoch-based stage 2 needs positive epochs, interval and floor."""
  if ft.get("epochs", 0) < 0:
    raise ValueError(f"config.finetune.epochs={ft.epochs}; expected >= 0 "
                     "(0 = run finetune.steps)")
  if ft.get("epochs", 0):
    for key in ("eval_every_epochs", "min_steps"):
      if not ft[key] > 0:
        raise ValueError(f"config.finetune.{key}={ft[key]}; expected > 0 "
                         "with finetune.epochs set")
  if ft.get("class_weights", "none") not in ("none", "balanced"):
    raise ValueError(f"config.finetune.class_weights={ft.class_weights!r}; "
                     "allowed: none, balanced")
  rules = tuple(metrics.THRESHOLD_RULES)
  if ft.get("decision_threshold", "medmnist") not in rules:
    raise ValueError(f"config.finetune.decision_threshold={ft.decision_threshold!r}; "
                     f"allowed: {', '.join(rules)}")


def objective_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The configured objective, or the parts of a combined objective."""
  return tuple(config.objective.get("parts", ())) or (config.objective.name,)


def check_encoder(config: ml_collections.ConfigDict) -> None:
  """Each objective declares the backbone it needs (`Objective.encoder`):
  refuse a misfit before anything is built or written."""
  backbone = config.model.name
  for name in objective_names(config):
    if name not in objectives.names():
      continue  # the combined objective names an unknown part itself
    need = objectives.get(name).encoder
    if not objectives.base.fits(need, backbone):
      same_rank = objectives.base.backbone_kind(backbone) & {"3d"}
      fitting = [m for m in models.names() if objectives.base.fits(need, m)
                 and objectives.base.backbone_kind(m) & {"3d"} == same_rank]
      kind = {"vit": "a ViT"}[need]
      raise ValueError(
          f"{name} needs {kind} encoder; got config.model.name="
          f"{backbone!r}. Use one of: {', '.join(fitting)} (or start from "
          f"configs/{name}.py, which sets a fitting model)")


def import_objective_module(config: ml_collections.ConfigDict) -> None:
  """An out-of-tree objective (`objective.module`) registers on import."""
  objectives.base.import_module(config.objective.get("module", ""))


def check_objective(config: ml_collections.ConfigDict) -> None:
  """The objective block sets only hyperparameters the objective declares,
  its loss builder accepts them, and no mask hides more of a view than the
  view policy's `min_visible`."""
  try:
    bound = objectives.bind(config, data_info(config))
  except objectives.base.UndeclaredHParam as e:
    name = config.objective.name
    hint = (f"; start from configs/{name}.py, or set the whole block in a "
            "config file" if method_configs.exists(name) else "")
    raise ValueError(f"{e}{hint}") from None
  bound.make_loss()
  check_min_visible(bound)


def check_min_visible(bound: objectives.Bound, field: str = "objective",
                      augment_field: str = "augment") -> None:
  """Fails, naming both fields, when a mask would leave less of a view
  visible than the policy allows; parts are checked with their own policy."""
  for part in bound.objective.parts(bound.hp, bound.ctx):
    check_min_visible(part.bound, f"objective.{part.name}", part.augment_field)
  floor = bound.ctx.policy.min_visible
  for key, value, visible in bound.objective.visible(bound.hp):
    if visible < floor - 1e-9:
      raise ValueError(
          f"config.{field}.{key}={value} leaves {visible:.0%} visible, "
          f"below {augment_field}.min_visible={floor}; mask less or set "
          f"{augment_field}.overrides.min_visible")


def pair_consumers(config: ml_collections.ConfigDict) -> list[str]:
  """The configured objectives that read partner images (`uses_pairs`): the
  objective itself, or the parts of a combined objective."""
  return [n for n in objective_names(config) if n in objectives.names()
          and objectives.get(n).uses_pairs]


def check_pairs(config: ml_collections.ConfigDict) -> None:
  """`pairs.mode` is registered, and something reads the pairs it makes."""
  cfg = config.get("pairs", {})
  mode = cfg.get("mode", "views")
  check_name("pairs.mode", mode, pairs.names())
  if mode != "views" and not pair_consumers(config):
    users = [n for n in objectives.names() if objectives.get(n).uses_pairs]
    raise ValueError(
        f"config.pairs.mode={mode!r} needs an objective that consumes "
        f"positive pairs, but config.objective.name="
        f"{config.objective.name!r} does not; use pairs.mode='views' or "
        f"one of: {', '.join(users)}")
  for field in ("max_age_gap", "series_max_gap"):
    if cfg.get(field, 0) < 0:
      raise ValueError(f"config.pairs.{field} must be >= 0, got {cfg[field]}")


def check_dataset_name(name: str) -> None:
  """A registered dataset, or `<kind>:<spec>` with a known kind."""
  prefixed = data_pipelines.split_kind(name)
  if prefixed is None:
    if name not in data_pipelines.names():
      raise ValueError(
          f"config.data.name={name!r} is unknown; allowed: "
          f"{', '.join(data_pipelines.names())}; or your own data with a "
          "prefix: csv:<file.csv> (images listed in a CSV), tfds:<name> "
          "(TensorFlow Datasets), pool:<a>+<b> (unlabelled union)")
  elif prefixed[0] not in data_pipelines.KINDS:
    raise ValueError(f"config.data.name={name!r} has unknown kind "
                     f"{prefixed[0]!r}; allowed: "
                     f"{', '.join(data_pipelines.KINDS.names())}")


def as_dict(value) -> dict:
  """A ConfigDict (or mapping, or None) as a plain dict."""
  if value is None:
    return {}
  return value.to_dict() if hasattr(value, "to_dict") else dict(value)


def data_options(config: ml_collections.ConfigDict) -> dict:
  """The set fields of config.data.options as a plain dict ({} when none):
  every option is declared (configs/base.py), None means unset."""
  options = config.data.get("options", None) or {}
  options = options.to_dict() if hasattr(options, "to_dict") else dict(options)
  return {k: v for k, v in options.items() if v is not None}


def data_info(config: ml_collections.ConfigDict):
  return data_pipelines.info(config.data.name, config.data.size,
                             options=data_options(config))


def load_split(config: ml_collections.ConfigDict, split: str):
  return data_pipelines.load(config.data.name, split, size=config.data.size,
                             data_dir=config.data.data_dir or None,
                             options=data_options(config))


def load_metadata(config: ml_collections.ConfigDict, split: str) -> dict:
  """Per-row metadata aligned with `load_split` ({} for MedMNIST)."""
  return data_pipelines.metadata(config.data.name, split,
                                 size=config.data.size,
                                 data_dir=config.data.data_dir or None,
                                 options=data_options(config))


def patient_groups(config: ml_collections.ConfigDict):
  """The train split's patient ids, or None when the source has none (then
  label fractions are drawn per image)."""
  return load_metadata(config, "train").get("patient_id")


def write_data_report(config: ml_collections.ConfigDict, workdir: str) -> None:
  """data_report.json: images (and labels) per split, and for sources that
  read files (CSV) rows read/skipped with reasons and patients per split.
  What was skipped or converted is also said on the console."""
  report = data_pipelines.report(config.data.name, size=config.data.size,
                                 data_dir=config.data.data_dir or None,
                                 options=data_options(config))
  path = os.path.join(workdir, "data_report.json")
  data_pipelines.write_data_report(path, report)
  for line in class_table(report) + report_lines(report, path):
    print(line, flush=True)


def class_table(report: dict) -> list[str]:
  """The classes at load: name, rows (CSV sources) and labels per split,
  so a typo'd class ('benign?') is seen before training."""
  counts = {s: e["label_counts"] for s, e in report.get("splits", {}).items()
            if e.get("label_counts")}
  if not counts:
    return []
  classes = list(next(iter(counts.values())))
  rows = report.get("class_rows") or {}
  columns = (["rows"] if rows else []) + list(counts)
  width = max(len(str(c)) for c in classes + ["class"])
  found = f" (from {report['classes_from']})" if "classes_from" in report else ""
  lines = [f"data: {len(classes)} classes in {report.get('source')}{found}; "
           "labels per split:",
           f"data:   {'class':<{width}} " + " ".join(f"{c:>6}" for c in columns)]
  for name in classes:
    cells = ([rows.get(name, 0)] if rows else []) + [
        counts[s].get(name, 0) for s in counts]
    lines.append(f"data:   {name:<{width}} " +
                 " ".join(f"{c:>6}" for c in cells))
  return lines


def report_lines(report: dict, path: str) -> list[str]:
  """The console summary of a data report: skipped rows by reason,
  conversions and warnings (empty when there is nothing to say)."""
  lines = []
  skipped = report.get("skipped", {})
  if skipped.get("count"):
    reasons = ", ".join(f"{k} {v}" for k, v in skipped["by_reason"].items())
    lines.append(f"data: skipped {skipped['count']} CSV row(s) ({reasons}); "
                 f"rows and reasons in {path}")
  rows = report.get("converted_rows") or {}
  for conversion, count in (report.get("converted") or {}).items():
    if count:
      shown = rows.get(conversion, [])
      where = (f"CSV row(s) {', '.join(map(str, shown[:5]))}"
               f"{', ...' if len(shown) > 5 else ''}; " if shown else "")
      lines.append(
          f"data: converted {count} image(s) {conversion} ({where}"
          f"{report.get('channels')} channel(s) from "
          f"{report.get('channels_from', 'the source')}; counted in {path})")
  for warning in report.get("warnings", ()):
    lines.append(f"data: warning: {warning}")
  return lines


def check_classes(config: ml_collections.ConfigDict, task: str) -> None:
  """Every split of a labelled single-label set has >= 2 classes: training
  a classifier and AUROC need them. Checked at load, naming the data and
  the split, not minutes later in evaluation."""
  if task in ("unlabeled", "multi-label, binary-class"):
    return
  import numpy as np  # noqa: PLC0415
  for split in ("train", "val", "test"):
    _, labels = load_split(config, split)
    present = sorted(set(np.asarray(labels).reshape(-1).tolist()) - {-1})
    if len(present) < 2:
      raise ValueError(
          f"data {config.data.name!r}, split {split!r}: "
          f"{len(labels)} rows with {len(present)} class(es) {present}; "
          "fine-tuning and AUROC need >= 2 classes in every split. Check the "
          "label column (options.classes), or the split column / "
          "split_fractions")


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """The exact config a job ran with, so later jobs can rebuild its model."""
  files.write_text_atomic(os.path.join(workdir, "config.json"),
                          config.to_json_best_effort(indent=2))


def as_saved(section: ml_collections.ConfigDict) -> dict:
  """`section` as config.json stores it (tuples become lists), so a
  config read back from a workdir compares equal to the one it came from."""
  return json.loads(section.to_json_best_effort())


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} is missing: config.finetune.pretrained must name the workdir "
        "of a finished pretraining job")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def last_metrics(workdir: str) -> dict[str, float]:
  """The last logged step of the job's metrics.jsonl, its rows merged (a
  monitored step has a train/ and a val/ row); empty if none was logged."""
  rows = metrics_writer.read_rows(workdir)
  if not rows:
    return {}
  last = rows[-1]["step"]
  return {k: v for row in rows if row["step"] == last for k, v in row.items()}
