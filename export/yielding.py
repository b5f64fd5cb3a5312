"""Work beside a serving service, run so that it yields to it: `make export`, `make retrain` and the export that
`make serve` starts beside the service.

    python -m export.yielding [--unpaced] <command ...>

The command runs at a lower CPU priority, with half the CPUs this may use (rounded up) for PyTorch, MKL and the
tokenizers, and paced: while the rest of the machine keeps more than `BUSY_CORES` busy (a service answering), it runs
only `SHARE_WHEN_BUSY` of each `PERIOD_S` and is paused the rest (SIGSTOP / SIGCONT); on an idle machine it runs
whole. Priority alone does not yield (`--unpaced`, measured beside the others by `make beside-drill`): a core the
export runs on, even at a low priority, slows the service's work on the other (shared caches and memory); pacing
takes that time back. The exit status is the command's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import psutil

from serving.core.runtime import YIELDING_NICENESS
from serving.settings import available_cpus

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")  # PyTorch, MKL, the tokenizers
PERIOD_S = 0.1
SHARE_WHEN_BUSY = 0.25  # of each period, while the rest of the machine is busy: the export still ends under load
BUSY_CORES = 0.25  # the rest of the machine's CPU use (in cores) above which the command is paced
WINDOW_S = 0.5  # over which that use is measured
PROC_STAT = Path("/proc/stat")


def yielding(command: list[str], paced: bool = True) -> list[str]:
    """`command` as work beside a serving service runs (this module's command line); `paced=False`: priority and
    threads only."""
    return [sys.executable, "-m", "export.yielding", *([] if paced else ["--unpaced"]), *command]


def machine_busy_s() -> float:
    """CPU seconds every CPU of the machine has spent busy since boot (/proc/stat's first line)."""
    jiffies = [int(x) for x in PROC_STAT.read_text().split("\n", 1)[0].split()[1:]]
    busy = jiffies[:3] + jiffies[5:8]  # user, nice, system; irq, softirq, steal (not idle, iowait)
    return sum(busy) / os.sysconf("SC_CLK_TCK")


def cpu_s(process: psutil.Process) -> float:
    """CPU seconds of `process` and its descendants."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def pace(child: subprocess.Popen) -> None:
    """Until `child` ends: paused for most of each period while the rest of the machine (not the child, not this
    process) was busy over the last `WINDOW_S` (CPU times count in clock ticks: a shorter window would mostly see
    their rounding)."""
    process = psutil.Process(child.pid)
    samples: deque[tuple[float, float]] = deque()  # (when, CPU seconds of everything else), over the window

    def others_s() -> float:
        return machine_busy_s() - cpu_s(process) - time.process_time()

    samples.append((time.monotonic(), others_s()))
    while child.poll() is None:
        time.sleep(PERIOD_S * SHARE_WHEN_BUSY)
        now, others = time.monotonic(), others_s()
        while len(samples) > 1 and now - samples[1][0] >= WINDOW_S:
            samples.popleft()
        then, earlier = samples[0]
        samples.append((now, others))
        if now - then >= WINDOW_S and (others - earlier) / (now - then) > BUSY_CORES:
            os.killpg(child.pid, signal.SIGSTOP)
            time.sleep(PERIOD_S * (1 - SHARE_WHEN_BUSY))
            os.killpg(child.pid, signal.SIGCONT)


def main() -> int:
    paced = sys.argv[1:2] != ["--unpaced"]
    command = sys.argv[1 if paced else 2 :]
    if not command:
        sys.exit(__doc__)
    half = str(max(1, (available_cpus() + 1) // 2))
    env = os.environ | dict.fromkeys(THREAD_VARIABLES, half)
    niced = ["nice", "-n", str(YIELDING_NICENESS), *command]
    child = subprocess.Popen(niced, env=env, process_group=0)  # its own group: paused whole, this process not

    def forward(signum: int, _frame) -> None:  # a stop asked of this process stops the command, paused or not
        for sent in (signal.SIGCONT, signum):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, sent)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        if paced and PROC_STAT.exists():
            pace(child)
        return child.wait()
    except ProcessLookupError:  # ended between a check and a signal
        return child.wait()
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGCONT)


if __name__ == "__main__":
    sys.exit(main())
