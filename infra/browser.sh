#!/usr/bin/env bash
# Installs the headless browser the portal's browser tests drive: Debian's own
# chromium and chromium-driver (apt), never a browser build downloaded from elsewhere.
# Idempotent: does nothing when both are on PATH.
#
#   bash infra/browser.sh
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
command -v apt-get >/dev/null 2>&1 || { echo "browser.sh: apt-get not found; install chromium and chromium-driver with your package manager" >&2; exit 1; }
SUDO=""
[[ "$(id -u)" == 0 ]] || SUDO="sudo"
echo "[browser] apt-get install chromium chromium-driver"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-noto-cjk >/dev/null
command -v chromedriver >/dev/null 2>&1 || { echo "browser.sh: chromedriver still missing after install" >&2; exit 1; }
