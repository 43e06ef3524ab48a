#!/usr/bin/env bash
# The demo: vipd in one network namespace announcing configs/demo.toml to
# BIRD in another, then BIRD's own view of the routes. Needs root; installs
# BIRD if missing; removes everything it made when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
bash e2e/install.sh
cargo build --release --bin vipd
vipd=$PWD/target/release/vipd
node=vipd-demo-node router=vipd-demo-router
work=$(mktemp -d /tmp/vipd-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$node" 2>/dev/null || true
  ip netns del "$router" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns del "$node" 2>/dev/null || true
ip netns del "$router" 2>/dev/null || true
ip netns add "$node"; ip netns add "$router"
ip link add vipd-demo-a netns "$node" type veth peer name vipd-demo-b netns "$router"
ip -n "$node" addr add 192.0.2.1/24 dev vipd-demo-a
ip -n "$router" addr add 192.0.2.2/24 dev vipd-demo-b
ip -n "$node" -6 addr add 2001:db8::1/64 dev vipd-demo-a nodad
ip -n "$router" -6 addr add 2001:db8::2/64 dev vipd-demo-b nodad
for ns in "$node" "$router"; do ip -n "$ns" link set lo up; done
ip -n "$node" link set vipd-demo-a up; ip -n "$router" link set vipd-demo-b up

cat > "$work/bird.conf" <<CONF
router id 192.0.2.2;
protocol device { scan time 10; }
protocol bgp vipd4 { local 192.0.2.2 as 65002; neighbor 192.0.2.1 as 65010; ipv4 { import all; export none; }; }
protocol bgp vipd6 { local 2001:db8::2 as 65002; neighbor 2001:db8::1 as 65010; ipv6 { import all; export none; }; }
CONF
ip netns exec "$router" bird -f -c "$work/bird.conf" -s "$work/bird.ctl" & pids+=($!)
ip netns exec "$node" "$vipd" run --config configs/demo.toml >"$work/vipd.log" 2>&1 & pids+=($!)
birdc() { command birdc -s "$work/bird.ctl" "$@"; }
echo "waiting for BIRD to hold vipd's routes..."
for _ in $(seq 100); do
  n=$(birdc show route count 2>/dev/null | awk '/^Total/{print $2}' || true)
  [ "${n:-0}" -ge 4 ] && break
  sleep 0.1
done
echo; echo "== vipd's log =="; cat "$work/vipd.log"
echo; echo "== birdc show protocols =="; birdc show protocols
echo; echo "== birdc show route all =="; birdc show route all
