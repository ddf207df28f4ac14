"""Run a command and record how long it took, on what machine, as JSON.

    python scripts/run_timed.py metrics/bundle-train.json -- python -m spacy train ...
"""
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        raise SystemExit("usage: run_timed.py RECORD.json -- COMMAND ...")
    record, command = Path(sys.argv[1]), sys.argv[3:]
    start = time.time()
    code = subprocess.call(command)
    minutes = (time.time() - start) / 60
    if code == 0:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({
            "command": " ".join(command), "minutes": round(minutes, 1),
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(start)),
            "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        }, indent=2), encoding="utf8")
        print(f"{minutes:.1f} min -> {record}")
    raise SystemExit(code)


if __name__ == "__main__":
    main()
