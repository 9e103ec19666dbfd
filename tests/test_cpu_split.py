"""benchmarks.cpu_split attributes CPU to the thread that spent it (issue 20's split)."""

from __future__ import annotations

import threading
import time

from benchmarks.cpu_split import _task_cpu


def test_cpu_is_counted_for_the_named_thread_that_spent_it() -> None:
    burnt, release = threading.Event(), threading.Event()

    def burn() -> None:
        while time.thread_time() < 0.3:  # this thread's own CPU, whatever the machine's load
            pass
        burnt.set()
        release.wait(10)

    worker = threading.Thread(target=burn, name="split-burner")
    idle = threading.Thread(target=release.wait, args=(10,), name="split-idle")
    worker.start()
    idle.start()
    try:
        assert burnt.wait(30)
        cpu = _task_cpu()
    finally:
        release.set()
        worker.join()
        idle.join()
    assert cpu["split-burner"] >= 0.25  # /proc ticks: 0.3 s less rounding
    assert cpu["split-idle"] < 0.05
