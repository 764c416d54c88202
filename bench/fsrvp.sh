#!/usr/bin/env bash
# FSRVP commit latency p50/p99 and fence (writes held) p50/p99 for sets of 1, 2, 8 and 32 shares
# over three Umbra nodes with two writers running, for volumes holding 4 MiB and 4 GiB; Samba's
# FSRVP (../shared/tools/samba-ref.sh, one share, full-copy snapshots) in the same run.
# usage: bench/fsrvp.sh [ROUNDS] [BIG_MIB]   (needs a release build: cargo build --release)
# Disk: 4 volumes x BIG_MIB for Umbra (with RocksDB's overhead, about 1.4x), 2 x BIG_MIB for
# Samba, plus one BIG_MIB source file: about 35 GB at the default 4 GiB.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
rounds=${1:-20}
big_mib=${2:-4096}
umbra="$CARGO_TARGET_DIR/release/umbra"
py="${UMBRA_VENV:-$HOME/.cache/umbra-venv}/bin/python"
ref=../shared/tools/samba-ref.sh
export REF=/var/tmp/umbra-bench-samba PORT=4470
work=$(mktemp -d /var/tmp/umbra-fsrvp-bench.XXXXXX)
up_pid=
writers=()
cleanup() {
  touch "$work/stop"
  for p in "${writers[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$up_pid" ]; then kill -INT "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; fi
  # smbd and the RPC helpers it started (samba-dcerpcd serves FSRVP), by their pid files.
  for f in "$REF"/pid/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  rm -rf "$work" "$REF"
}
trap cleanup EXIT

bash "$ref" install >/dev/null && bash "$ref" setup >/dev/null && bash "$ref" start >/dev/null
"$umbra" up --data "$work/umbra" --base-port 27600 --password Passw0rd! > "$work/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 100); do grep -q "Ctrl-C stops" "$work/up.log" && break; sleep 0.2; done
ctl() { "$umbra" ctl --addr 127.0.0.1:27601 "$@" >/dev/null || { echo "umbra ctl $* failed" >&2; return 1; }; }
echo 'B4ckup!pw' | "$umbra" ctl --addr 127.0.0.1:27601 user add bk --role backup >/dev/null

# Small volumes s01..s32 (4 MiB each), one share each; big volumes b01..b04 (BIG_MIB each),
# round-robin over the nodes, with shares g01..g32 spread over them (8 shares: 2 per volume, 32
# shares: 8 per volume; shares on one volume share its shadow copy and fence).
two() { printf %02d "$1"; }
for i in $(seq 32); do ctl volume create "s$(two "$i")" --node $(( (i - 1) % 3 + 1 )); ctl share create "s$(two "$i")" --volume "s$(two "$i")"; done
for i in $(seq 4); do ctl volume create "b$(two "$i")" --node $(( (i - 1) % 3 + 1 )); ctl share create "b$(two "$i")" --volume "b$(two "$i")"; done
for i in $(seq 32); do ctl share create "g$(two "$i")" --volume "b$(two $(( (i - 1) % 4 + 1 )))"; done
sleep 2
head -c $((4 << 20)) /dev/urandom > "$work/small.bin"
head -c $((big_mib << 20)) /dev/urandom > "$work/big.bin"
# Filled with smbclient through each volume's owner (the gateway's local path).
fill() { smbclient "//127.0.0.1/$1" -p "2761$(( ($2 - 1) % 3 + 1 ))" -U 'admin%Passw0rd!' -c "put $3 data.bin" >/dev/null; }
for i in $(seq 32); do fill "s$(two "$i")" "$i" "$work/small.bin"; done
t0=$(date +%s)
for i in $(seq 4); do fill "b$(two "$i")" "$i" "$work/big.bin"; done
echo "filled 4 volumes with $big_mib MiB each in $(( $(date +%s) - t0 )) s; letting compactions settle" >&2
sleep 60

# Steady writers (64 KiB every 10 ms each) on two nodes' small and two nodes' big volumes
# (through node 1), and one on Samba's share.
writer() { "$py" bench/fsrvp_writer.py "$1" "$2" "$3" "$4" "$work/stop" > /dev/null & writers+=($!); }
writer 27611 admin 'Passw0rd!' s01
writer 27611 admin 'Passw0rd!' s02
writer 27611 admin 'Passw0rd!' b01
writer 27611 admin 'Passw0rd!' b02
writer 4470 fsuser 'Passw0rd!' fsrvp_share
sleep 1

run() { "$py" bench/fsrvp_bench.py --rounds "$rounds" --coordinator-log "$work/umbra/node3.log" "$@"; }
list() { local p=$1 n=$2; seq -f "$p%02g" 1 "$n" | paste -sd, -; }
umbra_case() { run --system umbra --port 27613 --user bk --password 'B4ckup!pw' --label "$1" --shares "$2"; }
samba_case() { "$py" bench/fsrvp_bench.py --system samba --port 4470 --user fsuser --password 'Passw0rd!' --shares fsrvp_share --label "$1" --rounds "$2"; }

cp "$work/small.bin" "$REF/fsrvp_share/data.bin"
samba_case "4MiB" "$rounds"
for n in 1 2 8 32; do umbra_case "4MiB" "$(list s "$n")"; done
cp "$work/big.bin" "$REF/fsrvp_share/data.bin"
samba_case "${big_mib}MiB" 3
for n in 1 2; do umbra_case "${big_mib}MiB" "$(list b "$n")"; done
for n in 8 32; do umbra_case "${big_mib}MiB" "$(list g "$n")"; done
