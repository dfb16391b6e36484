"""services/common/memory.py: a freed large block leaves the resident set
(auth's argon2 hashes, run in a thread, kept 19 MiB resident without it)."""

from __future__ import annotations

import json
import subprocess
import sys

# a fresh interpreter hashes three passwords in a thread (as auth's offload
# does) and reports how much its resident set grew, once they are done
SCRIPT = """
import json, sys, threading
from pathlib import Path
from services.common.memory import return_large_allocations
from services.auth.passwords import HASHER

def rss_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

set_ = return_large_allocations() if sys.argv[1] == "fixed" else None
HASHER.hash("warm up the module")
before = rss_kib()
for _ in range(3):
    worker = threading.Thread(target=HASHER.hash, args=("a long enough passphrase",))
    worker.start()
    worker.join()
print(json.dumps({"set": set_, "grown_mib": (rss_kib() - before) / 1024}))
"""


def grown(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         check=True, timeout=60)
    return json.loads(out.stdout)


def test_a_freed_argon2_block_leaves_the_resident_set():
    fixed = grown("fixed")
    assert fixed["set"] is True
    assert fixed["grown_mib"] < 6, fixed


def test_without_it_the_block_stays_resident():
    """What the first test guards against (so it can fail): the 19 MiB stay."""
    assert grown("default")["grown_mib"] > 15
