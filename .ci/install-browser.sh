#!/usr/bin/env bash
# Installs headless Chromium and chromedriver (Debian packages) for the console's browser tests
# (tests/console.rs, the browser_* tests), when they are missing. Safe to run repeatedly.
#   usage: .ci/install-browser.sh
set -euo pipefail
if command -v chromedriver >/dev/null 2>&1 && { command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; }; then
    echo "chromium and chromedriver present: $(chromedriver --version 2>/dev/null | head -1)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
echo "installed: $(chromedriver --version 2>/dev/null | head -1)"
