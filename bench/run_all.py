"""Run every benchmark in turn (``make bench``); each prints its own table, ratios last."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = (
    ("eviction policies, simulated", ["eviction.py"]),
    ("eviction policies, live server", ["eviction_live.py"]),
    ("endpoint overhead", ["endpoint.py"]),
)


def main() -> int:
    failed = []
    for title, args in BENCHES:
        print(f"\n=== {title}: bench/{' '.join(args)} ===", flush=True)
        code = subprocess.call([sys.executable, str(HERE / args[0]), *args[1:]], cwd=HERE.parent)
        if code != 0:
            failed.append(title)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
