"""Subprocess half of tests/test_scale_*.py: runs under its own device count
(XLA_FLAGS) or as one process of a multi-process job, prints one JSON line.

  python tests/scale_worker.py steps [WORKDIR]
      3 SimCLR steps (SGD) of a tiny ViT (BatchNorm projector: global-batch
      BN and negatives) on the fixed global batch images[:16]; each process feeds
      its contiguous slice, so 1 x 4 devices and 2 processes x 2 devices see
      the same global batch. Multi-process when SCALE_COORDINATOR is set
      (with SCALE_NUM_PROCESSES, SCALE_PROCESS_ID): jax.distributed through
      the same `parallel.initialize_distributed` that run.py calls. With
      WORKDIR it also saves an Orbax checkpoint from every process, restores
      it shape-first and logs one metric row (process 0 writes).
      With SCALE_RULES=1 the mesh is (data=2, model=2) and `mesh.rules`
      shard the ViT MLP kernels along `model`; it reports their layouts.
  python tests/scale_worker.py stage2 WORKDIR
      The `finetune` protocol of stage 2 on the same tiny ViT, once on a
      (data=2, model=2) mesh with those rules and once on (data=4)
      replicated, from the same encoder weights: the classifier state's
      layout, whether the weights landed, and the test probabilities (and
      those of the `linear` probe on the frozen features).
  python tests/scale_worker.py features
      inference.batched_apply (the monitor's and stage 2's frozen features)
      over 10 fixed rows every process holds whole, in padded batches of 4
      split over every device of every process, then a kNN on them: each
      process reports what it got back.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ssl_jax import parallel  # noqa: E402

GLOBAL_BATCH = 16


def vit_config(**overrides):
  from tests.tiny import tiny_config  # noqa: PLC0415
  c = tiny_config(**overrides)
  c.model = dict(name="vit_tiny", patch_size=7, depth=1, hidden_dim=32,
                 num_heads=2, mlp_dim=64)
  return c


def _distributed_config():
  address = os.environ.get("SCALE_COORDINATOR")
  if not address:
    return None
  return dict(coordinator_address=address,
              num_processes=int(os.environ["SCALE_NUM_PROCESSES"]),
              process_id=int(os.environ["SCALE_PROCESS_ID"]),
              cpu_collectives="gloo", timeout_s=60)


def _global_batch():
  import data_pipelines  # noqa: PLC0415
  images, labels = data_pipelines.load("breastmnist", "train", size=28)
  return {"image": images[:GLOBAL_BATCH], "label": labels[:GLOBAL_BATCH]}


def _local_slice(batch):
  """This process's contiguous rows: its devices come first-to-last in the
  mesh's data axis (jax.devices() is process-major)."""
  n, i = jax.process_count(), jax.process_index()
  rows = GLOBAL_BATCH // n
  return {k: v[i * rows:(i + 1) * rows] for k, v in batch.items()}


def _host(x):
  """A fully addressable numpy copy of a (possibly multi-host) array."""
  from jax.experimental import multihost_utils  # noqa: PLC0415
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


MODEL_RULES = ((r"fc1/kernel$", (None, "model")),
               (r"fc2/kernel$", ("model", None)))


def _fc1(state):
  return state.params["encoder"]["blocks"][0]["fc1"]["kernel"].get_value()


def steps(workdir: str | None) -> dict:
  import data_pipelines  # noqa: PLC0415
  from ssl_jax.jobs import pretrain  # noqa: PLC0415
  # SGD, not Adam: its step is linear in the gradient, so equal params mean
  # equal gradients. Adam's first steps move every parameter by about
  # +-lr whatever its gradient's size, and some gradients here are zero in
  # exact arithmetic (the key bias under the attention softmax, the bias
  # before the projector's BatchNorm): their float noise, which differs
  # with the reduction order of another mesh, became whole steps.
  sgd = {"optim.name": "sgd", "optim.momentum": 0.9}
  if os.environ.get("SCALE_RULES"):
    config = vit_config(**sgd, **{"mesh.model_axis_size": 2,
                                  "mesh.rules": MODEL_RULES})
  else:
    config = vit_config(**sgd)
  mesh = parallel.config_mesh(config)
  info = data_pipelines.info("breastmnist", 28)
  batch = parallel.shard_batch(_local_slice(_global_batch()), mesh)
  built = pretrain.build_parts(config, info, mesh)
  state = built.init()
  born = _fc1(state)
  layout = {"mesh": dict(mesh.shape),
            "specs": parallel.describe_shardings(built.shardings),
            "born_spec": str(born.sharding.spec),
            "born_shard_shape": list(born.addressable_shards[0].data.shape)}
  losses = []
  for _ in range(3):
    state, metrics = built.step_fn(state, batch)
    losses.append(float(metrics["loss"]))
  params = [_host(x) for x in jax.tree.leaves(state.params)]
  out = layout | {
         "after_spec": str(_fc1(state).sharding.spec),
         "devices": mesh.devices.size, "processes": jax.process_count(),
         "losses": losses,
         "param_sum": float(sum(np.abs(p).sum() for p in params))}
  if workdir:
    out.update(_checkpoint_roundtrip(built, state, params, workdir))
  return out


def _checkpoint_roundtrip(built, state, params, workdir) -> dict:
  from ssl_jax.train import checkpoint  # noqa: PLC0415
  from ssl_jax.train.metrics_writer import MetricWriter  # noqa: PLC0415
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 every_steps=1)
  ckpt.save(3, state)
  ckpt.wait()
  restored = ckpt.restore(built.abstract)
  ckpt.close()
  same = all(np.array_equal(a, _host(b)) for a, b in
             zip(params, jax.tree.leaves(restored.params), strict=True))
  writer = MetricWriter(workdir, tensorboard=False)
  writer.write(3, {"loss": 1.0})
  writer.close()
  return {"restored_equal": bool(same), "restored_step": int(restored.step)}


def stage2(workdir: str) -> dict:
  from flax import nnx  # noqa: PLC0415
  from ssl_jax.evaluation import classifier  # noqa: PLC0415
  from ssl_jax.evaluation.encoder_context import SPLITS, EncoderContext  # noqa: PLC0415
  from ssl_jax.evaluation.protocols import PROTOCOLS  # noqa: PLC0415
  from ssl_jax.jobs import common, finetune  # noqa: PLC0415
  from ssl_jax.objectives import base  # noqa: PLC0415
  from ssl_jax.train import encoder_weights  # noqa: PLC0415
  out = {}
  for name, mesh_fields in (
      ("sharded", {"mesh.model_axis_size": 2, "mesh.rules": MODEL_RULES}),
      ("replicated", {})):
    config = vit_config(**mesh_fields)
    info = common.data_info(config)
    cfg = finetune.stage2_config(config, None, info)
    weights = encoder_weights.of_module(
        base.build_encoder(cfg, info, nnx.Rngs(7)))
    ctx = EncoderContext(
        config=cfg, workdir=os.path.join(workdir, name),
        mesh=parallel.config_mesh(cfg), info=info, encoder_weights=weights,
        data={s: common.load_split(cfg, s) for s in SPLITS})
    train_idx = ctx.subset(0.1, 0)
    state = classifier.trainer_for(ctx, len(train_idx)).init_state(0, weights)
    fc1 = _fc1(state)
    probs = PROTOCOLS.get("finetune")(ctx, train_idx, 0).probs["test"]
    frozen = PROTOCOLS.get("linear")(ctx, train_idx, 0).probs["test"]
    out[name] = {
        "mesh": dict(ctx.mesh.shape), "fc1_spec": str(fc1.sharding.spec),
        "fc1_shard_shape": list(fc1.addressable_shards[0].data.shape),
        "loaded": bool(np.array_equal(_host(fc1),
                                      weights["blocks/0/fc1/kernel"])),
        "test_probs": probs[:, 1].tolist(),
        "linear_test_probs": frozen[:, 1].tolist()}
  return out


def features() -> dict:
  import jax.numpy as jnp  # noqa: PLC0415
  from ssl_jax.evaluation import inference, probes  # noqa: PLC0415
  images = np.arange(10 * 2 * 2, dtype=np.uint8).reshape(10, 2, 2, 1)
  fn = jax.jit(lambda x: {"sum": x.astype(jnp.float32).sum(axis=(1, 2, 3)),
                          "pixels": x.reshape(len(x), -1).astype(jnp.float32)})
  out = inference.batched_apply(fn, images, batch_size=4,
                                mesh=parallel.make_mesh())
  knn = probes.knn_predict(out["pixels"], np.arange(10) % 2, out["pixels"],
                           num_classes=2, k=3)
  return {"processes": jax.process_count(), "devices": jax.device_count(),
          "sum": out["sum"].tolist(), "knn": knn[:, 1].tolist()}


def main():
  mode = sys.argv[1]
  distributed = _distributed_config()
  if distributed:
    parallel.initialize_distributed(distributed)
  if mode == "stage2":
    result = stage2(sys.argv[2])
  elif mode == "features":
    result = features()
  else:
    assert mode == "steps", mode
    result = steps(sys.argv[2] if len(sys.argv) > 2 else None)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
