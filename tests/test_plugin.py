"""README's out-of-tree objective, run as written: the two code blocks of
"Adding a method" become files outside the package, and run.py pretrains
the objective they register (objective.module)."""
import json
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_blocks(section: str) -> list[str]:
  text = (ROOT / "README.md").read_text()
  body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_readme_objective_registers_from_outside_and_trains(tmp_path,
                                                            medmnist_dir):
  objective_code, config_code = readme_blocks("Adding a method")
  assert len(objective_code.splitlines()) < 40
  (tmp_path / "my_objectives.py").write_text(objective_code)
  (tmp_path / "my_config.py").write_text(config_code)
  workdir = tmp_path / "run"
  env = dict(os.environ, SSL_JAX_DATA_DIR=str(medmnist_dir),
             JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
  overrides = ["--config.job=pretrain", "--config.train.steps=2",
               "--config.train.batch_size=16", "--config.train.log_every=1",
               "--config.optim.warmup_steps=1", "--config.train.progress=False",
               "--config.model.width_multiplier=0.0625",
               "--config.model.stage_sizes=(1,1,1,1)"]
  out = subprocess.run(
      [sys.executable, str(ROOT / "run.py"),
       f"--config={tmp_path / 'my_config.py'}", f"--workdir={workdir}",
       *overrides], cwd=tmp_path, env=env, capture_output=True, text=True,
      timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in
          (workdir / "metrics.jsonl").read_text().splitlines()]
  logged = [r for r in rows if "train/upside_down_acc" in r]
  assert [r["step"] for r in logged] == [1, 2]
  assert all(0.0 <= r["train/upside_down_acc"] <= 1.0 for r in logged)
  config = json.loads((workdir / "config.json").read_text())
  assert config["objective"] == {"name": "upside_down",
                                 "module": "my_objectives", "flip_prob": 0.5}
