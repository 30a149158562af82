#!/bin/sh
# System packages the tests and the demo need; installs only what is missing.
# restic, prometheus (+promtool), nftables, ufw and iptables are exercised for real by
# the tests; cmake and g++ build llama-server; wrk, nginx and hyperfine drive the benchmarks.
# docker.io (dockerd, containerd), podman, fuse-overlayfs and busybox-static run confined
# container tenants built from a local image (no registry); openssh-server stands for an
# off-box backup host (sftp:); prometheus-node-exporter reads the textfiles for real.
set -eu
packages="restic prometheus nftables ufw iptables iproute2 dbus util-linux systemd cmake g++ make
          curl ca-certificates wrk nginx hyperfine python3-venv python3-dev sqlite3
          docker.io podman fuse-overlayfs busybox-static openssh-server
          prometheus-node-exporter"
missing=""
for package in $packages; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $package"
    fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps: need root to install:$missing" >&2
    exit 1
fi
echo "install-system-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
# A package's postinst must not start services on this machine (prometheus, nginx).
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
