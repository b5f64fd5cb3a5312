"""The OpenAPI document is the contract: schemathesis generates requests from it and checks every answer."""

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(900)


def test_generated_clients_never_break_the_contract(server):
    """>= 1,000 generated cases over the API's operations, every schemathesis check, zero failures, against a warm
    service (until its explainer has warmed up, /explain answers a declared 503, which schemathesis counts as a
    failure)."""
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{server}/docs.json",
        "--checks",
        "all",
        "--max-examples",
        "500",
        "--seed",
        "1",
        "--request-timeout",
        "30",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-6000:]
    (generated,) = re.findall(r"(\d+) generated", result.stdout)
    assert int(generated) >= 1000
