#!/usr/bin/env bash
# Unpacks the Debian packages quiver builds against into .deps/root, for the
# lent GPU machine, which reaches no package registry. Run here, then name
# .deps/root in the device call's carry list (bench/device/build.sh uses it).
set -euo pipefail
cd "$(dirname "$0")/../.."
PKGS="liblmdb-dev liblmdb0 libjansson-dev libjansson4 liburing-dev liburing2 libxxhash-dev
  libxxhash0 libssl-dev libssl3 libcmocka-dev libcmocka0 libzstd-dev libzstd1 libinih-dev
  libinih1 libinireader0 pkgconf pkgconf-bin libpkgconf3 libmicrohttpd-dev libmicrohttpd12
  libgnutls30 libp11-kit0 libidn2-0 libunistring2 libtasn1-6 libnettle8 libhogweed6 libgmp10 libffi8
  libgnutls28-dev nettle-dev libtasn1-6-dev libidn2-dev libp11-kit-dev libgmp-dev"
# (the -dev packages of gnutls and what its .pc requires: libmicrohttpd.pc
# names gnutls, and pkgconf resolves private requirements too)
grep -qx '/.deps/' .git/info/exclude 2>/dev/null || echo '/.deps/' >> .git/info/exclude
rm -rf .deps && mkdir -p .deps/debs
(cd .deps/debs && apt-get download $PKGS >/dev/null)
for f in .deps/debs/*.deb; do dpkg -x "$f" .deps/root; done
rm -rf .deps/debs
du -sh .deps/root
