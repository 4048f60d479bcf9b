"""CI: the wheel that `pip install .` builds holds every module, profile and device profile.

(CI's tests run on an editable install, which would not notice a package missing from the wheel.)
Usage: python ci/check_wheel.py DIST_DIR
"""

import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    wheels = sorted(Path(sys.argv[1]).glob("rwkvprobe-*.whl"))
    if not wheels:
        print("check_wheel: no rwkvprobe wheel built", file=sys.stderr)
        return 1
    names = set(zipfile.ZipFile(wheels[-1]).namelist())
    want = {f"rwkvprobe/{p.relative_to(ROOT / 'rwkvprobe')}" for p in (ROOT / "rwkvprobe").rglob("*.py")}
    want |= {f"rwkvprobe/profiles/{p.relative_to(ROOT / 'profiles')}" for p in (ROOT / "profiles").rglob("*.yaml")}
    missing = sorted(want - names)
    if missing:
        print(f"check_wheel: {wheels[-1].name} lacks {len(missing)} file(s): {', '.join(missing[:8])}", file=sys.stderr)
        return 1
    print(f"check_wheel: {wheels[-1].name} holds all {len(want)} modules and profiles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
