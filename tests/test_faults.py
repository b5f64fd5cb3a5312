"""Fault drills against a server of their own: kill -9 of each worker under load, and overload; and which fault
answers what (503: worth a retry; 500: a bug).

What must hold: while a worker is down, /health says 503 and requests fail fast (no hang); 200 is back as soon as
BentoML has restarted the worker; past the admission limit, requests get a fast 503 with Retry-After, none times
out, the admitted ones stay fast, and the service recovers.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import aiohttp
import psutil
import pytest
import requests
from bentoml.exceptions import InternalServerError, ServiceUnavailable

from loadtests.common import bentoml_serve, running
from loadtests.overload import OverloadConfig, drill
from serving import errors
from serving.settings import ServiceSettings
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(600)
REVIEW = "The plot was thin but the acting carried it; I would watch it again."
# A failing request answers within the service's own deadline (batching window + classify timeout) plus slack, never
# at the 60 s traffic timeout.
FAIL_FAST_S = ServiceSettings.from_env().max_latency_ms / 1000 + ServiceSettings.from_env().classify_timeout_s + 2.0
# BentoML's arbiter respawns a dead worker on its next check (every `worker_check_s`: serving/compat.py),
# and the new worker then starts (imports, ONNX sessions, the int8 self-check): 200 is back within the 10 s the
# service promises (docs/API.md).
RECOVERY_S = 10.0


@pytest.fixture
def own_server():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(bentoml_serve(port), f"{url}/health", {"BENTOML_HOME": os.environ["BENTOML_HOME"]}) as process:
        yield url, process


def worker_of(server: subprocess.Popen, service: str) -> psutil.Process:
    """The worker process serving `service` among the server's descendants (its command line names it)."""
    for child in psutil.Process(server.pid).children(recursive=True):
        if service in " ".join(child.cmdline()):
            return child
    raise LookupError(f"no worker for {service}")


class Load:
    """Background clients sending /predict; records (start time, seconds, status) of every request."""

    def __init__(self, url: str, clients: int):
        self.url, self.results, self.stop = url, [], threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                status = requests.post(f"{self.url}/predict", json={"text": REVIEW}, timeout=30).status_code
            except requests.ConnectionError:
                status = "refused"
            except requests.Timeout:
                status = "timeout"
            self.results.append((started, time.monotonic() - started, status))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        for thread in self.threads:
            thread.join(35)


@pytest.mark.parametrize("service", ["onnx-classifier", "sentiment-api"])
def test_kill_9_of_a_worker_under_load(own_server, service):
    url, process = own_server
    victim = worker_of(process, service)
    with Load(url, clients=4) as load:
        time.sleep(2)
        killed = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        health_during, waited_for_restart = [], False
        while True:
            try:
                probed = time.monotonic()
                health = requests.get(f"{url}/health", timeout=FAIL_FAST_S)
                health_during.append(health.status_code)
                # a 200 that took this long waited for the restarted classifier (its socket's backlog belongs to
                # BentoML's arbiter), not a 200 while it was down
                waited_for_restart |= health.status_code == 200 and time.monotonic() - probed > 0.3
                if health.status_code == 200 and time.monotonic() - killed > 0.5:
                    break
            except requests.ConnectionError:
                health_during.append("refused")
            except requests.Timeout:  # the API worker is down: the probe waits in the arbiter's backlog
                health_during.append("waited")
            assert time.monotonic() - killed < RECOVERY_S + 5, f"not healthy again: {health_during[-5:]}"
            time.sleep(0.1)
        recovered = time.monotonic() - killed
        time.sleep(1)
    after_kill = [r for r in load.results if r[0] >= killed]
    failed = [r for r in after_kill if r[2] != 200]
    print(f"{service}: healthy again after {recovered:.1f} s; {len(failed)} of {len(after_kill)} requests failed")
    assert recovered < RECOVERY_S
    if service == "onnx-classifier" and failed:  # /health never says 200 at once while the classifier is down:
        # it says 503, or its status call waited for the new worker
        assert 503 in health_during or waited_for_restart, (health_during, failed)
    # (the API worker's listening socket belongs to BentoML's arbiter: connections wait in its backlog for the
    # restarted worker instead of being refused)
    assert all(seconds < FAIL_FAST_S for _, seconds, _ in failed), failed  # failures are fast, no hang
    assert all(status in (503, "refused") for _, _, status in failed), failed
    assert max(seconds for _, seconds, _ in after_kill) < RECOVERY_S + FAIL_FAST_S  # nothing waits for long
    assert requests.post(f"{url}/predict", json={"text": REVIEW}).status_code == 200


def test_overload_sheds_fast_and_keeps_the_admitted_fast(own_server):
    """64 closed-loop clients of real reviews that wait the Retry-After they are given: admitted p95 within twice the
    250 ms target and the shed answers' median within twice their 50 ms target (twice: a loaded CI machine), only 200
    and 503 + Retry-After, no review the cascade answers alone shed by the transformer's queue, and a normal answer
    afterwards. Clients that send again at once are `make overload`'s (reports/overload/OVERLOAD.md): there the
    refusals themselves fill the API worker's event loop on 2 cores, and the targets are missed."""
    url, _ = own_server
    summary = drill(url, OverloadConfig(clients=64, seconds=10, reviews=200, honour_retry_after=True))
    print(summary)
    assert set(summary["statuses"]) <= {"200", "503"}, summary["statuses"]  # no timeouts, no refusals
    assert summary["shed"]["n"] > 0 and summary["shed_with_retry_after"] == summary["shed"]["n"]
    assert summary["admitted"]["p95_ms"] <= 2 * 250 and summary["shed"]["p50_ms"] <= 2 * 50
    assert summary["lexical_reviews_shed"] == 0 and summary["paths"].get("lexical", 0) > 0
    assert summary["status_after"] == 200


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (aiohttp.ClientConnectionError("connection refused"), 503),  # the classifier is down or restarting
        (aiohttp.ServerDisconnectedError(), 503),
        (TimeoutError(), 503),  # past the batching deadline + classify timeout
        (ServiceUnavailable("batching deadline"), 503),  # the classifier's own 503
        (InternalServerError("a bug in the classifier"), 500),
        (KeyError("label_names"), 500),  # a bug on the API's side
    ],
)
def test_unavailable_is_503_and_a_bug_is_500(fault, status):
    with pytest.raises(Exception) as raised, errors.classifier_call():
        raise fault
    answered = raised.value.status if isinstance(raised.value, errors.ApiError) else 500
    assert answered == status, repr(raised.value)
    assert (raised.value is fault) == (status == 500)  # a bug goes on unchanged, for the 500 handler to log


def test_a_bug_answers_500_in_the_error_shape_with_its_traceback_logged(tmp_path):
    """A BentoML API that raises (`errors.in_error_shape`, served by `bentoml serve`): the JSON error shape quoting
    the request id, no Retry-After, and one log record with the traceback under that id."""
    port, log = free_port(), tmp_path / "broken.log"
    command = [sys.executable, "-m", "bentoml", "serve", "tests.services:Broken", "--port", str(port)]
    with log.open("wb") as output, subprocess.Popen(command, stdout=output, stderr=output) as process:
        try:
            for _ in range(120):
                with contextlib.suppress(requests.ConnectionError):
                    if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        break
                time.sleep(0.5)
            response = requests.post(f"http://127.0.0.1:{port}/broken", json={}, headers={"x-request-id": "req-42"})
        finally:
            process.terminate()
    assert response.status_code == 500 and "retry-after" not in response.headers
    body = response.json()
    assert set(body) == {"error", "detail"} and "KeyError" in body["error"] and "req-42" in body["error"]
    logged = log.read_text()
    assert logged.count("(request req-42)") == 1 and "Traceback" in logged and "KeyError: 'label_names'" in logged


def test_clients_that_never_send_their_body_cost_only_themselves():
    """More half-sent requests (headers announcing a body, then nothing) than the service has slots: others still
    get answers, and each half-sent one gets a 408 once the body deadline has passed."""
    port, limit, deadline_s = free_port(), 16, 3
    url = f"http://127.0.0.1:{port}"
    env = {"BENTOML_HOME": os.environ["BENTOML_HOME"], "MAX_CONCURRENCY": str(limit), "BODY_TIMEOUT_S": str(deadline_s)}
    with running(bentoml_serve(port), f"{url}/health", env):
        stalled = []
        for _ in range(2 * limit):
            connection = socket.create_connection(("127.0.0.1", port))
            connection.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            )
            stalled.append(connection)
        time.sleep(0.5)  # every stalled request is in the service
        assert requests.post(f"{url}/predict", json={"text": REVIEW}, timeout=10).status_code == 200
        for connection in stalled:
            connection.settimeout(deadline_s + 5)
            assert connection.recv(4096).startswith(b"HTTP/1.1 408 "), "no 408 within the body deadline"
            connection.close()
        assert requests.post(f"{url}/predict", json={"text": REVIEW}, timeout=10).status_code == 200
