# The verbs a user needs. Everything runs from the project's own .venv.
PYTHON := .venv/bin/python
CONFIG ?= training/configs/imdb-minilm-lora.yaml
STUDENT_CONFIG ?= training/configs/imdb-minilm-student.yaml
# MODEL_DIR, MODEL_URI, BENTO_MODEL, EXPORT_REPORT, IMAGE_TAG and BUILD_DIR follow CONFIG (ExperimentConfig.stage_names)
$(foreach name,$(shell $(PYTHON) -m training.config $(CONFIG) 2>/dev/null),$(eval $(subst =, ?= ,$(name))))
export BENTO_MODEL_TAG ?= $(BENTO_MODEL):latest
PORT ?= 3000
NPROC ?= 1
# one process, or NPROC data-parallel ones (DDP: gloo on CPU, NCCL on GPUs); multi-node: see docs/SCALE_OUT.md
LAUNCH := $(if $(filter-out 1,$(NPROC)),.venv/bin/torchrun --standalone --nproc_per_node $(NPROC),$(PYTHON))
INPUT ?= ../shared/data/imdb/test.parquet
LOG ?= build/ab/predictions.jsonl
URL ?= http://127.0.0.1:$(PORT)
OUTPUT ?= build/scores
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
export BENTOML_HOME ?= $(CURDIR)/.bentoml
export TOKENIZERS_PARALLELISM ?= true
REGISTER = $(PYTHON) -m training.registry --model-dir $(MODEL_DIR)
# Work that may run beside a serving service yields the CPU to it: a lower priority (nothing lost on an idle machine)
# and half the CPUs, rounded up, for PyTorch, MKL and the tokenizers (export.export.yielding does the same)
# work beside a serving service: niced, half the cores, paced while the service is busy (export/yielding.py)
YIELDING = $(PYTHON) -m export.yielding
EXPORT = $(YIELDING) $(PYTHON) -m export.export model_uri=$(MODEL_URI) bento_model=$(BENTO_MODEL) report=$(EXPORT_REPORT) \
	work_dir=$(BUILD_DIR)/onnx
# the parity report of an export that make runs for you (the committed one in reports/export/ is make export's)
LOCAL_PARITY = $(BUILD_DIR)/export/parity.json

.PHONY: install lock lint eda lexical train distill tiers frontier remote-pack remote-finish compare evaluate evaluate-served register export export-challenger retrain model serve build \
	containerize test-container test-compose \
	loadtest benchmark profile overload reload-drill beside-drill read-length first-answer soak score ab-traffic ab-report report screenshots mlflow-ui notebook test all

install:  ## .venv from the lock (requirements.txt; torch is the CPU build), then this project; Debian's chromium (UI test) and Java (Spark)
	python3.11 -m venv .venv
	.venv/bin/pip install --upgrade pip==26.3
	.venv/bin/pip install -r requirements.txt
	.venv/bin/pip install --no-deps --no-build-isolation -e .
	$(PYTHON) .ci/bentoml_home.py  # plain `bentoml serve` in a fresh shell finds this project's store
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "tests/test_ui.py needs Debian's chromium: sudo apt-get install chromium"
	command -v java >/dev/null || (apt-get update -qq && apt-get install -y -qq default-jre-headless) \
		|| echo "make score (Spark) needs Java 17+: sudo apt-get install default-jre-headless"

lock:  ## requirements.txt and requirements-serve.txt from pyproject.toml's extras, at the versions installed (.ci/lock.py)
	$(PYTHON) .ci/lock.py

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

eda:  ## dataset report -> reports/eda/<name>/
	$(PYTHON) -m training.eda --config $(CONFIG)

lexical:  ## the hybrid's TF-IDF + LR half and its policy, chosen on validation -> models/<name>/lexical.onnx.gz, hybrid.json
	$(PYTHON) -m training.lexical --model-dir $(MODEL_DIR) $(ARGS)

train:  ## fine-tune (CONFIG=..., overrides in ARGS="train.epochs=2 ...", NPROC=2 for DDP) -> models/<name>/
	$(LAUNCH) -m training.train --config $(CONFIG) $(ARGS)

distill:  ## the student: a few of the trained model's layers, trained on its probabilities (STUDENT_CONFIG) -> models/<student>/
	$(LAUNCH) -m training.train --config $(STUDENT_CONFIG) $(ARGS)

tiers:  ## the student (STUDENT_CONFIG's) as the cascade's middle tier where it saves transformer CPU, on validation -> models/<name>/hybrid.json, frontier.json
	$(PYTHON) -m training.tiers --model-dir $(MODEL_DIR) hybrid.student=$$($(PYTHON) -m training.config $(STUDENT_CONFIG) | sed -n 's/^MODEL_DIR=//p') $(ARGS)

frontier:  ## the configurations make tiers chose, judged on the test split with the served files -> reports/experiments/tiers/ (needs the student's export: make export CONFIG=$(STUDENT_CONFIG))
	$(PYTHON) -m training.frontier --model-dir $(MODEL_DIR) $(ARGS)

remote-pack:  ## tokenized splits + fp16 base model -> build/remote/, for a GPU machine without datasets/mlflow
	$(PYTHON) -m training.remote pack --config $(CONFIG) $(ARGS)

remote-finish:  ## OUT=<what `python -m training.remote train build/remote OUT` wrote> -> models/<name>/ + MLflow
	$(PYTHON) -m training.remote finish $(OUT)

compare:  ## LoRA r16 all-linear vs LoRA r4 query/value vs full fine-tuning, on a subset (imdb-compare.yaml)
	$(PYTHON) -m training.train --config training/configs/imdb-compare.yaml name=compare-lora-r16-all-linear
	$(PYTHON) -m training.train --config training/configs/imdb-compare.yaml name=compare-lora-r4-query-value \
		model.lora_r=4 model.lora_alpha=8 "model.lora_target_modules=[query,value]"
	$(PYTHON) -m training.train --config training/configs/imdb-compare.yaml name=compare-full-finetune \
		model.method=full train.learning_rate=5e-5
	for run in compare-lora-r16-all-linear compare-lora-r4-query-value compare-full-finetune; do \
		$(PYTHON) -m training.evaluate --model-dir runs/models/$$run || exit 1; done

evaluate:  ## the only test scorer: rebuild the committed model, score the test split -> reports/<name>/, metrics.json
	$(PYTHON) -m training.evaluate --model-dir $(MODEL_DIR) $(ARGS)

evaluate-served:  ## the served ONNX file (int8, else fp32) on the test split -> reports/<name>/served.json, the UI's reports/ui/examples.json
	$(PYTHON) -m training.evaluate --model-dir $(MODEL_DIR) --served

register:  ## the only registry writer: committed adapter -> MLflow version, champion/challenger gate
	$(REGISTER)

export:  ## registry model -> ONNX fp32 + int8 candidates -> parity gate -> BentoML model store
	$(EXPORT) $(ARGS)

export-challenger:  ## the registry's challenger -> BentoML model $(BENTO_MODEL)-challenger (A/B: docs/MLOPS.md)
	$(PYTHON) -m export.export model_uri=$(MODEL_URI:@champion=@challenger) bento_model=$(BENTO_MODEL)-challenger \
		work_dir=$(BUILD_DIR)/onnx-challenger report=$(BUILD_DIR)/challenger/parity.json $(ARGS)

retrain:  ## NEW_DATA=file: a challenger trained on it, gated against the champion (test split + held-out new data): promoted and exported, or kept as challenger -> reports/retrain/<id>/
	$(YIELDING) $(PYTHON) -m export.retrain new_data=$(NEW_DATA) $(ARGS)

model:  ## register and export only what is missing (what test, build and the benchmarks need), its cascade's student too
	$(REGISTER) --if-missing
	$(EXPORT) --if-missing report=$(LOCAL_PARITY)
	$(PYTHON) -m export.student --model-dir $(MODEL_DIR)

serve:  ## run the service on :$(PORT); a store without the model gets the fp32 file at once, int8 follows (docs/EXPORT.md)
	$(REGISTER) --if-missing
	$(EXPORT) --fp32-first report=$(LOCAL_PARITY)
	$(PYTHON) -m export.student --model-dir $(MODEL_DIR) --fp32-first
	.venv/bin/bentoml serve service:SentimentAPI --port $(PORT)

build: model
	.venv/bin/bentoml build

containerize: build  ## bentoml containerize (podman/buildah here, docker elsewhere)
	IMAGE_TAG=$(IMAGE_TAG) ./.ci/containerize.sh

test-container: containerize  ## run the image as the Kubernetes manifest does: answers, errors, size, start time, peak memory
	$(PYTHON) -m pytest -m container tests/test_container.py

test-compose: containerize  ## the Compose stack for real (offline: STANDINS=1 COMPOSE_SERVICES="classifier mlflow prometheus")
	$(PYTHON) -m pytest -m container tests/test_compose.py

loadtest: model  ## Locust, headless, several user counts -> reports/loadtest/
	$(PYTHON) -m loadtests.run_loadtest

benchmark: model  ## ONNX ceiling vs service (batching on/off) vs FastAPI+transformers -> reports/benchmark/
	$(PYTHON) -m loadtests.benchmark

read-length: model  ## the served file reading 256 vs 384 tokens on validation: accuracy, ms/review -> reports/experiments/read-length/
	$(PYTHON) -m export.read_length bento_model=$(BENTO_MODEL_TAG) $(ARGS)

profile: model  ## py-spy on the API worker under closed-loop clients: its CPU by layer -> reports/benchmark/PROFILE.md
	$(PYTHON) -m loadtests.profile $(ARGS)

overload: model  ## 64 closed-loop clients at once: admitted vs shed latency, 503 + Retry-After -> reports/overload/
	$(PYTHON) -m loadtests.overload $(ARGS)

reload-drill: model  ## exports swapped in under a mixed load: refusals, slowest answer, memory -> reports/reload/
	$(PYTHON) -m loadtests.reload $(ARGS)

beside-drill: model  ## a mixed load alone, beside a yielding export, a niced-only one, one at the same priority -> reports/beside/
	$(PYTHON) -m loadtests.beside $(ARGS)

first-answer:  ## a fresh clone's `make serve` to its first /predict 200, timed -> reports/first-answer/
	$(PYTHON) -m loadtests.first_answer $(ARGS)

soak: model  ## 10 minutes at 80% of the highest open-loop load that holds p95 < 100 ms (searched first) -> reports/soak/ (not in CI)
	$(PYTHON) -m loadtests.soak

score: model  ## Spark batch scoring with the served model: INPUT=file/folder -> OUTPUT (Parquet), reports/scoring/
	$(PYTHON) -m scoring.score input=$(INPUT) output=$(OUTPUT) model=$(BENTO_MODEL_TAG) $(ARGS)

ab-traffic:  ## real labelled test reviews to a running service (URL=...) as many users -> build/ab/labels.parquet
	$(PYTHON) -m loadtests.ab_traffic url=$(URL) $(ARGS)

ab-report:  ## A/B comparison from the service's PREDICTION_LOG (LOG=...; LABELS=labelled texts) -> reports/ab/
	$(PYTHON) -m reporting.ab log=$(LOG) $(if $(LABELS),labels=$(LABELS)) $(ARGS)

report:  ## reports/PERFORMANCE.md and the model card, from the measured files
	$(PYTHON) -m reporting.render

screenshots:  ## the UI test in chromium, its screenshots into reports/ui/ (the README's image; make test keeps them in build/ui/)
	UI_SCREENSHOTS=reports/ui $(PYTHON) -m pytest tests/test_ui.py

notebook:  ## execute the portfolio notebook in place (outputs are committed)
	.venv/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=900 notebooks/exploration.ipynb
	$(PYTHON) -c "import nbformat as n; p='notebooks/exploration.ipynb'; nb=n.read(p, 4); [c.__setitem__('outputs', [o for o in c.outputs if o.get('name') != 'stderr']) for c in nb.cells if c.cell_type == 'code']; n.write(nb, p)"  # warnings carry machine paths

mlflow-ui:
	.venv/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --port 5000

test: model  ## the whole test suite (real data, real models, real HTTP)
	$(PYTHON) -m pytest -m "not container" --durations=15

all: eda train lexical evaluate register export  ## the main job, each stage once
