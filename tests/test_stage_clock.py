"""The stage clock: wall time summed over invocations, interrupted ones included."""

import json
import time

import pytest

from segmix.stages.clock import StageClock, recorded_seconds


def test_a_finished_invocation_records_its_time(tmp_path):
    path = tmp_path / "seconds.json"
    with StageClock(path) as clock:
        time.sleep(0.05)
    record = json.loads(path.read_text())
    assert record["finished"] is True
    assert record["seconds"] == pytest.approx(clock.seconds) and 0.05 <= clock.seconds < 1
    assert recorded_seconds(path) == record["seconds"]
    assert recorded_seconds(tmp_path / "missing.json") is None


def test_time_of_an_interrupted_invocation_is_carried_into_the_next(tmp_path):
    path = tmp_path / "seconds.json"
    with pytest.raises(KeyboardInterrupt):
        with StageClock(path, interval=0.01):
            time.sleep(0.2)
            raise KeyboardInterrupt
    interrupted = json.loads(path.read_text())
    assert interrupted["finished"] is False and interrupted["seconds"] >= 0.2
    with StageClock(path) as clock:
        time.sleep(0.05)
    assert clock.carried == interrupted["seconds"]
    assert recorded_seconds(path) >= interrupted["seconds"] + 0.05


def test_a_killed_invocation_leaves_its_periodic_count(tmp_path):
    path = tmp_path / "seconds.json"
    start = time.perf_counter()
    clock = StageClock(path, interval=0.02).__enter__()  # never exited: the process "dies"
    time.sleep(0.3)
    clock._stop.set()
    clock._thread.join()
    written = json.loads(path.read_text())
    assert written["finished"] is False
    assert 0.1 <= written["seconds"] <= time.perf_counter() - start


def test_finished_or_fresh_records_are_not_carried(tmp_path):
    path = tmp_path / "seconds.json"
    path.write_text(json.dumps({"seconds": 100.0, "finished": True}))
    assert StageClock(path).carried == 0.0
    path.write_text(json.dumps({"seconds": 100.0, "finished": False}))
    assert StageClock(path, fresh=True).carried == 0.0
    path.write_text(json.dumps({"seconds": 100.0}))  # written before the clock existed: finished
    assert StageClock(path).carried == 0.0
