#!/usr/bin/env bash
# Installs the Debian packages softswitch needs, once. Idempotent: a stamp keyed by this
# file's content skips the work on later runs. Runs as root (or through sudo when present).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${SOFTSWITCH_CACHE:-$HOME/.cache/softswitch}
mkdir -p "$cache"
stamp="$cache/system-$(sha256sum "$here/setup-system.sh" | cut -c1-16).stamp"
[ -f "$stamp" ] && exit 0

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

# deb-src lines, only if none are enabled yet (pjproject's source comes from Debian's ring).
if ! grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    $SUDO sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources
  else
    grep -E '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' | $SUDO tee -a /etc/apt/sources.list >/dev/null
  fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  build-essential cmake pkg-config dpkg-dev swig python3-dev python3-venv \
  libopus-dev libssl-dev uuid-dev \
  sip-tester tcpdump espeak-ng sox >/dev/null
# Independent softphones for the interop suite (no code shared with PJSIP): liblinphone's
# console client and baresip.
$SUDO apt-get install -y -qq --no-install-recommends linphone-cli baresip-core >/dev/null
touch "$stamp"
