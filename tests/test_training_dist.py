"""``accelerate launch`` with 2 CPU processes (gloo) computes the same losses as one process on the global batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from anllm.train import TrainConfig, train
from tests.test_training import PROSE


def _metrics(out: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {x["step"]: x["loss"] for x in lines if "loss" in x}


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None, reason="no accelerate")
def test_two_process_accelerate_launch_matches_one_process(tmp_path):
    data = tmp_path / "pt.jsonl"
    data.write_text("".join(json.dumps({"text": t * (i + 1)}) + "\n" for i, t in enumerate(PROSE * 2)))
    common = dict(
        model="tiny-random", train_files=[str(data)], block_size=96, max_steps=8, lr=3e-3, lr_scheduler="constant",
        grad_accum=2, save_every=4, progress=False, seed=5,
    )  # fmt: skip
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({**common, "batch_size": 1, "output_dir": str(tmp_path / "two")}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    launcher = str(Path(sys.executable).parent / "accelerate")
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "-m", "anllm", "train", "--config", str(cfg_file)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "two" / "checkpoints" / "step-0000008" / "state.json").read_text())
    assert state["world_size"] == 2 and state["global_batch"] == 4
    assert (tmp_path / "two" / "checkpoints" / "step-0000008" / "rng_1.pt").is_file()

    one = train(TrainConfig.from_dict(dict(**common, batch_size=2, output_dir=str(tmp_path / "one"))))
    two = _metrics(tmp_path / "two")
    assert sorted(two) == list(range(1, 9))
    for step, loss in one.losses.items():
        assert two[step] == pytest.approx(loss, rel=1e-4), step
