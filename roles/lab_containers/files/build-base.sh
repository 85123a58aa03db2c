#!/bin/sh
# Build the embedstack base rootfs with debootstrap, atomically.
# Usage: build-base.sh DEST STAMP SUITE VARIANT MIRROR SECURITY_MIRROR PACKAGES(comma-separated)
# The rootfs is built in DEST.partial and renamed to DEST only when complete, so an interrupted
# build is never reused; a lock serialises concurrent builds (lab and molecule at the same time).
set -eu

dest=$1 stamp=$2 suite=$3 variant=$4 mirror=$5 security=$6 packages=$7
tmp="${dest}.partial"
old="${dest}.old"

mkdir -p "$(dirname "$dest")"
exec 9>"${dest}.lock"
flock 9

if [ -e "${dest}/${stamp}" ]; then
    echo "base image already built by a concurrent run: ${dest}"
    exit 0
fi

start=$(date +%s)
rm -rf "$tmp" "$old"
debootstrap --variant="$variant" --include="$packages" "$suite" "$tmp" "$mirror"

# apt sources like the host's: the suite, its updates and the security archive.
rm -f "${tmp}/etc/apt/sources.list"
cat > "${tmp}/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: ${mirror}
Suites: ${suite} ${suite}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${security}
Suites: ${suite}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES

# Identity is per container: host keys and the machine id are generated when a container is created.
rm -f "${tmp}"/etc/ssh/ssh_host_*
rm -f "${tmp}/etc/machine-id" "${tmp}/var/lib/dbus/machine-id"
rm -f "${tmp}/etc/hostname"
: > "${tmp}/etc/resolv.conf"

# No package caches or indexes in the image; roles run apt-get update themselves.
rm -rf "${tmp}"/var/cache/apt/archives/*.deb "${tmp}"/var/lib/apt/lists/*
# apt's cache_valid_time reads the lists directory's mtime: make the empty index look stale.
touch -d @0 "${tmp}/var/lib/apt/lists"

echo "$suite $variant $mirror $security $packages" > "${tmp}/${stamp}"

if [ -e "$dest" ]; then
    mv "$dest" "$old"
fi
mv "$tmp" "$dest"
rm -rf "$old"
echo "base image built in $(( $(date +%s) - start )) s: ${dest}"
