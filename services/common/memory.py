"""A service gives large freed allocations back to the system.

glibc serves an allocation above its mmap threshold (128 KiB at first) with a
mapping of its own, unmapped when freed; but once such a block is freed, it
raises the threshold to that block's size (up to 32 MiB), and from then on
blocks that size come from a heap, where freed memory stays resident. On a
thread's heap (``offload`` runs argon2 in a thread), not even ``malloc_trim``
returns the top of it. So auth, after its second password hash (argon2id's 19
MiB), kept those 19 MiB for good (116-120 MB resident after the benchmark's
load against a 100 MB target). A fixed threshold (``M_MMAP_THRESHOLD``, set
with ``mallopt``) turns that adjustment off: a block of 1 MiB or more is
always its own mapping and leaves the resident set when freed. Smaller blocks
(most of a request's work) are served from the heaps as before.

Called once as a service starts (:class:`LargeAllocations`). Without glibc
(another C library) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

from nameko.extensions import DependencyProvider

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
LARGE_ALLOCATION_BYTES = 1 << 20


def return_large_allocations(threshold: int = LARGE_ALLOCATION_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where it cannot be set."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1


class LargeAllocations(DependencyProvider):
    """Sets :func:`return_large_allocations` as the service's container starts."""

    def setup(self) -> None:
        if not return_large_allocations():
            log.info("the C library's mmap threshold cannot be set: left as it is")
