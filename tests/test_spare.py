"""The warm queue: the local dispatcher's spare worker takes the next run, is replaced, and costs nothing when
killed or left idle (real dispatcher, spare and worker processes)."""

import os
import signal
import time

import pytest

from snows_core.runs import RunStore
from snows_core.runs.local import dispatcher_state
from snows_core.runs.process import pid_alive
from tests.cli_helpers import QUICK, SLOW, cli, solving, submit, wait_for

pytestmark = pytest.mark.slow


def until(predicate, timeout: float = 300.0):
    """`predicate()`'s first truthy answer; generous bounds: seconds idle, minutes on a loaded machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = predicate()
        if answer:
            return answer
        time.sleep(0.2)
    raise AssertionError("timed out")


def live_spare(home, other_than: int | None = None, ready: bool = False) -> int | None:
    state = dispatcher_state(home) or {}
    spare = state.get("spare")
    live = spare and spare != other_than and pid_alive(spare) and (state["spare_ready"] or not ready)
    return spare if live else None


def ended(run: str) -> dict:
    return wait_for(run, lambda s: s["status"] in ("done", "failed", "cancelled"))


@pytest.fixture
def warm(home, monkeypatch):
    """A store whose queue stays warm for the whole test; its dispatcher is killed at the end (the spare follows)."""
    monkeypatch.setenv("SNOWS_IDLE_SECONDS", "600")
    yield home
    state = dispatcher_state(home) or {}
    for pid in (state.get("pid"), state.get("spare")):  # pids only: "spare_ready" is a bool, and True == 1
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_run_submitted_to_a_warm_queue_is_claimed_by_the_spare_which_is_then_replaced(warm):
    first = submit(*QUICK)
    assert ended(first)["status"] == "done"
    spare = until(lambda: live_spare(warm))  # started before the next submit, maybe still importing
    run = submit(*QUICK, "--seed", "1")
    done = ended(run)
    assert done["status"] == "done", done["error"]
    assert done["worker_pid"] == spare
    assert ended(first)["worker_pid"] != spare
    replacement = until(lambda: live_spare(warm, other_than=spare))
    until(lambda: not pid_alive(spare))  # one run per process: the spare that ran a run is gone
    assert replacement != spare


def test_a_killed_spare_loses_nothing_and_is_replaced(warm):
    first = submit(*QUICK)
    assert ended(first)["status"] == "done"
    spare = until(lambda: live_spare(warm))
    os.kill(spare, signal.SIGKILL)
    replacement = until(lambda: live_spare(warm, other_than=spare, ready=True))
    run = submit(*QUICK, "--seed", "1")
    done = ended(run)
    assert done["status"] == "done" and done["worker_pid"] == replacement
    assert [r["status"] for r in RunStore(warm).list()] == ["done", "done"]


def test_a_run_claimed_by_the_spare_can_be_cancelled(warm):
    first = submit(*QUICK)
    assert ended(first)["status"] == "done"
    spare = until(lambda: live_spare(warm))
    run = submit(*SLOW)
    assert solving(run)["worker_pid"] == spare
    assert cli("cancel", run).stdout.strip() == "running"
    cancelled = ended(run)
    assert cancelled["status"] == "cancelled"
    until(lambda: not pid_alive(spare))


def test_an_idle_dispatcher_exits_and_takes_its_spare_with_it(home, monkeypatch):
    monkeypatch.setenv("SNOWS_IDLE_SECONDS", "3")
    run, store, dispatchers, spares = submit(*QUICK), RunStore(home), set(), set()

    def gone() -> bool:  # read the state file often: the spare lives from the run's end to 3 s later
        state = dispatcher_state(home) or {}
        dispatchers.add(state.get("pid"))
        spares.add(state.get("spare"))
        return store.get(run)["status"] == "done" and not (home / "dispatcher.json").exists()

    until(gone)
    assert dispatchers - {None} and spares - {None}
    until(lambda: not any(pid_alive(pid) for pid in (dispatchers | spares) - {None}))


def test_a_killed_dispatcher_takes_its_idle_spare_with_it(warm):
    run = submit(*QUICK)
    assert ended(run)["status"] == "done"
    state = until(lambda: live_spare(warm) and dispatcher_state(warm))
    os.kill(state["pid"], signal.SIGKILL)
    until(lambda: not pid_alive(state["spare"]))  # its pipe closed: nothing to wait for
    again = submit(*QUICK, "--seed", "1")  # a new dispatcher serves the next submit
    assert ended(again)["status"] == "done"
