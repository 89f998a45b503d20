"""Self-distillation on the unlabelled rest of the train split (stage 2).

SimCLRv2's third step (Chen et al., NeurIPS 2020, "Big Self-Supervised
Models are Strong Semi-Supervised Learners"): the classifier fine-tuned on
the labelled subset (the teacher: exactly the `finetune` cell of the same
subset and seed, or with `finetune.distill_teacher='fixmatch'` the
`fixmatch` one) labels every train image with its class probabilities,
and a student of the same architecture, started from the same encoder,
trains on all of them: the labelled images against their labels, the rest
against the teacher's probabilities, both tempered by
`finetune.distill_temperature`. At 10 % of BreastMNIST's labels the
fine-tune sees 55 images and the student all 546, none of whose other
labels is read. The student is selected on val AUROC as every end-to-end
run is; its cell records the first teacher's selection beside its own.
With `finetune.distill_rounds` = r > 1 each student teaches the next, from
the same encoder again (Noisy Student's iteration, Xie et al., CVPR 2020;
the student's views are its noise). With `finetune.distill_teachers` = k > 1
the first teacher is k runs of the teacher's protocol on the same subset,
each with its own init, batch order and augmentation, whose probabilities
are averaged (Hinton et al. 2015 distilled an ensemble; three FixMatch
teachers gave a BreastMNIST student no gain, docs/results.md); the first
of them is the k = 1 teacher. With `finetune.distill_teacher_pretrained`
naming further pretraining workdirs of the same architecture, each of
their encoders trains the teacher too, on the same subset and seed (the
run that pretraining's own k = 1 teacher would be), and joins the average:
the student, started from the job's own encoder, learns from several
pretrainings at once (combining representations in one network). Each
encoder is then a chain: with `distill_rounds` = r > 1 every chain trains
its own r - 1 students in turn, each from the chain's encoder, and the
final student learns from the chains' last students averaged (an
ensemble of students distilled into one network). Teachers are averaged
per encoder first, so every pretraining weighs the same.
`finetune.distill_targets='function_matching'` (Beyer et al., CVPR 2022,
"Knowledge distillation: A good teacher is patient and consistent") runs
the teacher networks inside the student's step, on the student's own
augmented and mixed views, instead of reading probabilities fixed once
per image; `finetune.distill_epochs` lengthens the students' runs (the
paper's "patient" teacher), 0 keeping stage 2's epochs.
`finetune.distill_student_init='teacher'` starts each student from its
teacher's selected network (encoder, BatchNorm statistics and head)
instead of the pretrained encoder and a fresh head: the student carries
on from where its teacher stopped (one teacher network only).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ssl_jax.evaluation import classifier, metrics
from ssl_jax.evaluation.encoder_context import (EVAL_SPLITS, EncoderContext,
                                                Predictions)
from ssl_jax.train import encoder_weights as weights_lib


def tempered(probs: np.ndarray, temperature: float,
             multi_label: bool) -> np.ndarray:
  """`probs` re-scaled as if their logits were divided by `temperature`
  (softmax over classes; per-label sigmoid for multi-label)."""
  probs = np.clip(np.asarray(probs, np.float64), 1e-7, 1.0 - 1e-7)
  if multi_label:
    logits = np.log(probs) - np.log1p(-probs)
    return (1.0 / (1.0 + np.exp(-logits / temperature))).astype(np.float32)
  logits = np.log(probs) / temperature
  logits -= logits.max(axis=-1, keepdims=True)
  out = np.exp(logits)
  return (out / out.sum(axis=-1, keepdims=True)).astype(np.float32)


def label_targets(labels: np.ndarray, num_classes: int,
                  multi_label: bool) -> np.ndarray:
  """Labels as the probabilities a student trains against (one-hot, or
  the multi-hot labels themselves)."""
  if multi_label:
    return np.asarray(labels, np.float32)
  return np.eye(num_classes, dtype=np.float32)[np.asarray(labels).reshape(-1)]


def student_targets(ctx: EncoderContext, train_idx: np.ndarray,
                    teacher_train_probs: np.ndarray,
                    temperature: float) -> np.ndarray:
  """[N_train, C]: the teacher's tempered probabilities on every train
  image, with the labelled rows `train_idx` set to their labels."""
  info = ctx.info
  targets = tempered(teacher_train_probs, temperature, info.multi_label)
  targets[train_idx] = label_targets(ctx.labels("train")[train_idx],
                                     info.num_classes, info.multi_label)
  return targets


# Teacher i of an ensemble trains with the cell's seed + i * this: far
# from the cell seeds of a sweep, so no member shares another cell's run.
TEACHER_SEED_STRIDE = 1000


def teacher_count(ft) -> int:
  """`finetune.distill_teachers` (absent: 1); refused below 1."""
  count = int(ft.get("distill_teachers", 1))
  if count < 1:
    raise ValueError(f"config.finetune.distill_teachers={count}: expected "
                     ">= 1 (the teacher runs whose probabilities are averaged)")
  return count


def averaged(members: list[Predictions]) -> Predictions:
  """The members' probabilities averaged split by split; the first
  member's selection info; every member's networks (an ensemble of one is
  its member)."""
  if len(members) == 1:
    return members[0]
  return Predictions({split: np.mean([m.probs[split] for m in members], axis=0)
                      for split in members[0].probs}, members[0].info,
                     sum((m.networks for m in members), ()))


DISTILL_TARGETS = ("fixed", "function_matching")


def function_matching(ft, encoders: int = 1) -> bool:
  """`finetune.distill_targets` (absent: 'fixed') is 'function_matching';
  refused when unknown, and when the own encoder's teacher is an ensemble
  beside further encoders (the networks are averaged one by one, so the
  own encoder would weigh `distill_teachers` times)."""
  targets = ft.get("distill_targets", DISTILL_TARGETS[0])
  if targets not in DISTILL_TARGETS:
    raise ValueError(f"config.finetune.distill_targets={targets!r}; allowed: "
                     f"{', '.join(DISTILL_TARGETS)}")
  matching = targets == "function_matching"
  if matching and encoders > 1 and teacher_count(ft) > 1:
    raise ValueError("config.finetune.distill_targets='function_matching' "
                     "averages its teacher networks equally: with "
                     "distill_teacher_pretrained, keep distill_teachers=1")
  return matching


STUDENT_INITS = ("encoder", "teacher")


def student_from_teacher(ft, encoders: int = 1) -> bool:
  """`finetune.distill_student_init` (absent: 'encoder') is 'teacher';
  refused when unknown, and when a student's teacher averages several
  networks (`distill_teachers` or further encoders): there is no one
  network to start from."""
  init = ft.get("distill_student_init", STUDENT_INITS[0])
  if init not in STUDENT_INITS:
    raise ValueError(f"config.finetune.distill_student_init={init!r}; "
                     f"allowed: {', '.join(STUDENT_INITS)}")
  from_teacher = init == "teacher"
  if from_teacher and (encoders > 1 or teacher_count(ft) > 1):
    raise ValueError("config.finetune.distill_student_init='teacher' starts "
                     "the student from its one teacher network: keep "
                     "distill_teachers=1 and no distill_teacher_pretrained")
  return from_teacher


def student_epochs(ft) -> float | None:
  """`finetune.distill_epochs` (absent or 0: stage 2's own length, None),
  refused below 0."""
  epochs = float(ft.get("distill_epochs", 0))
  if epochs < 0:
    raise ValueError(f"config.finetune.distill_epochs={epochs}: expected "
                     ">= 0 (0 = stage 2's epochs)")
  return epochs or None


def _aurocs(ctx: EncoderContext, prefix: str, teacher: Predictions,
            members: Sequence[Predictions]) -> dict:
  """`teacher`'s val/test AUROC under `prefix`, and each member's when it
  averages more than one."""
  out = {f"{prefix}_{split}_auroc": metrics.auroc(
      ctx.labels(split), teacher.probs[split], ctx.task) for split in EVAL_SPLITS}
  if len(members) > 1:
    out.update({f"{prefix}_member_{split}_aurocs": [
        metrics.auroc(ctx.labels(split), m.probs[split], ctx.task)
        for m in members] for split in EVAL_SPLITS})
  return out


def self_distill(ctx: EncoderContext, train_idx: np.ndarray, seed: int, *,
                 weights: weights_lib.Flat | None, name: str,
                 teach: Callable[..., Predictions],
                 teacher_encoders: Sequence[weights_lib.Flat] = ()
                 ) -> Predictions:
  """The teacher `teach` trains on `train_idx` from `weights`
  (`distill_teachers` times, averaged) and from each of `teacher_encoders`
  (once, with the cell's seed): one chain per encoder. Each of the first
  `distill_rounds` - 1 rounds trains, in every chain, a student from that
  chain's encoder taught by the chain's last network; the final student,
  from `weights`, learns from the chains' last networks averaged (module
  doc). The cell records the first teacher's val and test AUROC (an
  ensemble's: the average's, and each member's) and, after more than one
  round, the final teacher's, so a student pairs with its teachers
  without running their protocols again."""
  ft = ctx.config.finetune
  temperature, rounds = float(ft.distill_temperature), int(ft.distill_rounds)
  if temperature <= 0 or rounds < 1:
    raise ValueError("config.finetune.distill_temperature must be > 0 and "
                     f"distill_rounds >= 1, got {temperature} and {rounds}")
  with_train = ("train",) + EVAL_SPLITS
  own = [teach(ctx, train_idx, seed + i * TEACHER_SEED_STRIDE,
               weights=weights, score=with_train,
               name=f"{name}_teacher" + (f"{i}" if i else ""))
         for i in range(teacher_count(ft))]
  others = [teach(ctx, train_idx, seed, weights=other, score=with_train,
                  name=f"{name}_teacher_encoder{j + 1}")
            for j, other in enumerate(teacher_encoders)]
  encoders = [weights, *teacher_encoders]
  chains = [averaged(own), *others]
  rows = np.arange(len(ctx.labels("train")))
  matching = function_matching(ft, len(encoders))
  from_teacher = student_from_teacher(ft, len(encoders))
  epochs = student_epochs(ft)

  def learn(encoder, teacher, r, suffix, score):
    targets = student_targets(ctx, train_idx, teacher.probs["train"],
                              temperature)
    matched = teacher.networks if matching else ()
    student = classifier.trainer_for(
        ctx, len(rows), objective=dict(name="distillation",
                                       temperature=temperature,
                                       **({"teachers": len(matched)}
                                          if matching else {})),
        pretrained=weights is not None, epochs=epochs)
    return student.run(
        ctx, train_idx, seed, weights=encoder,
        name=f"{name}_student" + (f"{r + 1}" if r else "") + suffix,
        feed=classifier.soft_target_feed(
            rows, targets, ctx.info.multi_label,
            labelled=train_idx if matching else None),
        teachers=matched, score=score,
        start=teacher.networks[0] if from_teacher else None)

  first = last = averaged(chains)
  for r in range(rounds - 1):
    chains = [learn(encoder, chain, r, f"_encoder{e}" if e else "", with_train)
              for e, (encoder, chain) in enumerate(zip(encoders, chains))]
    last = averaged(chains)
  final = learn(weights, last, rounds - 1, "", EVAL_SPLITS)
  return Predictions(final.probs, dict(
      final.info, temperature=temperature, rounds=rounds,
      rows_trained=len(rows), teachers=len(own) + len(others),
      teacher_encoders=len(encoders),
      **({"distill_targets": "function_matching"} if matching else {}),
      **({"student_epochs": epochs} if epochs else {}),
      **({"student_init": "teacher"} if from_teacher else {}),
      **_aurocs(ctx, "teacher", first, own + others),
      **{f"teacher_{k}": v for k, v in first.info.items()
         if k.startswith("selected_")},
      **(_aurocs(ctx, "final_teacher", last, chains) if rounds > 1 else {})))
