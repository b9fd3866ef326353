"""``python -m bench [NAME ...]``: run the benchmark modules and print their ratios.

Each ``bench/bench_<name>.py`` module has a ``main() -> None`` that builds its inputs in a
temporary directory, measures the baseline and ours in the same run, and prints one line per
figure with the ratio and its target.
"""

from __future__ import annotations

import importlib
import sys
import time

MODULES = ["store", "cli", "manager", "retention", "export", "inspect"]


def main(argv: list[str]) -> int:
    names = argv or MODULES
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        print(
            f"unknown benchmark {unknown[0]!r}; choose from {', '.join(MODULES)}", file=sys.stderr
        )
        return 2
    for name in names:
        print(f"== bench_{name}", flush=True)
        start = time.perf_counter()
        importlib.import_module(f"bench.bench_{name}").main()
        print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
