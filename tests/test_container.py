"""The built image, run as the Kubernetes manifest runs it (its numeric user, a read-only root with its volumes as
the only writable paths, its CPU limit): health, predictions, explanations, the web UI, a validation error, size,
start time, and the peak memory under a mixed load and `/explain`, which the manifest's limit must stay above.

Run with `make test-container` (builds the image first); not part of `make test`, which has no engine in CI.
"""

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import yaml

from loadtests import common
from serving.core.runtime import cpu_flags

ROOT = Path(__file__).resolve().parents[1]
ENGINE = [str(ROOT / ".ci" / "engine.sh")]
IMAGE = os.environ.get("IMAGE_TAG", "imdb-sentiment:latest")
BASE_IMAGE = "docker.io/library/python:3.11-slim"  # service.py's (or its stand-in: BASE_IMAGE=local)
PORT = 3380
pytestmark = [pytest.mark.container, pytest.mark.timeout(600)]
MAX_IMAGE_MB = 2000  # the hard limit the project set from the start
# The regression budget, kept here only: the size measured when it was set (1,231.8 MB, reports/container: ONNX
# Runtime, Gradio, SHAP with numba, the fp32 fallback and the int8 files) plus 10%. Raise it on purpose, with the
# report's `contents` saying what grew.
IMAGE_BUDGET_MB = 1355


def engine(*args: str) -> str:
    return subprocess.run([*ENGINE, *args], check=True, capture_output=True, text=True).stdout.strip()


def pod() -> tuple[dict, dict]:
    """The Deployment's pod spec and its container, as deploy/kubernetes/imdb-sentiment.yaml ships them."""
    manifest = yaml.safe_load_all((ROOT / "deploy/kubernetes/imdb-sentiment.yaml").read_text())
    (spec,) = [d["spec"]["template"]["spec"] for d in manifest if d["kind"] == "Deployment"]
    return spec, spec["containers"][0]


@pytest.fixture(scope="module")
def container():
    spec, shipped = pod()
    user = f"{spec['securityContext']['runAsUser']}:{spec['securityContext']['runAsGroup']}"
    writable = [arg for mount in shipped["volumeMounts"] for arg in ("--tmpfs", mount["mountPath"])]
    started = time.perf_counter()
    container_id = engine(
        "run", "-d", "--read-only", *writable, "--user", user, "--cpus", shipped["resources"]["limits"]["cpu"],
        "-p", f"127.0.0.1:{PORT}:3000", IMAGE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{PORT}"
    try:
        ready_s = wait_until(lambda health: health.status_code == 200, f"{url}/health", started, container_id)
        warm_s = wait_until(common.ready, f"{url}/health", started, container_id)  # fp32 answers until int8 checked
        yield {"id": container_id, "url": url, "start_to_ready_s": ready_s, "start_to_warm_s": warm_s}
    finally:
        subprocess.run([*ENGINE, "rm", "-f", container_id], capture_output=True, check=False)


def wait_until(ready: Callable[[requests.Response], bool], url: str, started: float, container_id: str) -> float:
    """Seconds from `started` until `url` answers `ready`."""
    while time.perf_counter() - started < 120:
        try:
            if ready(requests.get(url, timeout=1)):
                return time.perf_counter() - started
        except requests.RequestException:
            pass
        time.sleep(0.05)
    pytest.fail(f"container not ready in 120 s: {engine('logs', container_id)[-2000:]}")


def test_image_carries_only_the_serving_code(container):
    """The Bento's source is bentofile.yaml's include list, nothing picked up elsewhere in the project tree."""
    src = "/home/bentoml/bento/src"
    found = engine("exec", container["id"], "find", src, "-type", "f", "-not", "-path", "*/__pycache__/*")
    assert {path.removeprefix(f"{src}/") for path in found.splitlines()} == {
        "bentofile.yaml",
        "service.py",
        "requirements-serve.txt",
        *(str(p.relative_to(ROOT)) for p in (ROOT / "serving").glob("**/*.py")),
        "reports/ui/examples.json",
    }


def contents(container_id: str, size_mb: float) -> dict:
    """What each top-level serving requirement adds (measured by the image's Python), the model files, the rest."""
    script = (ROOT / "reporting" / "image_sizes.py").read_text()
    requirements = "/home/bentoml/bento/src/requirements-serve.txt"  # the copy the image was built from
    packages = json.loads(engine("exec", container_id, "python", "-c", script, requirements))
    models_mb = int(engine("exec", container_id, "du", "-sk", "/home/bentoml/bento/models").split()[0]) / 1e3
    base_mb = int(engine("image", "inspect", BASE_IMAGE, "--format", "{{.Size}}")) / 1e6
    rest_mb = size_mb - packages["environment_mb"] - packages["bytecode_mb"] - models_mb - base_mb
    return packages | {"models_mb": round(models_mb, 1), "base_mb": round(base_mb, 1), "rest_mb": round(rest_mb, 1)}


CPUS = "from serving.settings import SETTINGS; print(SETTINGS.workers)"  # the threads the service chose


def mixed_load(url: str, seconds: float = 30, clients: int = 4) -> None:
    """Real reviews as single and batch requests from a few clients, and explanations beside them."""
    from concurrent.futures import ThreadPoolExecutor

    reviews = common.sample_reviews(400)
    deadline = time.monotonic() + seconds

    def client(n: int) -> None:
        with requests.Session() as session:
            while time.monotonic() < deadline:
                n += 1
                if n % 9 == 0:
                    session.post(f"{url}/predict_batch", json={"texts": reviews[n % 390 : n % 390 + 8]}, timeout=60)
                elif n % 25 == 0:
                    session.post(f"{url}/explain", json={"text": reviews[n % 400]}, timeout=60)
                else:
                    session.post(f"{url}/predict", json={"text": reviews[n % 400]}, timeout=60)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))


def test_container_serves_and_reports(container):
    url = container["url"]
    health = requests.get(f"{url}/health").json()
    prediction = requests.post(f"{url}/predict", json={"text": "What a fantastic, heartfelt film."}).json()
    assert prediction["label"] == "pos" and prediction["model_version"] == health["version"]
    batch = requests.post(f"{url}/predict_batch", json={"texts": ["Awful.", "Brilliant!"]}).json()
    assert [p["label"] for p in batch["predictions"]] == ["neg", "pos"]
    assert requests.post(f"{url}/predict", json={"text": ""}).status_code == 422
    assert health["selfcheck"]["served"] in ("int8", "fp32")  # int8 re-checked on this CPU inside the container
    spec, shipped = pod()
    image_user = engine("run", "--rm", "--entrypoint", "id", IMAGE)  # the image's own user, as the kubelet sees it
    assert f"uid={spec['securityContext']['runAsUser']}(" in image_user, image_user
    assert f"gid={spec['securityContext']['runAsGroup']}(" in image_user, image_user
    assert engine("exec", container["id"], "id", "-u") != "0"  # non-root
    threads = int(engine("exec", "-w", "/home/bentoml/bento/src", container["id"], "python", "-c", CPUS))
    assert threads <= int(float(shipped["resources"]["limits"]["cpu"]))  # the CPU limit, not the host's cores
    assert engine("exec", container["id"], "sh", "-c", "touch /home/bentoml/x 2>&1 || echo read-only").endswith(
        "read-only"
    )
    assert "prediction" in engine("logs", container["id"])  # request log on stdout
    ui = requests.get(f"{url}/ui/")
    assert ui.status_code == 200 and "gradio" in ui.text.lower()
    explanation = requests.post(f"{url}/explain", json={"text": "Dull and badly acted."}).json()
    assert explanation["label"] == "neg" and [w["word"] for w in explanation["words"]] == [
        "Dull",
        "and",
        "badly",
        "acted",
    ]
    mixed_load(url)
    peak = "cat /sys/fs/cgroup/memory.peak 2>/dev/null || cat /sys/fs/cgroup/memory/memory.max_usage_in_bytes"  # v2, v1
    peak_mb = int(engine("exec", container["id"], "sh", "-c", peak)) / 2**20
    size_mb = int(engine("image", "inspect", IMAGE, "--format", "{{.Size}}")) / 1e6
    out = ROOT / "reports" / "container"
    out.mkdir(parents=True, exist_ok=True)
    engine_name = subprocess.run(
        ["bash", "-c", "source .ci/container-engine.sh && echo $ENGINE"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    report = {
        "image": IMAGE,
        "size_mb": round(size_mb, 1),
        "start_to_ready_s": round(container["start_to_ready_s"], 2),  # /health 200: fp32 answers
        "start_to_warm_s": round(container["start_to_warm_s"], 2),  # int8 checked, explainer and web UI built
        "engine": engine_name,
        "cpu": cpu_flags(),  # start time depends on it
        "model_version": health["version"],
        "served": health["selfcheck"]["served"],
        "peak_memory_mb": round(peak_mb, 1),  # after a mixed load and /explain: the manifest's limit stays above
        "contents": contents(container["id"], size_mb),
    }
    (out / "container.json").write_text(json.dumps(report, indent=2) + "\n")
    assert size_mb < MAX_IMAGE_MB and size_mb < IMAGE_BUDGET_MB, report  # the seed's limit, then the budget
    assert container["start_to_ready_s"] < 15, report
