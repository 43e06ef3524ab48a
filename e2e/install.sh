#!/usr/bin/env bash
# Installs what the e2e suite and the demo need on a fresh Debian machine:
# the BGP peers (BIRD 2, FRR, GoBGP, ExaBGP) and iproute2, and for the IPVS
# test QEMU, busybox, ipvsadm and a Debian cloud kernel (the host kernel has
# no IPVS). Needs root.
# None of the daemons is started by installing it.
set -euo pipefail
need=()
command -v bird >/dev/null && command -v birdc >/dev/null || need+=(bird2)
command -v gobgpd >/dev/null && command -v gobgp >/dev/null || need+=(gobgpd)
[ -x /usr/lib/frr/bgpd ] && command -v vtysh >/dev/null || need+=(frr)
command -v exabgp >/dev/null || need+=(exabgp)
command -v ip >/dev/null || need+=(iproute2)
# The BFD tests black out a namespace with an nftables drop rule.
command -v nft >/dev/null || need+=(nftables)
[ -x /usr/bin/python3 ] || need+=(python3)
# The L2 tests ask from a client namespace and capture what answers.
command -v arping >/dev/null || need+=(iputils-arping)
command -v ndisc6 >/dev/null || need+=(ndisc6)
command -v tcpdump >/dev/null || need+=(tcpdump)
# For validating the containerlab topologies against their schema.
/usr/bin/python3 -c 'import yaml, jsonschema' 2>/dev/null || need+=(python3-yaml python3-jsonschema)
# The IPVS test boots a real kernel under QEMU with busybox as its userland.
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v ipvsadm >/dev/null || need+=(ipvsadm)
command -v strip >/dev/null || need+=(binutils)
# kubectl checks the Kubernetes API stand-in (e2e/apiserver.rs). The
# project's machines ship kubectl 1.32; Debian 12's package is 1.20, which
# lacks `patch --subresource` (1.24+) that one of those tests uses.
command -v kubectl >/dev/null || need+=(kubernetes-client)
# The control plane's HTTPS health check is tested against openssl s_server.
command -v openssl >/dev/null || need+=(openssl)
# /metrics is checked by promtool and scraped by a real Prometheus server.
command -v prometheus >/dev/null && command -v promtool >/dev/null || need+=(prometheus)
# The container image is built FROM scratch with buildah (no registry).
command -v buildah >/dev/null || need+=(buildah)
if [ ${#need[@]} -gt 0 ]; then
  echo "e2e/install.sh: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# The kernel for the IPVS test: the newest Debian 6.1 cloud kernel (IPVS as
# modules), unpacked under target/vm-kernel. Fetched once per checkout.
kdir="${VIPD_VM_KERNEL:-$(pwd)/target/vm-kernel}"
if ! ls "$kdir"/boot/vmlinuz-* >/dev/null 2>&1; then
  pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' | awk '{print $1}' | sort -V | tail -1)
  if [ -z "$pkg" ]; then
    apt-get update -q
    pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' | awk '{print $1}' | sort -V | tail -1)
  fi
  echo "e2e/install.sh: fetching $pkg for the IPVS test"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q "$pkg" 2>&1 | grep -v "unsandboxed" || true)
  mkdir -p "$kdir"
  dpkg-deb -x "$tmp"/*.deb "$kdir"
  rm -rf "$tmp"
fi
