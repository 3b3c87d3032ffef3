#!/usr/bin/env bash
# Extra CI setup, called by .ci/run after the venv install: what the browser test of the app needs.
# The system Chromium (Debian package) and the Playwright Python package; never `playwright install`
# (browsers cannot be downloaded here) -- the test points Playwright at /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
.venv/bin/python -c "import playwright" 2>/dev/null || .venv/bin/python -m pip install -q playwright==1.65.2
