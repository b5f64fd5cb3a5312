"""Data-parallel training under torchrun (DDP, gloo on CPU), 2 processes, the tiny model on real reviews: one MLflow
run, the data sharded over both ranks, the model saved once, a result close to one process's, and a checkpoint that
resumes in another world size."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.test_training_pipeline import RELEASE_CONFIG, tiny_config, tiny_overrides
from training.train import run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)
SHARED = {"train.max_steps": -1, "train.epochs": 1, "train.eval_steps": "null", "data.max_train_samples": 64}


def test_two_processes_train_as_one(tiny_checkpoint, data_dir, tmp_path, tracking_uri):
    overrides = tiny_overrides(tiny_checkpoint, data_dir, tmp_path, **SHARED, **{"train.batch_size": 8})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "training.train", "--config", str(RELEASE_CONFIG), *overrides]
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    model_dir = tmp_path / "models" / "tiny"
    distributed = json.loads((model_dir / "metrics.json").read_text())
    # 64 reviews, 8 per rank per step: 4 steps means every step took 16, so both ranks trained on their own half
    assert distributed["world_size"] == 2 and distributed["optimizer_steps"] == 4
    assert result.stdout.count('"mlflow_run_id"') == 1  # rank 0 alone wrote and printed the summary
    client = MlflowClient(tracking_uri)
    (mlflow_run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert mlflow_run.info.run_id == distributed["mlflow_run_id"] and mlflow_run.data.tags["world_size"] == "2"
    assert (model_dir / "adapter_model.safetensors").exists()

    # one process, the same global batch (16), the same data
    single = run(
        tiny_config(tiny_checkpoint, data_dir, tmp_path, name="tiny-single", **SHARED, **{"train.batch_size": 16})
    )
    assert single["world_size"] == 1 and single["optimizer_steps"] == 4
    assert abs(single["validation_accuracy"] - distributed["validation_accuracy"]) <= 0.1

    # the 2-process checkpoint resumes in one process, in the same MLflow run
    resumed = run(tiny_config(tiny_checkpoint, data_dir, tmp_path, **(SHARED | {"train.max_steps": 6})))
    assert resumed["resumed_from_step"] == 4 and resumed["optimizer_steps"] == 6
    assert resumed["mlflow_run_id"] == distributed["mlflow_run_id"]
