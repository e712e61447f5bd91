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

# Key: every source file's content, our config and the recipe below (no absolute path: every
# checkout of the same sources shares one build). Bump RECIPE whenever the
# configure flags or build steps change, so cached builds made the old way are not reused.
RECIPE=1
key=$( (cd "$src" && find . -type f ! -path './.git/*' -print0 | sort -z | xargs -0 sha256sum;
        (cd "$here" && sha256sum config_site.h); echo "recipe $RECIPE") | sha256sum | cut -c1-16)
prefix="$cache/pjproject-$key"
# The SWIG module depends on the Python it is compiled for: cached per interpreter.
python=${PYTHON:-python3}
case "$python" in */*) python=$(readlink -f "$python") ;; esac
build_swig_module() {
  local tag pyinc ext out
  tag=$("$python" -c 'import sys,sysconfig;print(sys.implementation.cache_tag+"-"+sysconfig.get_config_var("EXT_SUFFIX").strip("."))')
  out="$prefix/python/$tag"
  [ -f "$out/.done" ] && return 0
  pyinc=$("$python" -c 'import sysconfig;print(sysconfig.get_paths()["include"])')
  ext=$("$python" -c 'import sysconfig;print(sysconfig.get_config_var("EXT_SUFFIX"))')
  [ -f "$pyinc/Python.h" ] || { echo "error: no Python.h in $pyinc (install python3-dev)" >&2; exit 1; }
  log "compiling the pjsua2 SWIG module for $tag"
  mkdir -p "$out"
  # RPATH (not RUNPATH) so the pjproject libraries find each other next to the module.
  g++ -O2 -fPIC -shared -w -I"$pyinc" $(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --cflags libpjproject) \
    "$prefix/swig/pjsua2_wrap.cpp" -o "$out/_pjsua2$ext" \
    -L"$prefix/lib" -Wl,--no-as-needed $(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --libs libpjproject) \
    -Wl,--disable-new-dtags -Wl,-rpath,'$ORIGIN/pjsua2.libs' || { echo "error: compiling _pjsua2 failed" >&2; exit 1; }
  cp "$prefix/swig/pjsua2.py" "$out/pjsua2.py"
  touch "$out/.done"
}

if [ -f "$prefix/.done" ]; then
  log "using cached pjproject build $prefix"
  build_swig_module
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
build_swig_module
log "pjproject ready in $prefix"
echo "$prefix"
