"""A student distilled from a trained teacher (tiny BERTs, real reviews): it starts from the teacher's own layers,
trains on its probabilities, rebuilds from base + teacher adapter + its own adapter exactly, and is registered naming
its teacher."""

from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from serving.core.text import unpack_ids
from tests.test_training_pipeline import tiny_config
from training.config import load_config
from training.modeling import PARITY_SAMPLE, load_trained, predict_ids, student_start
from training.registry import register
from training.train import run


def test_a_student_learns_from_its_teachers_layers_and_names_it(tiny_checkpoint, data_dir, tmp_path, tracking_uri):
    teacher_config = tiny_config(tiny_checkpoint, data_dir, tmp_path)
    run(teacher_config)
    teacher_dir = Path(teacher_config.models_dir) / "tiny"
    student_config = tiny_config(
        tiny_checkpoint,
        data_dir,
        tmp_path,
        name="tiny-student",
        registered_model="tiny-student",
        **{"model.teacher": str(teacher_dir), "model.student_layers": "[1]"},
    )
    start = student_start(student_config.model, ["neg", "pos"])
    teacher = load_trained(teacher_dir, load_config(teacher_dir / "config.yaml"), ["neg", "pos"])
    assert start.config.num_hidden_layers == 1
    np.testing.assert_array_equal(  # the student's one layer is the teacher's second, merged adapter and all
        start.bert.encoder.layer[0].attention.self.query.weight.detach(),
        teacher.bert.encoder.layer[1].attention.self.query.weight.detach(),
    )

    summary = run(student_config)
    cached = list((student_config.run_dir / "teacher-probabilities").glob("*/*.npy"))
    assert cached  # the teacher's probabilities on the train split, kept for a resumed run
    student_dir = Path(student_config.models_dir) / "tiny-student"
    student = load_trained(student_dir, student_config, ["neg", "pos"])
    assert student.config.num_hidden_layers == 1
    sample = np.load(student_dir / PARITY_SAMPLE)
    ids = unpack_ids(sample["ids"], sample["offsets"])
    np.testing.assert_allclose(predict_ids(student, ids, 0), sample["reference"], atol=1e-5)  # rebuilt exactly

    client = MlflowClient(tracking_uri)
    assert client.get_run(summary["mlflow_run_id"]).data.tags["teacher"] == str(teacher_dir)
    version, _ = register(student_dir, student_config)
    assert client.get_model_version("tiny-student", version).tags["teacher"] == str(teacher_dir)
