"""Check that the hashed lock files still satisfy pyproject.toml: every requirement of the
dependencies and extras a lock is made from is pinned in it, at a version its range allows, and
every pin carries hashes. Exit 1 with the fix (deploy/lock.sh) otherwise.

.ci/run runs this before it trusts requirements-test.lock, so a dependency added to pyproject.toml
without regenerating the locks fails CI with that message instead of an ImportError later.

    python deploy/check_lock.py [ROOT]
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a bare interpreter: pip carries its own copy
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]

# lock file -> what it is made from
LOCKS: dict[str, tuple[tuple[str, ...], bool, bool]] = {  # extras, dependencies, build backend
    "requirements.lock": (("redis", "mock"), True, False),
    "requirements-test.lock": (("test",), True, True),
    "requirements-build.lock": ((), False, True),
}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
# The interpreter CI and the image run; markers of pyproject's requirements are evaluated for it.
TARGET = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
          "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "platform_machine": "x86_64"}


def pins(path: Path) -> tuple[dict[str, list[str]], list[str]]:
    """The lock's versions by canonical name, and the pins that carry no hash."""
    versions: dict[str, list[str]] = {}
    unhashed: list[str] = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        m = PIN.match(line)
        if not m:
            continue
        versions.setdefault(canonicalize_name(m.group(1)), []).append(m.group(2))
        follow = lines[i + 1] if i + 1 < len(lines) else ""
        if "--hash=sha256:" not in line and "--hash=sha256:" not in follow:
            unhashed.append(m.group(0))
    return versions, unhashed


def required(project: dict[str, object], extras: tuple[str, ...], core: bool, build: bool) -> list[tuple[str, str]]:
    """(requirement, where it comes from) for a lock."""
    proj = project["project"]
    assert isinstance(proj, dict)
    out: list[tuple[str, str]] = []
    if core:
        out += [(r, "[project] dependencies") for r in proj.get("dependencies", [])]
    optional = proj.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            out.append((f"<extra {extra!r} missing>", f"[project.optional-dependencies] {extra}"))
            continue
        out += [(r, f"the {extra!r} extra") for r in optional[extra]]
    if build:
        system = project["build-system"]
        assert isinstance(system, dict)
        out += [(r, "[build-system] requires") for r in system["requires"]]
    return out


def problems(root: Path) -> list[str]:
    project = tomllib.loads((root / "pyproject.toml").read_text())
    found: list[str] = []
    for name, (extras, core, build) in LOCKS.items():
        path = root / name
        if not path.exists():
            found.append(f"{name}: missing")
            continue
        versions, unhashed = pins(path)
        found += [f"{name}: {pin} has no --hash" for pin in unhashed]
        for text, source in required(project, extras, core, build):
            if text.startswith("<"):
                found.append(f"{name}: {source} is not in pyproject.toml")
                continue
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({**TARGET, "extra": ""}):
                continue
            have = versions.get(canonicalize_name(req.name))
            if not have:
                found.append(f"{name}: {text!r} ({source}) is not pinned")
            elif not any(req.specifier.contains(v, prereleases=True) for v in have):
                found.append(f"{name}: {text!r} ({source}) but the lock pins {', '.join(have)}")
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent
    found = problems(root)
    if not found:
        print(f"lock files match pyproject.toml ({', '.join(LOCKS)})")
        return 0
    print("The lock files no longer match pyproject.toml:", file=sys.stderr)
    for p in found:
        print(f"  {p}", file=sys.stderr)
    print(
        "Regenerate them with `deploy/lock.sh`, commit them, and note the moved pins under "
        "'Dependencies' in CHANGELOG.md.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
