"""Helpers for tests that drive the CLI in subprocesses: quick and slow run flags, status polling."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = [
    "--model",
    "mlp",
    "--sparsity",
    "0.5",
    "--mask",
    "magnitude",
    "--reconstruction",
    "snows",
    "--k",
    "1",
    "--n-calib",
    "64",
    "--eval-size",
    "200",
]
SLOW = [
    "--model",
    "resnet20",
    "--sparsity",
    "0.7",
    "--k",
    "3",
    "--n-calib",
    "256",
    "--newton-passes",
    "3",
    "--cg-iters",
    "40",
    "--eval-size",
    "200",
]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snows_core", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ),
    )


def status(run: str) -> dict:
    return json.loads(cli("status", run, "--json").stdout)


def wait_for(run: str, predicate, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = status(run)
        if predicate(s):
            return s
        time.sleep(0.5)
    raise AssertionError(f"timed out; last status {s['status']}")


def submit(*args: str) -> str:
    p = cli("submit", *args)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().splitlines()[-1]


def solving(run: str) -> dict:
    """Wait until the run is running and has recorded a Newton step (mid-solve)."""
    from snows_core.runs import RunStore

    def started(s: dict) -> bool:
        return s["status"] == "running" and any(e["kind"] == "newton_step" for e in RunStore().events(run))

    return wait_for(run, started)
