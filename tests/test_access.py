"""Optional API keys on a real server of its own (`API_KEYS` and `API_KEYS_FILE` set): the model's routes and the web
UI want a key, the operational routes stay open, the OpenAPI document says so, generated clients with a key keep the
contract, the key file is read again when it changes, and a key source without a key stops the start."""

import os
import subprocess
import sys
import time

import pytest
import requests

from loadtests.common import bentoml_serve, running
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(600)
KEYS = ("alpha-key-0123456789", "beta-key-9876543210")
REVIEW = {"text": "A moving, beautifully acted film."}
GUARDED = {"/predict": REVIEW, "/predict_batch": {"texts": [REVIEW["text"]]}, "/explain": REVIEW}


KEY_FILE = "# rotate monthly\n\n{}\n"  # a comment and a blank line, which are not keys


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    port, log, key_file = free_port(), folder / "predictions.jsonl", folder / "keys"
    key_file.write_text(KEY_FILE.format(KEYS[1]))
    url = f"http://127.0.0.1:{port}"
    env = {"BENTOML_HOME": os.environ["BENTOML_HOME"], "API_KEYS": KEYS[0], "API_KEYS_FILE": str(key_file)}
    env |= {"METRICS_NEED_KEY": "true"}
    with running(bentoml_serve(port), f"{url}/health", env | {"PREDICTION_LOG": str(log)}):
        yield url, log, key_file


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("path", GUARDED)
def test_model_routes_want_a_key(keyed, path):
    url, log, _ = keyed
    for headers in ({}, bearer("wrong"), bearer(KEYS[0][:-1]), {"Authorization": KEYS[0]}, bearer("# rotate monthly")):
        response = requests.post(f"{url}{path}", json=GUARDED[path], headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert set(response.json()) == {"error", "detail"} and response.headers["www-authenticate"] == "Bearer"
    for key in KEYS:
        assert requests.post(f"{url}{path}", json=GUARDED[path], headers=bearer(key)).status_code == 200
    assert not any(key in log.read_text() for key in KEYS)  # never logged


def test_operational_routes_stay_open_and_metrics_want_a_key_when_asked(keyed):
    url = keyed[0]
    for path in ("/health", "/livez", "/readyz", "/docs.json"):
        assert requests.get(f"{url}{path}").status_code == 200, path
    assert requests.get(f"{url}/metrics").status_code == 401  # METRICS_NEED_KEY
    assert requests.get(f"{url}/metrics", headers=bearer(KEYS[1])).status_code == 200


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


def test_a_changed_key_file_rotates_and_revokes_without_a_restart(keyed):
    url, _, key_file = keyed
    rotated = "gamma-key-5555555555"
    key_file.write_text(KEY_FILE.format(rotated))
    time.sleep(2.5)  # the file is looked at again at most every second
    assert requests.post(f"{url}/predict", json=REVIEW, headers=bearer(rotated)).status_code == 200
    assert requests.post(f"{url}/predict", json=REVIEW, headers=bearer(KEYS[1])).status_code == 401  # revoked
    assert requests.post(f"{url}/predict", json=REVIEW, headers=bearer(KEYS[0])).status_code == 200  # API_KEYS'
    key_file.write_text("# every key revoked\n")
    time.sleep(2.5)
    assert requests.post(f"{url}/predict", json=REVIEW, headers=bearer(rotated)).status_code == 401  # fails closed
    assert requests.post(f"{url}/predict", json=REVIEW, headers=bearer(KEYS[0])).status_code == 200
    key_file.write_text(KEY_FILE.format(KEYS[1]))


@pytest.mark.parametrize("source", ["empty file", "comments only", "API_KEYS of commas"])
def test_a_key_source_without_a_key_stops_the_start(tmp_path, source):
    key_file = tmp_path / "keys"
    key_file.write_text({"empty file": "", "comments only": "# none yet\n\n"}.get(source, ""))
    env = {"API_KEYS": " , "} if source == "API_KEYS of commas" else {"API_KEYS_FILE": str(key_file)}
    command = bentoml_serve(free_port())
    started = subprocess.run(command, env=os.environ | env, capture_output=True, text=True, timeout=120)
    assert started.returncode != 0 and "yields no API key" in started.stdout + started.stderr
