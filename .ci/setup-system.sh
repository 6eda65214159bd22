#!/usr/bin/env bash
# Installs what pip cannot, from Debian's packages: bubblewrap (the sandbox for generated code),
# chromium and chromium-driver (headless browser tests of the HTML views; no test tool ever
# downloads a browser of its own). Skips what is already there and says what it installs.
# INFRA_BROWSER_TESTS=0 leaves the browser out (its tests then skip, saying why).
set -euo pipefail
need=()
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
if [ "${INFRA_BROWSER_TESTS:-1}" = "1" ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
fi
if [ ${#need[@]} -eq 0 ]; then
  echo "system: bubblewrap$([ "${INFRA_BROWSER_TESTS:-1}" = "1" ] && echo ", chromium, chromium-driver") present, nothing to install"
  exit 0
fi
echo "system: installing Debian packages: ${need[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
