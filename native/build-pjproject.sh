#!/usr/bin/env bash
# Builds pjproject as shared libraries plus its SWIG pjsua2 Python module, with softswitch's
# config_site.h, into a cache outside the work tree keyed by source and config. Prints the
# install prefix on its last line. A second run with the same inputs does nothing.
#
# Source: $PJPROJECT_SRC if set (any pjproject tree), else the pjproject tree inside Debian's
# `ring` source package (pjproject 2.12.1 with Debian's security patches).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${SOFTSWITCH_CACHE:-$HOME/.cache/softswitch}
jobs=${JOBS:-$(nproc)}
mkdir -p "$cache"
log() { echo "[native] $*" >&2; }

fetch_debian_source() {
  local dir="$cache/ring-source"
  if [ ! -f "$dir/.done" ]; then
    log "fetching Debian's ring source package for its pjproject tree"
    rm -rf "$dir"; mkdir -p "$dir"
    (cd "$dir" && apt-get source --download-only ring >&2 2>/dev/null && \
      dpkg-source -x ./ring_*.dsc src >&2) || {
        echo "error: 'apt-get source ring' failed; run native/setup-system.sh (it enables deb-src)" >&2
        exit 1; }
    rm -f "$dir"/*.orig.tar.* 
    touch "$dir/.done"
  fi
  local tree
  tree=$(ls -d "$dir"/src/daemon/contrib/tarballs-unpacked/*/pjproject-* 2>/dev/null | head -n1)
  [ -n "$tree" ] || { echo "error: no pjproject tree inside the ring source package" >&2; exit 1; }
  echo "$tree"
}

src=${PJPROJECT_SRC:-}
if [ -z "$src" ]; then src=$(fetch_debian_source); fi
[ -f "$src/pjsip-apps/src/swig/pjsua2.i" ] || {
  echo "error: $src is not a pjproject source tree (no pjsip-apps/src/swig/pjsua2.i)" >&2; exit 1; }

# Key: every source file's content, our config and this script.
key=$( (cd "$src" && find . -type f ! -path './.git/*' -print0 | sort -z | xargs -0 sha256sum;
        sha256sum "$here/config_site.h" "$here/build-pjproject.sh") | sha256sum | cut -c1-16)
prefix="$cache/pjproject-$key"
if [ -f "$prefix/.done" ]; then
  log "using cached pjproject build $prefix"
  echo "$prefix"; exit 0
fi

log "building pjproject from $src into $prefix (takes a few minutes)"
work="$cache/build-$key"
rm -rf "$work" "$prefix"; mkdir -p "$work"
cp -a "$src/." "$work/"
cp "$here/config_site.h" "$work/pjlib/include/pj/config_site.h"
cd "$work"
chmod +x configure aconfigure 2>/dev/null || true
opus=""; pkg-config --exists opus 2>/dev/null || opus="--without-opus"
CFLAGS="-O2 -fPIC -g1" CXXFLAGS="-O2 -fPIC -g1" ./configure --prefix="$prefix" \
  --enable-shared --enable-epoll \
  --disable-video --disable-sound --disable-sdl --disable-ffmpeg --disable-v4l2 \
  --disable-openh264 --disable-libyuv --disable-libwebrtc \
  --disable-gsm-codec --disable-ilbc-codec --disable-speex-codec --disable-speex-aec \
  --disable-g7221-codec --disable-silk --disable-bcg729 --disable-opencore-amr \
  --disable-darwin-ssl $opus >"$work/configure.log" 2>&1 || {
    tail -30 "$work/configure.log" >&2; echo "error: pjproject configure failed ($work/configure.log)" >&2; exit 1; }
grep -q 'PJ_IOQUEUE.*epoll\|ioqueue_epoll' build.mak 2>/dev/null || grep -rq epoll pjlib/build/os-auto.mak || {
  echo "error: configure did not select epoll" >&2; exit 1; }
(make dep -j"$jobs" && make -j"$jobs" && make install) >"$work/make.log" 2>&1 || {
  tail -40 "$work/make.log" >&2; echo "error: pjproject build failed ($work/make.log)" >&2; exit 1; }

# SWIG binding, with -threads so callbacks on the bridge's clock thread take the GIL.
log "generating the pjsua2 SWIG module (-threads)"
mkdir -p "$prefix/swig"
(cd pjsip-apps/src/swig && swig -I"$prefix/include" -c++ -w312 -threads \
   -DSWIG_NO_EXPORT_ITERATOR_METHODS -python \
   -outdir "$prefix/swig" -o "$prefix/swig/pjsua2_wrap.cpp" pjsua2.i) >"$work/swig.log" 2>&1 || {
  tail -20 "$work/swig.log" >&2; echo "error: swig failed" >&2; exit 1; }
grep -q 'SWIG_PYTHON_THREADS' "$prefix/swig/pjsua2_wrap.cpp" || { echo "error: swig ran without -threads" >&2; exit 1; }
cp version.mak "$prefix/version.mak"
touch "$prefix/.done"
rm -rf "$work"
log "pjproject ready in $prefix"
echo "$prefix"
