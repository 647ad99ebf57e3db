"""`make bench`: the CPU benchmarks that finish in minutes; each writes bench/results/.

The query benchmark builds a 10-model atlas (≈ 30 min on 2 cores): run it on its own with
`python -m bench.bench_queries`.
"""

from __future__ import annotations

import subprocess
import sys

BENCHES = ["bench.bench_correlation", "bench.bench_ingest", "bench.bench_load", "bench.bench_checkpoint"]


def main() -> int:
    failed = 0
    for module in BENCHES:
        print(f"== {module}", flush=True)
        failed += subprocess.run([sys.executable, "-m", module]).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
