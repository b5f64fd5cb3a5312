"""Work beside the service yields to it (`export/yielding.py`, as `make export`, `make retrain` and the export beside
`make serve` run): a lower priority, half the cores' threads, the command's exit status, and paced while the rest of
the machine is busy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from export.yielding import SHARE_WHEN_BUSY, yielding
from serving.core.runtime import YIELDING_NICENESS
from serving.settings import available_cpus

linux_only = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="paced from /proc/stat")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_the_command_runs_niced_with_half_the_cores_and_its_exit_status_is_kept():
    code = "import os; print(os.getpriority(os.PRIO_PROCESS, 0), os.environ['OMP_NUM_THREADS']); raise SystemExit(3)"
    done = subprocess.run(yielding(python(code)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    half = (available_cpus() + 1) // 2
    assert done.stdout.split() == [str(os.getpriority(os.PRIO_PROCESS, 0) + YIELDING_NICENESS), str(half)]


@linux_only
@pytest.mark.skipif(available_cpus() < 2, reason="a busy machine with a free core: two CPUs at least")
def test_beside_a_busy_machine_the_command_gets_its_share_not_a_core():
    """One core kept busy by another process, the other free: unpaced, the command would take that free core whole
    (its CPU time equal to its wall time); paced, it runs a quarter of the time."""
    busy = subprocess.Popen(python("import time\nend = time.time() + 20\nwhile time.time() < end: pass"))
    try:
        spin = "import time\nstart = time.time()\nwhile time.time() - start < 4: pass\nprint(time.process_time() / 4)"
        done = subprocess.run(yielding(python(spin)), capture_output=True, text=True, timeout=60)
    finally:
        busy.kill()
    share = float(done.stdout)
    assert share < 2 * SHARE_WHEN_BUSY, f"the command had {share:.0%} of a core beside a busy one"
