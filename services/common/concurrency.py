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
