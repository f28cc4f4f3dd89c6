#!/usr/bin/env bash
# Installs the system packages the build, tests and demo need (Debian), then the pinned tools.
# Idempotent and quick when everything is present: apt runs only for missing packages.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=versions.env
source "$root/tools/versions.env"

PACKAGES=(
	# eBPF toolchain (bpf2go) and kernel tooling
	"clang-$CLANG_VERSION" "llvm-$CLANG_VERSION" libbpf-dev gcc-multilib bpftool
	# network namespaces, capture, firewalls (tests compare against and clean up after them)
	iproute2 iptables nftables tcpdump ethtool conntrack
	# container runtime for the local kubelet nodes; busybox is the shell of the test app images
	containerd runc busybox-static
	# load generators and comparison peers for benchmarks
	iperf3 stunnel4 haproxy socat caddy
	# build basics
	git make gcc ca-certificates procps psmisc util-linux
)

missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
	echo "setup: installing ${missing[*]}" >&2
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	export DEBIAN_FRONTEND=noninteractive
	# Packages must not start daemons (containerd) on the host: the tests run their own.
	policy=/usr/sbin/policy-rc.d
	cleanup_policy=false
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
		$sudo chmod +x "$policy"
		cleanup_policy=true
	fi
	trap '[ "$cleanup_policy" = true ] && $sudo rm -f "$policy"' EXIT
	$sudo apt-get update -qq
	$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# caddy (bench-l7's reverse proxy baseline; the benchmark runs its own) is packaged as an
# enabled system service: policy-rc.d kept it from starting, keep it from starting at boot.
if systemctl is-enabled --quiet caddy.service 2>/dev/null; then
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	$sudo systemctl disable --now --quiet caddy.service 2>/dev/null || $sudo systemctl disable --quiet caddy.service
fi

"$root/tools/build.sh"
