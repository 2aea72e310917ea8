"""LocalMapperThread: the tracker can wait for a keyframe's new points without waiting for its local BA."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from slam.errors import TrackingError
from slam.mapping import LocalMapperThread


class _StubCore:
    """Stands in for LocalMapper: makes a keyframe's points, then 'adjusts' until released."""

    def __init__(self) -> None:
        self.mcfg = SimpleNamespace(ba_process=False)
        self.bundle_solver = None
        self.abort_ba = threading.Event()
        self.on_points_ready = None
        self.release_ba = threading.Event()
        self.in_ba = threading.Event()
        self.done: list[str] = []
        self.num_ba_writes = 0
        self.queued: list[tuple[str, int | None]] = []

    def note_queued(self, kf, ba_writes_seen=None) -> None:
        self.queued.append((kf.name, ba_writes_seen))

    def process(self, kf) -> None:
        if kf.name == "culled":
            return  # skipped before making points (a keyframe culled meanwhile)
        if kf.name == "broken":
            raise RuntimeError("mapping failed")
        self.done.append(kf.name)
        self.on_points_ready()
        self.in_ba.set()
        assert self.release_ba.wait(10.0)


def _kf(name: str, kf_id: int = 0) -> SimpleNamespace:
    return SimpleNamespace(name=name, id=kf_id)


def _wait_in_thread(fn) -> threading.Thread:
    th = threading.Thread(target=fn, daemon=True)
    th.start()
    return th


def test_wait_points_returns_while_local_ba_still_runs():
    core = _StubCore()
    mapper = LocalMapperThread(core)
    try:
        mapper.insert(_kf("kf0", 0))
        t0 = time.monotonic()
        mapper.wait_points(timeout=5.0)
        assert time.monotonic() - t0 < 4.0  # not the timeout
        assert core.done == ["kf0"] and core.in_ba.is_set()
        assert mapper.backlog == 1  # BA of kf0 is still in work
        waiter = _wait_in_thread(mapper.wait_idle)
        waiter.join(0.2)
        assert waiter.is_alive()  # waiting for the whole keyframe would block here
    finally:
        core.release_ba.set()
        mapper.stop()


def test_wait_points_waits_for_every_keyframe_inserted_so_far():
    core = _StubCore()
    mapper = LocalMapperThread(core)
    try:
        mapper.insert(_kf("kf0", 0))
        mapper.insert(_kf("kf1", 1))  # queued behind kf0's BA
        core.in_ba.wait(5.0)
        waiter = _wait_in_thread(lambda: mapper.wait_points(timeout=5.0))
        waiter.join(0.2)
        assert waiter.is_alive() and core.done == ["kf0"]  # kf1 has no points yet
        core.release_ba.set()
        waiter.join(5.0)
        assert not waiter.is_alive() and core.done == ["kf0", "kf1"]
    finally:
        core.release_ba.set()
        mapper.stop()


@pytest.mark.parametrize("kf", ["culled", "broken"])
def test_wait_points_is_released_by_skipped_and_failed_keyframes(kf):
    core = _StubCore()
    core.release_ba.set()
    mapper = LocalMapperThread(core)
    try:
        mapper.insert(_kf(kf))
        t0 = time.monotonic()
        mapper.wait_points(timeout=5.0)
        assert time.monotonic() - t0 < 4.0
        if kf == "broken":
            with pytest.raises(TrackingError, match="mapping failed"):
                mapper.check()
    finally:
        mapper.stop()


def test_insert_tells_the_core_which_map_the_keyframe_was_tracked_against():
    core = _StubCore()
    core.num_ba_writes = 4
    mapper = LocalMapperThread(core)
    try:
        assert mapper.num_ba_writes == 4
        mapper.insert(_kf("kf0", 0), 3)  # tracked before the fourth local BA wrote back
        mapper.insert(_kf("kf1", 1))
        assert core.queued == [("kf0", 3), ("kf1", None)]
    finally:
        core.release_ba.set()
        mapper.stop()
