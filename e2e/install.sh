#!/usr/bin/env bash
# Installs what the e2e suite and the demo need on a fresh Debian machine:
# the BGP peers (BIRD 2, FRR, GoBGP, ExaBGP) and iproute2. Needs root.
# None of the daemons is started by installing it.
set -euo pipefail
need=()
command -v bird >/dev/null && command -v birdc >/dev/null || need+=(bird2)
command -v gobgpd >/dev/null && command -v gobgp >/dev/null || need+=(gobgpd)
[ -x /usr/lib/frr/bgpd ] && command -v vtysh >/dev/null || need+=(frr)
command -v exabgp >/dev/null || need+=(exabgp)
command -v ip >/dev/null || need+=(iproute2)
[ -x /usr/bin/python3 ] || need+=(python3)
# For validating the containerlab topologies against their schema.
/usr/bin/python3 -c 'import yaml, jsonschema' 2>/dev/null || need+=(python3-yaml python3-jsonschema)
if [ ${#need[@]} -gt 0 ]; then
  echo "e2e/install.sh: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi
