#!/usr/bin/env bash
# The system packages the test suite uses, installed from apt when missing (Debian/Ubuntu), as
# `make up` installs redis-server: redis-server (tests start their own), headless Chromium and its
# driver (tests/test_web.py), docker-compose (validates docker-compose.yml; no engine needed).
# Without root, password-less sudo or apt-get, it fails with one line naming what to install.
set -euo pipefail

need=()
command -v redis-server >/dev/null || need+=(redis-server)
# tests/test_web.py drives these exact paths (Debian's packages), so Selenium never downloads a browser.
[[ -x /usr/bin/chromium ]] || need+=(chromium)
[[ -x /usr/bin/chromedriver ]] || need+=(chromium-driver)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
((${#need[@]})) || exit 0

hint="the tests need these system packages: sudo apt-get install -y ${need[*]}"
if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "error: not root and no password-less sudo; $hint" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "error: no apt-get here; install redis-server, chromium + chromedriver and docker-compose (missing: ${need[*]})" >&2
  exit 1
fi
echo "installing missing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq "${need[@]}"; } >/dev/null; then
  echo "error: apt-get failed; $hint" >&2
  exit 1
fi
