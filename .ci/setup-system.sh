#!/usr/bin/env bash
# Installs what pip cannot, from Debian's packages: bubblewrap (the sandbox for generated code),
# chromium and chromium-driver (headless browser tests of the HTML views; no test tool ever
# downloads a browser of its own). Skips what is already there and says what it installs.
# INFRA_BROWSER_TESTS=0 leaves the browser out (its tests then skip, saying why).
# Also MathJax 3 from the npm registry into .book-node/ (git-ignored), which the book serves itself
# so that formulas render offline (infra_study/bookext.py); INFRA_BOOK_MATHJAX=0 leaves it out.
set -euo pipefail
MATHJAX_VERSION=3.2.2
if [ "${INFRA_BOOK_MATHJAX:-1}" = "1" ]; then
  if [ -f .book-node/node_modules/mathjax/es5/tex-chtml.js ] \
     && grep -q "\"version\": \"$MATHJAX_VERSION\"" .book-node/node_modules/mathjax/package.json; then
    echo "system: mathjax@$MATHJAX_VERSION present in .book-node/"
  elif command -v npm >/dev/null 2>&1; then
    echo "system: installing mathjax@$MATHJAX_VERSION into .book-node/ (npm)"
    npm install --prefix .book-node --no-save --no-audit --no-fund --loglevel=error "mathjax@$MATHJAX_VERSION"
  else
    echo "system: npm is missing: the book cannot bundle MathJax (install Debian's npm)" >&2
    exit 1
  fi
fi
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
