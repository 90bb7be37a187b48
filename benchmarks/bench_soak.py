"""Soak benchmark: submits from several processes while workers and the dispatcher are killed, runs are
cancelled or deleted in any state and bundles imported; then every run must have ended as what happened to it
says, with its artifacts complete and nothing orphaned.

    .venv/bin/python benchmarks/bench_soak.py [--submitters 3] [--runs 8] [--seconds 600] [--seed 0]

Each submitter process submits `--runs` small mlp runs (distinct seeds, so none is a cache hit) at
random intervals. Meanwhile the chaos loop, every 1-3 s, does one of: SIGKILL a running worker (that run
must end failed), SIGKILL the dispatcher (its workers are orphaned and finish; the next reader starts a
new dispatcher for the queued runs), cancel a random unfinished run (a run cancelled while queued must
end cancelled; one cancelled while running ends cancelled, or done/failed if it got there first), delete a
random run whatever its state (queued, just claimed, running or finished: it must vanish with its folder while
the queue goes on), or import a finished run's bundle into a second store from two processes at once (one
run, one refusal).
It stops when every run has ended or `--seconds` have passed, then checks:

- every run is final; killed runs failed; runs cancelled while queued are cancelled; runs nothing
  happened to are done (a killed dispatcher's workers finish; a run it had claimed but not started is
  queued again);
- done runs have a result row and model.safetensors, masks.safetensors and report.json; runs that did
  not end done have no result row;
- no run folder without its row, no staging folder, in either store.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from snows_core import PruneConfig  # noqa: E402
from snows_core.runs import RunSpec, RunStatus, RunStore  # noqa: E402
from snows_core.runs.bundle import export_bundle, import_bundle  # noqa: E402
from snows_core.runs.executor import submit, tend_queue  # noqa: E402
from snows_core.runs.store import FINAL  # noqa: E402

ARTIFACTS = ("model.safetensors", "masks.safetensors", "report.json")


def submitter(home: str, index: int, runs: int, seed: int) -> None:
    rng, store = random.Random(seed * 1000 + index), RunStore(home)
    for i in range(runs):
        config = PruneConfig(sparsity=0.5, k=1, n_calib=64, seed=index * 1000 + i)
        submit(store, RunSpec(model="mlp", config=config, eval_size=200))
        time.sleep(rng.uniform(0.2, 2.0))


def import_racing(home: str, folder: str, barrier) -> None:
    barrier.wait()
    with contextlib.suppress(ValueError):  # the other racer got there first
        import_bundle(RunStore(home), folder)


def gone(pid: int, timeout: float = 30) -> None:
    """Wait until process `pid` has died (a zombie counts: it can write nothing more)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] in "ZX":
                return
        except (OSError, IndexError):
            return
        time.sleep(0.05)


def dispatcher_pid(home: Path) -> int | None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"snows_core.runs.local" in cmdline and str(home).encode() in cmdline:
            return int(pid)
    return None


class Chaos:
    """What the chaos loop did, to check every run against it at the end."""

    def __init__(self, store: RunStore, other: RunStore, rng: random.Random) -> None:
        self.store, self.other, self.rng = store, other, rng
        self.killed: set[str] = set()
        self.cancelled_queued: set[str] = set()
        self.cancelled_running: set[str] = set()
        self.counts = {"kill worker": 0, "kill dispatcher": 0, "cancel": 0, "delete": 0, "import race": 0}
        self.imported: set[str] = set()
        self.deleted: dict[str, str] = {}  # run id -> its status when deleted

    def act(self) -> None:
        action = self.rng.choice(list(self.counts))
        done = getattr(self, action.replace(" ", "_"))()
        self.counts[action] += bool(done)

    def kill_worker(self) -> bool:
        running = [r for r in self.store.list(RunStatus.RUNNING.value) if r["worker_pid"]]
        if not running:
            return False
        run = self.rng.choice(running)
        try:
            os.kill(run["worker_pid"], signal.SIGKILL)
        except ProcessLookupError:
            return False
        gone(run["worker_pid"])
        after = self.store.get(run["id"])
        if after["status"] in FINAL and after["error"] != "worker died":
            return False  # it had ended on its own (done, cancelled, a failure of its own) before the signal landed
        self.killed.add(run["id"])
        return True

    def kill_dispatcher(self) -> bool:
        pid = dispatcher_pid(self.store.home)
        if pid is None:
            return False
        os.kill(pid, signal.SIGKILL)
        return True

    def cancel(self) -> bool:
        active = [r for r in self.store.list() if r["status"] not in FINAL]
        if not active:
            return False
        run = self.rng.choice(active)
        before = self.store.request_cancel(run["id"])
        (self.cancelled_queued if before == RunStatus.CANCELLED else self.cancelled_running).add(run["id"])
        return True

    def delete(self) -> bool:
        runs = [r for r in self.store.list() if r["id"] not in self.imported]
        if not runs:
            return False
        run = self.rng.choice(runs)
        self.store.delete(run["id"])
        self.deleted[run["id"]] = run["status"]
        return True

    def import_race(self) -> bool:
        done = [r["id"] for r in self.store.list(RunStatus.DONE.value) if r["id"] not in self.imported]
        if not done:
            return False
        run = self.rng.choice(done)
        folder = export_bundle(self.store, run, Path(tempfile.mkdtemp(prefix="soak-bundle-")) / run)
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(2)
        racers = [ctx.Process(target=import_racing, args=(str(self.other.home), str(folder), barrier)) for _ in "ab"]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(120)
        self.imported.add(run)
        return True


def problems(store: RunStore, other: RunStore, chaos: Chaos) -> list[str]:
    found, results = [], store.results()
    for run in store.list():
        rid, status = run["id"], run["status"]
        if status not in FINAL:
            found.append(f"{rid} is still {status}")
        if rid in chaos.killed and status != RunStatus.FAILED and rid not in chaos.cancelled_running:
            found.append(f"{rid} was killed but ended {status}")
        if rid in chaos.cancelled_queued and status != RunStatus.CANCELLED:
            found.append(f"{rid} was cancelled while queued but ended {status}")
        touched = chaos.killed | chaos.cancelled_queued | chaos.cancelled_running
        if rid not in touched and status != RunStatus.DONE:
            found.append(f"{rid} was left alone but ended {status}: {run['error']}")
        folder = store.run_dir(rid)
        if status == RunStatus.DONE:
            missing = [name for name in ARTIFACTS if not (folder / name).is_file()]
            if missing or rid not in results:
                found.append(f"{rid} is done without {missing or 'its result'}")
        elif rid in results:
            found.append(f"{rid} ended {status} but has a result row")
    for each in (store, other):
        ids = {r["id"] for r in each.list()}
        runs_dir = each.home / "runs"
        for path in runs_dir.iterdir() if runs_dir.is_dir() else []:
            if path.name not in ids:
                found.append(f"{path} has no run row (orphaned or a staging folder)")
    back = {r["id"] for r in store.list()} & set(chaos.deleted)
    found += [f"{rid} was deleted ({chaos.deleted[rid]}) but came back" for rid in back]
    missing_imports = chaos.imported - {r["id"] for r in other.list()}
    found += [f"{rid} was imported twice at once and is not in the second store" for rid in missing_imports]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submitters", type=int, default=3)
    parser.add_argument("--runs", type=int, default=8, help="runs per submitter")
    parser.add_argument("--seconds", type=float, default=600, help="stop the chaos and the wait after this")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="soak-home-"))
    os.environ["SNOWS_HOME"] = str(home)
    store, other = RunStore(home), RunStore(home / "imported")
    rng = random.Random(args.seed)
    ctx = multiprocessing.get_context("spawn")
    submitters = [
        ctx.Process(target=submitter, args=(str(home), i, args.runs, args.seed)) for i in range(args.submitters)
    ]
    tic = time.monotonic()
    for process in submitters:
        process.start()
    chaos = Chaos(store, other, rng)
    while time.monotonic() - tic < args.seconds:
        time.sleep(rng.uniform(1, 3))
        tend_queue(store)  # a reader: fails dead runs, starts a dispatcher for queued ones
        submitting = any(p.is_alive() for p in submitters)
        if not submitting and all(r["status"] in FINAL for r in store.list()):
            break
        if submitting or rng.random() < 0.5:
            chaos.act()
    for process in submitters:
        process.join(60)
    found = problems(store, other, chaos)
    statuses = [r["status"] for r in store.list()]
    print(f"home {home}: {len(statuses)} runs from {args.submitters} submitters in {time.monotonic() - tic:.0f} s")
    print("chaos: " + ", ".join(f"{name} x{count}" for name, count in chaos.counts.items()))
    print("ended: " + ", ".join(f"{s} {statuses.count(s)}" for s in FINAL) + f"; imported {len(other.list())}")
    deleted = list(chaos.deleted.values())
    print("deleted: " + ", ".join(f"{s} {deleted.count(s)}" for s in sorted(set(deleted))))
    print("\n".join(found) if found else "every run ended as what happened to it says; no artifact missing or orphaned")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
