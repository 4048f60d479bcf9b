"""CI: mypy on the package, against a baseline of errors per file that may only shrink.

    python ci/mypy_baseline.py            # exit 1 when any file has more mypy errors than its baseline
    python ci/mypy_baseline.py --update   # write the current counts as the new baseline (after fixing some)

The baseline (ci/mypy-baseline.json) records how many errors each module has today; a change that adds
one fails CI with the new errors listed. Lower it with --update whenever a file gets fewer.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "ci" / "mypy-baseline.json"
LINE = re.compile(r"^(?P<file>[^:]+\.py):\d+: error: ")


def current() -> tuple[Counter, list[str]]:
    proc = subprocess.run([sys.executable, "-m", "mypy", "rwkvprobe"], cwd=ROOT, capture_output=True, text=True)
    errors = [line for line in proc.stdout.splitlines() if LINE.match(line)]
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not errors):
        sys.exit(f"mypy failed to run ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return Counter(LINE.match(line)["file"] for line in errors), errors


def main() -> int:
    counts, errors = current()
    if "--update" in sys.argv:
        BASELINE.write_text(json.dumps(dict(sorted(counts.items())), indent=1) + "\n")
        print(f"mypy baseline: {sum(counts.values())} errors in {len(counts)} files written to {BASELINE.name}")
        return 0
    base = json.loads(BASELINE.read_text())
    worse = {f: n for f, n in counts.items() if n > base.get(f, 0)}
    if worse:
        print("mypy: more errors than the baseline (ci/mypy-baseline.json) in: "
              + ", ".join(f"{f} {n} > {base.get(f, 0)}" for f, n in sorted(worse.items())), file=sys.stderr)
        for line in errors:
            if LINE.match(line)["file"] in worse:
                print(line, file=sys.stderr)
        return 1
    better = sum(base.values()) - sum(counts.values())
    print(f"mypy: {sum(counts.values())} errors, baseline {sum(base.values())}"
          + (f" ({better} fewer: run python ci/mypy_baseline.py --update)" if better > 0 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
