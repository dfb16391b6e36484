"""Keep CPU-heavy calls off the eventlet hub.

Under ``nameko run`` every worker is a green thread on one hub: a 30 ms
password hash would stall every other worker (and every RPC reply) for 30 ms.
:func:`offload` runs such a call in eventlet's native thread pool when the
process is monkey-patched, and directly otherwise (unit tests, plain scripts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def offload(fn: Callable[..., T], *args, **kwargs) -> T:
    from eventlet import patcher

    if patcher.is_monkey_patched("thread"):
        from eventlet import tpool

        return tpool.execute(fn, *args, **kwargs)
    return fn(*args, **kwargs)


class Heartbeat:
    """Call ``beat()`` every ``interval`` seconds in the background until
    :meth:`stop` (or until ``beat`` returns False). A green thread under
    ``nameko run`` (threading is patched), a thread elsewhere; ``beat`` must
    use its own resources (its own database session), not the worker's."""

    def __init__(self, interval: float, beat: Callable[[], bool]):
        import threading

        self.interval, self.beat = interval, beat
        self.stopped = threading.Event()
        self.alive = True  # False once a beat said so
        self.thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(self.interval + 5)

    def _loop(self) -> None:
        import logging

        while not self.stopped.wait(self.interval):
            try:
                if not self.beat():
                    self.alive = False
                    return
            except Exception:  # a missed beat is retried at the next interval
                logging.getLogger(__name__).exception("heartbeat failed")
