#!/usr/bin/env bash
# Regenerate the hashed lock files from pyproject.toml (run after changing any dependency, and
# commit the result with a "Dependencies" line in CHANGELOG.md):
#
#   deploy/lock.sh            re-resolve; pins already in a lock are kept where the ranges allow
#   deploy/lock.sh --upgrade  move every pin to the newest release the ranges allow
#
# requirements.lock        the image: the dependencies + the 'redis' and 'mock' extras
# requirements-test.lock   CI (.ci/run): the dependencies + the 'test' extra + the build backend
# requirements-build.lock  the build backend ([build-system] requires), to build the wheel
# (deploy/check_lock.py's LOCKS lists the same extras per lock: change both together, e.g. to put
# an 'otel' extra into the image)
#
# Each pin lists the sha256 of every file PyPI has for that release, and each lock is resolved
# for every platform (--universal) on Python 3.11, the oldest supported. uv resolves; it is
# installed at a pinned version into a throwaway virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "uv==$UV_VERSION"
export UV_NATIVE_TLS=1  # the system's trust store (that of a TLS-inspecting proxy included)
export UV_CUSTOM_COMPILE_COMMAND="deploy/lock.sh"

mkdir -p "$tmp/in"
python3 - >"$tmp/in/build-requirements.in" <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))
PY

compile() {  # compile OUTPUT SOURCE... [options]
  local out=$1
  shift
  "$tmp/venv/bin/uv" pip compile --quiet --universal --python-version 3.11 --generate-hashes \
    --no-annotate "$@" ${UPGRADE:+--upgrade} -o "$out"
  echo "$out: $(grep -cE '^[A-Za-z0-9]' "$out") pinned packages"
}

UPGRADE=""
[ "${1:-}" = "--upgrade" ] && UPGRADE=1
compile requirements.lock pyproject.toml --extra redis --extra mock
compile requirements-build.lock "$tmp/in/build-requirements.in"
compile requirements-test.lock pyproject.toml "$tmp/in/build-requirements.in" --extra test
python3 deploy/check_lock.py
