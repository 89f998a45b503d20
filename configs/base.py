"""Shared defaults for every job; method configs start from `get_config()`.

Every number a run depends on lives here or in the method config, and can be
overridden on the command line: `--config.train.steps=500`.
"""
import ml_collections
from ml_collections.config_dict import placeholder

DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)


def augment_config(policy: str = "medical_safe") -> ml_collections.ConfigDict:
  """A named view policy (ssl_jax/augment.py); overrides left None keep the
  preset's value, e.g. `--config.augment.policy=xray_safe
  --config.augment.overrides.hflip_prob=0.0`.

  Presets: medical_safe (default), xray_safe, histology, fundus, ct_window,
  dermatology, simclr (natural-image baseline), none. Each preset's
  `description` says what it avoids and why; `augment.describe(policy,
  overrides)` gives the resolved fields for results. `min_visible` is the
  fraction of a view every mask must leave visible (MAE, SimMIM,
  restoration painting); jobs reject an `objective` that hides more.
  """
  return ml_collections.ConfigDict({
      "policy": policy,
      "overrides": {
          "crop_min_area": placeholder(float),
          "hflip_prob": placeholder(float),
          "vflip_prob": placeholder(float),
          "rot90": placeholder(bool),
          "brightness": placeholder(float),
          "contrast": placeholder(float),
          "saturation": placeholder(float),
          "hue": placeholder(float),
          "blur_prob": placeholder(float),
          "hed_sigma": placeholder(float),
          "hed_bias": placeholder(float),
          "window_center_jitter": placeholder(float),
          "window_width_jitter": placeholder(float),
          "min_visible": placeholder(float),
      },
  })


def data_options() -> ml_collections.ConfigDict:
  """Every option of every `kind:` source, declared so dotted overrides work
  (`--config.data.options.on_bad_row=skip`,
  `--config.data.options.classes="('benign','malignant')"`). None keeps the
  source's default; a set field the dataset's kind lacks is refused, naming
  it. Config files set fields: `c.data.options.window = (127.5, 255.0)`."""
  import data_pipelines  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(
      {field: placeholder(type_)
       for field, type_ in sorted(data_pipelines.option_types().items())})


def dataset_and_backbone(arg: str) -> tuple[str, str]:
  """Splits a config arg 'dataset' or 'dataset,vit' (empty backbone = ResNet)."""
  dataset, _, backbone = (arg or "breastmnist").partition(",")
  if backbone not in ("", "vit"):
    raise ValueError(f"backbone {backbone!r} in the config arg; allowed: vit")
  return dataset, backbone


def optim_config(name: str, lr: float, *, weight_decay: float,
                 scale_by_batch: bool = False, warmup_steps: int = 100,
                 final_lr_fraction: float = 0.0, grad_clip_norm: float = 0.0,
                 schedule: str = "cosine", decay_at: tuple = (0.5, 0.75),
                 decay_factor: float = 0.1, sam_rho: float = 0.0,
                 **extra) -> dict:
  """An optimizer block for ssl_jax/train/optim.py: warmup, then `schedule`
  cosine (to `final_lr_fraction` of the peak) or step (x `decay_factor` at
  each fraction of the run in `decay_at`); `lr` is scaled by batch/256 when
  `scale_by_batch`. `sam_rho` > 0: sharpness-aware gradients of that radius
  (ssl_jax/train/step.py; two gradients a step). `extra` holds
  optimizer-specific fields (b1, b2, momentum)."""
  return dict(name=name, lr=lr, weight_decay=weight_decay,
              scale_by_batch=scale_by_batch, warmup_steps=warmup_steps,
              final_lr_fraction=final_lr_fraction,
              grad_clip_norm=grad_clip_norm, schedule=schedule,
              decay_at=decay_at, decay_factor=decay_factor, sam_rho=sam_rho,
              **extra)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = "pretrain"  # pretrain | finetune | pretrain_finetune
  c.seed = 0
  # data_dir '' -> $SSL_JAX_DATA_DIR -> user cache dir (downloads with md5).
  # `options`: fields of a prefixed source kind, all None (unset) for
  # MedMNIST names: "csv:<file.csv>" (data_pipelines/folder.py: classes,
  # channels, window, on_bad_row, split_fractions, split_seed, ...),
  # "tfds:<name>" (tfds_source.py: image_key, label_key, splits),
  # "pool:<a>+<b>" (pool.py: unlabelled union for pretraining; set
  # online_probe=False). Every field is declared (data_options()).
  c.data = dict(name="breastmnist", size=28, data_dir="",
                options=data_options())
  # Positive pairs of the contrastive methods (data_pipelines/pairs.py):
  # 'views' = two augmentations of one image (default); 'patient', 'study',
  # 'series' = the second view comes from another image sharing that id;
  # 'metadata' = another patient of the same sex, age within max_age_gap.
  c.pairs = dict(mode="views", max_age_gap=5.0, series_max_gap=1)
  # Start the encoder from existing weights before SSL (when there is no
  # checkpoint to resume) or fine-tuning without `finetune.pretrained`
  # (ssl_jax/train/init_from.py). path '' = random init; format auto | npz |
  # msgpack | orbax; preset '' | torchvision_resnet | timm_vit (a named
  # rename list + its layout); rename: ((regex, replacement), ...) applied
  # after the preset, '' drops a key; layout auto | flax | torch (auto: the
  # preset's, else flax); strict: fail on any missing / unexpected /
  # mismatched key; channels: RGB stem -> 1 channel by sum (keeps the
  # response to a gray image) | mean | first | none.
  c.init_from = dict(path="", format="auto", preset="", rename=(),
                     layout="auto", strict=False, channels="sum")
  # Fields other than `name` are passed to the backbone factory. ResNets:
  # conv_impl auto | xla | matmul_1x1 | cpu | onednn, norm_impl auto | xla |
  # matmul: how convs and BatchNorm are computed, same params
  # (ssl_jax/models/layers.py; 'auto' = oneDNN convs on CPU when installed);
  # stage_strides: each stage's first stride, default (1, 2, 2, 2).
  c.model = dict(name="resnet18", width_multiplier=1.0, conv_impl="auto",
                 norm_impl="auto")
  c.objective = dict(name="simclr", temperature=0.1, proj_hidden_dim=512,
                     proj_dim=128, proj_layers=2)
  c.augment = augment_config("medical_safe")
  # A linear head on stop-gradient features, trained during pretraining on
  # the batch's labels: logs probe_acc so collapse shows up early.
  c.online_probe = True
  # num_devices 0 = every visible device. The mesh is (data, model):
  # model_axis_size devices along `model`, the rest along `data`. `rules`
  # shard state leaves over it: ((path regex, partition spec), ...), first
  # match wins, e.g. ((r"fc1/kernel$", (None, "model")),); the rest is
  # replicated (see ssl_jax/parallel.py).
  c.mesh = dict(num_devices=0, model_axis_size=1, rules=())
  c.train = dict(
      steps=1000, batch_size=256, log_every=10, checkpoint_every=200,
      progress=True,
      # Micro-batches per step (scan inside the jitted step, grads averaged).
      # Batch-coupled losses and BatchNorm then see only batch_size / k
      # examples: see ssl_jax/train/step.py.
      grad_accum_steps=1,
      # Backbone compute dtype: float32 | bfloat16. Params, optimizer state
      # and losses stay float32 either way.
      compute_dtype="float32",
      prefetch=2,       # batches in flight to the devices ahead of the step
      check_every=1,    # NaN/inf check of loss and grad_norm every N steps
      # Finite but exploding: stop (as on NaN) when the loss exceeds
      # loss_factor x max(|first checked loss|, 1), or grad_norm exceeds
      # max_grad_norm; 0 turns a check off.
      divergence=dict(loss_factor=1e4, max_grad_norm=0.0),
      # Frozen-feature quality while pretraining (ssl_jax/evaluation/
      # monitor.py): every monitor_every steps (0 = off) and at the end, the
      # online encoder's frozen features are scored on the val split by each
      # of monitor_protocols: knn (finetune.knn_k, knn_temperature) | linear
      # (logistic regression on standardised features, L2 fixed at
      # monitor_linear_l2, not tuned). Probes fit on at most
      # monitor_max_train train images (a seeded stratified subset). Logged
      # as val/<protocol>_auroc; the curve goes to pretrain_summary.json and
      # monitor.png.
      monitor_every=0, monitor_protocols=("knn",), monitor_max_train=10000,
      monitor_linear_l2=1e-3,
  )
  # Multi-host: jax.distributed.initialize() before anything touches
  # devices, when coordinator_address ('host:port') is set or initialize=True
  # (clusters JAX auto-detects). Unset fields fall back to env vars
  # (JAX_COORDINATOR_ADDRESS, SSL_JAX_NUM_PROCESSES, SSL_JAX_PROCESS_ID).
  c.distributed = dict(initialize=False, coordinator_address="",
                       num_processes=0, process_id=-1,
                       cpu_collectives="gloo", timeout_s=300)
  c.optim = optim_config("lars", 0.3, weight_decay=1e-6, scale_by_batch=True)

  # Stage 2. `pretrained` names a pretraining workdir; empty inside a
  # pretrain_finetune job (it uses its own), required for job=finetune.
  # End-to-end runs last `steps` (validation every `eval_every`), or with
  # `epochs` > 0 that many passes over the labelled subset (at least
  # `min_steps`; validation every `eval_every_epochs`); the step with the
  # best val AUROC (ties: lower val loss) is kept; `select_by`: val_auroc
  # | val_loss (lowest; ties: higher AUROC) | last (the final evaluation,
  # no choice on validation) | val_auroc_smoothed (the best mean val AUROC
  # over an evaluation and its neighbours, one before and one after).
  # `select_from`:
  # warmup_end (candidates from the end of optim's warmup on) | first_eval
  # (every evaluation; at 1 % of the labels, validated every step, that kept
  # steps 2-8, a barely moved zero head: docs/results.md "Pretraining
  # ten times longer"). `class_weights`:
  # none | balanced (loss weights n / (C * count), single-label tasks).
  # `decision_threshold`: where ACC, F1, sensitivity and specificity cut
  # the scores (AUROC never depends on it; argmax tasks ignore it):
  # val_prior (the cut-off at which validation predicts as many positives
  # as it holds, per label for multi-label; test only applies it) |
  # medmnist (0.5, as the published tables) | val_balanced (the cut-off
  # with the best balanced accuracy on validation). val_prior is the
  # default: on the benchmark sweep's end-to-end cells (4 methods x 3 seeds,
  # paired against 0.5) it took the 9 of 12 cells at 1 % that predicted
  # one class off it and raised balanced ACC by +0.06 at 1 % and 10 %
  # (beyond seed noise), +0.01 at 100 %; val_balanced, chosen by a search
  # over 78 validation images, cost more than it gave (docs/results.md "Quick runs").
  # `last_batch`: carry (batches run across epoch boundaries, every step
  # full) | keep (each epoch batched on its own, ending with its short
  # batch: PyTorch's DataLoader, as the MedMNIST recipe trains).
  # The protocol fields after `augment` (bootstrap CI, logreg, last_k,
  # early_layer) were once filled in by the finetune job; config.json files
  # written then lack them, which is harmless: stage 2 reads them from the
  # config it runs with, never from a pretraining workdir's config.json.
  c.finetune = dict(
      pretrained="",
      protocols=("linear", "knn", "finetune", "scratch"),
      fractions=DEFAULT_FRACTIONS,
      seeds=(0,),
      steps=300, batch_size=64, eval_every=50, log_every=25,
      epochs=0, eval_every_epochs=1.0, min_steps=100, class_weights="none",
      select_from="warmup_end", select_by="val_auroc",
      decision_threshold="val_prior",
      last_batch="carry",
      head_init="zeros",  # the classifier head: zeros | torch_default
      # none | linear_probe: a pretrained encoder's head starts as a linear
      # probe on its frozen features (LP-FT), the probe a step-0 candidate;
      # from-scratch cells keep head_init.
      head_fit="none",
      eval_batch_size=256,
      knn_k=20, knn_temperature=0.07,
      linear_weight_decays=(0.0, 1e-4, 1e-3, 1e-2),
      optim=optim_config("adamw", 1e-3, weight_decay=1e-4, warmup_steps=20),
      augment=augment_config("medical_safe"),
      # End-to-end runs (finetune, scratch, last_k) draw init, batch order
      # and augmentation from the cell's seed + this offset; the label
      # subset keeps the cell's seed. Workdirs that differ only here train
      # on the same images: members of an ensemble, or the training
      # seed's share of the spread.
      training_seed_offset=0,
      # Each cell's val/test probabilities and labels beside its JSON
      # (cells/<method>/<cell>.npz): ensembles (`python -m
      # ssl_jax.jobs.ensemble`), paired tests and calibration need them.
      save_predictions=True,
      # Cells run side by side; 0 = auto: 2 on a one-process CPU run, whose
      # small stage-2 steps use two cores poorly, else 1. On CPU each runs
      # in a worker process pinned to its share of the cores (its numbers
      # then differ from a one-at-a-time run's in the last digits, the
      # reduction order of fewer threads; each cell records its `cores`).
      cells_at_once=0,
      bootstrap_samples=200,   # test-set resamples for the AUROC CI (0: none)
      ci_level=0.95,           # coverage of that percentile bootstrap CI
      logreg_l2s=(1e-4, 1e-3, 1e-2, 1e-1, 1.0),  # `logreg`: L2 swept on val
      logreg_max_iters=500,    # `logreg`: L-BFGS iteration cap
      logreg_tol=1e-5,         # `logreg`: gradient norm at convergence
      logreg_memory=10,        # `logreg`: L-BFGS history length
      last_k=1,                # `last_k`: ResNet stages / ViT blocks trained
      distill_temperature=1.0,  # `distill`: divides teacher's and student's logits
      distill_rounds=1,         # `distill`: students in turn, each teaching the next
      distill_teacher="finetune",  # `distill`: the first teacher's protocol ('fixmatch')
      distill_teachers=1,       # `distill`: first-teacher runs (own seeds), averaged
      # `distill` (the finetune job): further pretraining workdirs of the
      # same model, each of whose encoders trains the teacher too (same
      # subset and seed); their probabilities join the average. With
      # distill_rounds > 1 each encoder trains its own students, and the
      # last student learns from theirs averaged.
      distill_teacher_pretrained=(),
      # `distill`: the students' targets, 'fixed' (the teacher's
      # probabilities on each image, computed once) or 'function_matching'
      # (the teacher networks run on each student view, mixup included:
      # Beyer et al., CVPR 2022); the students' epochs (0 = stage 2's);
      # where each student starts ('encoder': the pretrained encoder and a
      # fresh head; 'teacher': its one teacher network's selected weights).
      distill_targets="fixed", distill_epochs=0.0,
      distill_student_init="encoder",
      # `fixmatch`: the weak view's top probability that makes a pseudo-label,
      # the unlabelled term's weight, the strong view's augment preset; how
      # the bar is set ('fixed': that threshold; 'self_adaptive': FreeMatch's
      # per-class bars from moving averages of the model's confidence, with
      # this momentum per step); ReMixMatch's distribution alignment of the
      # weak view's probabilities before they name a pseudo-label ('none',
      # 'class_prior': the labelled subset's class proportions, 'uniform'), its
      # running mean prediction with this momentum (0.99 ~ ReMixMatch's
      # 128 batches).
      fixmatch_threshold=0.95, fixmatch_weight=1.0,
      fixmatch_strong_policy="simclr",
      fixmatch_threshold_rule="fixed", fixmatch_threshold_momentum=0.999,
      fixmatch_alignment="none", fixmatch_alignment_momentum=0.99,
      # The labelled rows' share of FixMatch's feed: 0 = the subset's own
      # (10 % of the labels: ~6 of 64 rows per batch; 1 %: ~0.6); above it,
      # labelled rows repeat to make it (FixMatch's mu = 7: 0.125).
      fixmatch_labelled_share=0.0,
      # mixup among FixMatch's labelled rows (their weak views and labels,
      # one Beta(alpha, alpha) blend per batch; the unlabelled rows as they
      # are), in FixMatch cells and FixMatch teachers alike; 0 = off.
      fixmatch_mixup_alpha=0.0,
      # S4L's joint objective (Zhai et al., ICCV 2019) in FixMatch cells and
      # teachers: NT-Xent at this temperature between each row's weak and
      # strong views, through a fresh projector beside the head, times this
      # weight (0 = off; excludes fixmatch_mixup_alpha).
      fixmatch_contrastive_weight=0.0, fixmatch_contrastive_temperature=0.1,
      # End-to-end runs validate and score an exponential moving average of
      # their weights with this decay per step (0 = off; FixMatch: 0.999
      # over 2^20 steps; here runs last hundreds, so ~0.99).
      weight_average=0.0,
      # Layer-wise learning-rate decay for a pretrained encoder's end-to-end
      # runs: the head and the last unit (ResNet stage, ViT block) at the
      # full rate, each unit below at this factor times the one above
      # (1 = off; MAE fine-tunes ViT-B with 0.75). From-scratch runs keep
      # one rate.
      layer_decay=1.0,
      # Validate and score class probabilities averaged over the mirrorings
      # the fine-tuning views train with (finetune.augment's flips; 2^k
      # views for k flipped axes), so the test image is seen as training
      # saw it; every end-to-end protocol, from scratch too.
      test_time_flips=False,
      # Regularizers of the supervised targets: mixup (Zhang et al., ICLR
      # 2018; one Beta(alpha, alpha) blend per batch) and label smoothing
      # (the share moved to uniform); 0 = off. They apply to finetune,
      # scratch, last_k and every distill student (a FixMatch teacher's
      # too); FixMatch cells refuse them and FixMatch teachers train
      # without (fixmatch_mixup_alpha is FixMatch's own). MAE fine-tunes with 0.8 and 0.1 (and CutMix, which can cut
      # a lesion out: not offered).
      mixup_alpha=0.0, label_smoothing=0.0,
      # Stochastic depth (Huang et al., ECCV 2016) in every end-to-end
      # training of stage 2 (finetune, scratch, last_k, FixMatch, distill
      # teachers and students): each sample skips a residual branch with a
      # probability rising linearly over the blocks to this rate at the last
      # (0 = off; MAE fine-tunes ViT-B with 0.1). Frozen protocols and
      # evaluation see the whole network.
      drop_path=0.0,
      # SimCLRv2 (Chen et al., NeurIPS 2020) fine-tunes from the first layer
      # of the pretrained projector, not the encoder's output: k keeps the
      # projector's first k Linear -> BN -> ReLU layers on the encoder in
      # every stage-2 protocol (models/neck.py; from-scratch cells get the
      # same layers at random init). 0 = the encoder's pooled output.
      keep_projector_layers=0,
      early_layer="stage3",    # `early_layer`: ResNet 'stageN', ViT 'blockN'
      # `zero_shot` (image-text pretraining only): one prompt per class in
      # label order, e.g. ('no finding', 'a malignant mass'); () = the
      # data's class names.
      class_prompts=(),
  )
  return c


def epoch_stage2(ft: ml_collections.ConfigDict, epochs: int) -> None:
  """Stage 2 that trains to convergence: `epochs` passes over the labelled
  subset (at least `finetune.min_steps`), validated at every epoch's end
  (the best val AUROC kept), each epoch ending on its short batch as
  PyTorch's DataLoader does, with loss weights n / (C * count). Fixed
  short step counts (120 on the demo, 100 in the benchmark, 60 in 3D)
  left end-to-end classifiers at the majority class."""
  ft.epochs = epochs
  ft.eval_every_epochs = 1.0
  ft.last_batch = "keep"
  ft.class_weights = "balanced"


def volume_budget(c: ml_collections.ConfigDict,
                  arg: str) -> ml_collections.ConfigDict:
  """What the 3D configs share, sized for a 2-core CPU: the MedMNIST 3D set
  `arg` (default adrenalmnist3d), medical-safe views lifted to volumes
  (flips along W only), 100 pretraining steps of 32 volumes, and stage 2
  at 100 % of the labels: linear probe, end to end and from scratch, 10
  `epoch_stage2` epochs (77 % of AdrenalMNIST3D is one class)."""
  c.job = "pretrain_finetune"
  c.data.name = arg or "adrenalmnist3d"
  # The 2D preset is lifted to volumes (ssl_jax/augment3d.py: crops keep >=
  # 50% of the volume, W flips, mild intensity jitter and blur); `volume`
  # sets Policy3D fields on top: flips per axis (D, H, W), never D here.
  c.augment = augment_config("medical_safe")
  c.augment.volume = dict(flip_probs=(0.0, 0.0, 0.5))
  c.train.steps = 100
  c.train.batch_size = 32
  c.train.log_every = 10
  c.train.checkpoint_every = 50
  ft = c.finetune
  ft.protocols = ("linear", "finetune", "scratch")
  ft.fractions = (1.0,)
  epoch_stage2(ft, epochs=10)
  ft.batch_size = 32
  ft.log_every = 10
  ft.eval_batch_size = 64
  return c
