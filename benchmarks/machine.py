"""What every benchmark measures about the machine: call timing and the load other processes add."""
import os
import subprocess
import time
from pathlib import Path


def timed(fn, *args):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def cpu_seconds():
    """(CPU seconds the whole machine has been busy, CPU seconds of this process and its children)."""
    busy = [int(x) for x in Path("/proc/stat").read_text().split()[1:9]]  # the "cpu" line
    own = os.times()
    return ((sum(busy) - busy[3] - busy[4]) / os.sysconf("SC_CLK_TCK"),
            own.user + own.system + own.children_user + own.children_system)


def other_load(since, wall: float) -> float:
    """Cores' worth of CPU that other processes used since ``since`` (a ``cpu_seconds()``).

    On a 2-core machine, above ~0.2 the timings measure the contention, not the code.
    """
    now = cpu_seconds()
    return ((now[0] - since[0]) - (now[1] - since[1])) / wall


def status_kb(field: str) -> int:
    """A ``/proc/self/status`` memory figure (VmRSS, VmHWM, ...) in kB."""
    return int(Path("/proc/self/status").read_text().split(field + ":")[1].split()[0])


def reset_peak_rss() -> None:
    """Start VmHWM (the peak RSS) afresh from the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
