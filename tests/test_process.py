"""The process plumbing below both backends: one server per lock, and no submit stranded by a server's idle exit."""

import random
import threading
import time

from snows_core.runs import process


def test_a_second_server_for_a_held_lock_returns_at_once(tmp_path):
    lock = tmp_path / "server.lock"
    calls = []
    with process.exclusive(lock) as held:
        assert held
        process.serve_exclusively(lock, lambda: calls.append("served"), lambda: True)
    assert calls == []


def test_submits_racing_the_idle_exit_are_never_stranded(tmp_path, monkeypatch):
    """Hundreds of submits timed around the server's idle exit, each starting a server only when the lock is
    free (as `start_detached` does): every item is served, none is left queued."""
    monkeypatch.setattr(process, "IDLE_EXIT_SECONDS", 0.004)
    monkeypatch.setattr(process, "TICK_SECONDS", 0.002)
    lock, guard = tmp_path / "server.lock", threading.Lock()
    queue: list[int] = []
    served: list[int] = []
    servers: list[threading.Thread] = []

    def tick() -> bool:
        with guard:
            if queue:
                served.append(queue.pop(0))
                return True
        return False

    def pending() -> bool:
        with guard:
            return bool(queue)

    def submit(item: int) -> None:
        with guard:
            queue.append(item)  # the run's row is committed
        with process.exclusive(lock) as free:
            pass
        if free:
            server = threading.Thread(
                target=process.serve_exclusively, args=(lock, lambda: process.serve_until_idle(tick), pending)
            )
            server.start()
            servers.append(server)

    rng = random.Random(0)
    for item in range(400):
        submit(item)
        time.sleep(rng.uniform(0, 0.008))  # around the 4 ms idle exit
    for server in servers:
        server.join(timeout=60)
    assert not any(server.is_alive() for server in servers)
    assert queue == [] and sorted(served) == list(range(400))
    assert len(servers) > 10  # the servers really did exit and restart between submits


def test_a_server_log_past_its_limit_is_rotated_when_a_server_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(process, "LOG_MAX_BYTES", 100)
    log = tmp_path / "server.log"
    log.write_text("old line\n" * 20)
    process.start_detached(tmp_path / "server.lock", log, "json.tool", "--help")
    assert (tmp_path / "server.log.1").read_text() == "old line\n" * 20
    deadline = time.monotonic() + 60
    while "usage" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "usage" in log.read_text() and "old line" not in log.read_text()
