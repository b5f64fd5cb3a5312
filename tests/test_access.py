"""Optional API keys on a real server of its own (`API_KEYS` set): the model's routes and the web UI want a key, the
operational routes stay open, the OpenAPI document says so, and generated clients with a key keep the contract."""

import os
import subprocess
import sys

import pytest
import requests

from loadtests.common import bentoml_serve, running
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(600)
KEYS = ("alpha-key-0123456789", "beta-key-9876543210")
REVIEW = {"text": "A moving, beautifully acted film."}
GUARDED = {"/predict": REVIEW, "/predict_batch": {"texts": [REVIEW["text"]]}, "/explain": REVIEW}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    port, log = free_port(), tmp_path_factory.mktemp("keys") / "predictions.jsonl"
    url = f"http://127.0.0.1:{port}"
    env = {"BENTOML_HOME": os.environ["BENTOML_HOME"], "API_KEYS": ",".join(KEYS), "PREDICTION_LOG": str(log)}
    with running(bentoml_serve(port), f"{url}/health", env):
        yield url, log


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("path", GUARDED)
def test_model_routes_want_a_key(keyed, path):
    url, log = keyed
    for headers in ({}, bearer("wrong"), bearer(KEYS[0][:-1]), {"Authorization": KEYS[0]}):
        response = requests.post(f"{url}{path}", json=GUARDED[path], headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert set(response.json()) == {"error", "detail"} and response.headers["www-authenticate"] == "Bearer"
    for key in KEYS:
        assert requests.post(f"{url}{path}", json=GUARDED[path], headers=bearer(key)).status_code == 200
    assert not any(key in log.read_text() for key in KEYS)  # never logged


def test_operational_routes_stay_open(keyed):
    url, _ = keyed
    for path in ("/health", "/livez", "/readyz", "/metrics", "/docs.json"):
        assert requests.get(f"{url}{path}").status_code == 200, path


def test_openapi_declares_the_scheme_and_the_401(keyed):
    spec = requests.get(f"{keyed[0]}/docs.json").json()
    (scheme,) = spec["components"]["securitySchemes"].values()
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path in GUARDED:
        operation = spec["paths"][path]["post"]
        assert operation["security"] and "401" in operation["responses"], path
    assert "security" not in spec["paths"]["/health"]["get"]


def test_generated_clients_with_a_key_keep_the_contract(keyed):
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{keyed[0]}/docs.json", "--checks", "all"]
    command += ["--max-examples", "25", "--seed", "1", "--header", f"Authorization: Bearer {KEYS[1]}"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-6000:]


def test_the_ui_wants_a_login_with_a_key(keyed):
    url = keyed[0]
    assert requests.get(f"{url}/ui/config").status_code == 401
    browser = requests.Session()
    refused = browser.post(f"{url}/ui/login", data={"username": "ana", "password": "wrong"})
    assert refused.status_code >= 400 and browser.get(f"{url}/ui/config").status_code == 401
    assert browser.post(f"{url}/ui/login", data={"username": "ana", "password": KEYS[0]}).status_code == 200
    assert browser.get(f"{url}/ui/config").status_code == 200
