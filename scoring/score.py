"""Score a stored dataset offline on Apache Spark with the served model: the same exported files, tokenizer, int8
self-check and hybrid decision as the service, one model per Spark Python worker.

    python -m scoring.score input=../shared/data/imdb/test.parquet output=build/scores
    python -m scoring.score master=spark://host:7077 input=hdfs:///reviews output=hdfs:///scores   # a cluster

The model folder travels to the executors with `SparkContext.addFile`; each executor runs the int8 self-check on its
own CPU (int8 numerics differ between CPU families) and serves fp32 where it fails, as the service does. Rows keep
every input column (not their order: keep an id column) and gain predicted_label, predicted_label_id, score,
probabilities, path (lexical / ensemble / transformer), file (the ONNX file served: an int8 recipe or fp32) and
model_version. A blank or missing text gets
null predictions (the API refuses it; a batch job must not stop on it).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from scoring.executor import PREDICTION_SCHEMA, score_batches
from serving.core.hybrid import HybridRouter
from serving.core.runtime import cpu_flags
from serving.core.selfcheck import SelfCheckLimits, load_classifier
from serving.settings import BENTO_MODEL
from training.config import command_line

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_PACKAGES = ("scoring", "serving")  # what the executors import: the scoring code and the serving runtime


@dataclass
class ScoreConfig:
    """What to score, with which model, on which Spark."""

    input: str = ""  # Parquet, CSV (with a header) or JSON Lines: a file or a folder of them
    output: str = ""  # a Parquet folder (overwritten)
    model: str = f"{BENTO_MODEL}:latest"  # a BentoML model tag, from the store in $BENTOML_HOME
    mode: str = ""  # the hybrid mode (cascade, ensemble, transformer); empty: the export's own
    text_column: str = "text"
    master: str = "local[*]"  # local[*] here; spark://..., yarn or k8s://... on a cluster
    rows_per_batch: int = 512  # rows per Arrow batch handed to a Python worker
    tasks_per_core: int = 2  # scoring tasks per executor core (the rows are spread evenly over them)
    report: str = "reports/scoring/score.json"  # throughput and where it ran


def code_archive(folder: Path) -> Path:
    """The Python the executors need, as one zip for `addPyFile` (on a cluster they have only the libraries)."""
    archive = folder / "imdb_scoring.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for package in SHIPPED_PACKAGES:
            for source in (ROOT / package).glob("*.py"):
                bundle.write(source, source.relative_to(ROOT))
    return archive


def read(spark, path: str):
    """A DataFrame from Parquet, CSV (header, quoted multi-line fields, as pandas writes them) or JSON Lines."""
    suffix = Path(path.rstrip("/")).suffix.lower()
    if suffix == ".csv":
        return spark.read.csv(path, header=True, multiLine=True, escape='"')
    if suffix in (".json", ".jsonl"):
        return spark.read.json(path)
    return spark.read.parquet(path)


def run(config: ScoreConfig) -> dict:
    import bentoml
    from pyspark.sql import SparkSession
    from pyspark.sql.types import StructType

    if not (config.input and config.output):
        raise SystemExit("input=... and output=... are required")
    model = bentoml.models.get(config.model)
    metadata = model.info.metadata
    model_version = f"{metadata['mlflow_model']}:{metadata['mlflow_version']}"
    limits = SelfCheckLimits.of(model)
    # the file the service would serve on this CPU, chosen once: each executor only re-checks it on its own CPU
    recipe = load_classifier(model.path, limits)[1].recipe or "fp32"
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the executors' Python: this one, unless told theirs
    with tempfile.TemporaryDirectory() as folder:  # the code archive must outlive the job: executors fetch it late
        spark = (
            SparkSession.builder.master(config.master)
            .appName("imdb-sentiment-score")
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", config.rows_per_batch)
            # keep every partition asked for: adaptive execution would merge a small input back into one task
            .config("spark.sql.adaptive.coalescePartitions.enabled", "false")
            .config("spark.ui.showConsoleProgress", "true")  # the stages' progress bar on the console
            .getOrCreate()
        )
        try:
            spark.sparkContext.addFile(str(model.path), recursive=True)
            spark.sparkContext.addPyFile(str(code_archive(Path(folder))))
            frame = read(spark, config.input)
            cores = spark.sparkContext.defaultParallelism
            # A file's row group is read by one task, whatever the split count says: spread the rows on every core
            frame = frame.repartition(config.tasks_per_core * cores)
            schema = StructType(frame.schema.fields + StructType.fromDDL(PREDICTION_SCHEMA).fields)
            score = functools.partial(
                score_batches,
                folder_name=Path(model.path).name,
                mode=config.mode,
                limits=limits,
                label_names=tuple(metadata["label_names"]),
                recipe=recipe,
                text_column=config.text_column,
                model_version=model_version,
            )
            started = time.perf_counter()
            frame.mapInPandas(score, schema).write.mode("overwrite").parquet(config.output)
            seconds = time.perf_counter() - started
            scored = spark.read.parquet(config.output)
            rows, files = scored.count(), [r.file for r in scored.select("file").distinct().collect()]
        finally:
            spark.stop()
    report = asdict(config) | {
        "model_tag": str(model.tag),
        "model_version": model_version,
        "hybrid": HybridRouter(model.path, config.mode).describe(),
        "rows": rows,
        "seconds": round(seconds, 1),
        "rows_per_second": round(rows / seconds, 1),
        "files": sorted(f for f in files if f),
        "recipe": recipe,
        "spark_cores": cores,
        "cpu": cpu_flags(),
    }
    Path(config.report).parent.mkdir(parents=True, exist_ok=True)
    Path(config.report).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


def main() -> None:
    config, _ = command_line(ScoreConfig, __doc__)
    run(config)


if __name__ == "__main__":
    main()
