"""Run every benchmark: python -m bench [name ...]"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["bench.gateway_auth", "bench.purge", "bench.pipeline", "bench.streaming",
              "bench.read_path", "bench.submit_parts"]


def main(argv: list[str]) -> int:
    selected = [b for b in BENCHMARKS if not argv or b.rsplit(".", 1)[-1] in argv]
    for name in selected:
        print(f"== {name}")
        importlib.import_module(name).main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
