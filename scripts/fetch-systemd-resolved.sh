#!/bin/sh
# Unpack systemd-resolved and libnss-resolve, of exactly the installed systemd's version,
# into a cache directory, WITHOUT installing them: installing systemd-resolved on this
# machine would point its /etc/resolv.conf at a stub that may not run here. The booted-systemd
# tests copy them into a sandbox to prove that confined units cannot resolve names through
# the real resolved (its stub, varlink socket and D-Bus API). Prints the directory.
set -eu
version=$(dpkg-query -W -f='${Version}' systemd)
cache="${MUSHISHI_CACHE_DIR:-/var/cache/mushishi}/systemd-resolved-$version"
if [ -x "$cache/lib/systemd/systemd-resolved" ]; then
    echo "$cache"
    exit 0
fi
work=$(mktemp -d "${TMPDIR:-/var/tmp}/resolved.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "fetch-systemd-resolved: downloading systemd-resolved and libnss-resolve $version" >&2
# apt-get download runs as _apt when it can: let it write there.
chmod 0777 "$work"
(cd "$work" && apt-get download -q "systemd-resolved=$version" "libnss-resolve=$version") \
    >&2 || {
    echo "fetch-systemd-resolved: apt-get download failed; run apt-get update, or install" \
         "systemd from the same archive as systemd-resolved $version" >&2
    exit 1
}
mkdir -p "$cache.tmp"
for package in "$work"/*.deb; do
    dpkg-deb -x "$package" "$cache.tmp"
done
rm -rf "$cache"
mv "$cache.tmp" "$cache"
echo "$cache"
