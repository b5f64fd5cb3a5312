"""The lock files come from one source, pyproject.toml's extras (`make lock`, .ci/lock.py): the committed ones match
what the tool writes from this environment (installed from them by `make install`), and a drift is caught."""

import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / ".ci" / "lock.py"


def test_the_committed_lock_files_are_what_make_lock_writes():
    result = subprocess.run([sys.executable, str(LOCK), "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_lock_file_that_drifted_from_pyproject_fails_the_check(tmp_path, monkeypatch):
    for name in ("pyproject.toml", "requirements.txt", "requirements-serve.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    serve = tmp_path / "requirements-serve.txt"
    serve.write_text(serve.read_text().replace("bentoml==", "bentoml>="))  # edited by hand
    lock = runpy.run_path(str(LOCK))
    monkeypatch.setitem(lock["main"].__globals__, "ROOT", tmp_path)
    monkeypatch.setattr(sys, "argv", ["lock.py", "--check"])
    with pytest.raises(SystemExit, match=r"requirements-serve\.txt no longer match"):
        lock["main"]()
