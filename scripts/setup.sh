#!/usr/bin/env bash
# Idempotent setup on a fresh Debian machine: system packages, the venv, the Python packages.
#   scripts/setup.sh          what `vsrt serve` needs (ffmpeg, the runner's whisperx)
#   scripts/setup.sh test     also what the tests need (espeak-ng, sox, pytest, linters, and for
#                             the browser tests Debian's chromium and nginx; Playwright drives that
#                             chromium, so `playwright install` is never run; postgresql, whose
#                             binaries the tests use to start a throwaway cluster of their own)
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-serve}
packages=(ffmpeg)
extras=runner
if [ "$mode" = test ]; then
  packages+=(espeak-ng sox chromium nginx postgresql)
  extras=runner,test
fi

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$python" -m venv .venv
fi

# Reinstall only when the project's requirements changed (whisperx + torch take minutes).
stamp=".venv/.vsrt-installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages ($extras); the first time takes a few minutes" >&2
  # (this machine's pip config names local indexes that may be absent: drop those warnings)
  .venv/bin/pip install -q --disable-pip-version-check -e ".[$extras]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  touch "$stamp"
fi
