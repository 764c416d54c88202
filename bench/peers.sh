# Sourced by the bench scripts that time Umbra against Samba smbd in one run: starts smbd
# (../shared/tools/samba-ref.sh, port 4450, share `share`, user fsuser) and a local Umbra
# cluster (`umbra up`, release build, user admin) on base port $1, in a fresh $work directory
# that goes, with both servers and what the run put in smbd's share, when the script exits.
. scripts/env.sh
umbra="$CARGO_TARGET_DIR/release/umbra"
ref=../shared/tools/samba-ref.sh
work=$(mktemp -d)
# What a run puts into smbd's share (names listed in $work/smbd.put, one a line) goes with it:
# the share is smbd's directory on this machine's disk, and a 1 GiB run leaves gigabytes.
smbd_share="${REF:-/var/tmp/samba-ref}/share"
trap 'kill -INT "$up_pid" 2>/dev/null; wait "$up_pid" 2>/dev/null; bash "$ref" stop >/dev/null 2>&1 || true; [ -f "$work/smbd.put" ] && while read -r n; do rm -rf "${smbd_share:?}/${n:?}"; done < "$work/smbd.put"; rm -rf "$work"' EXIT

bash "$ref" install >/dev/null && bash "$ref" setup >/dev/null && bash "$ref" start >/dev/null
"$umbra" up --data "$work/umbra" --base-port "$1" --password Passw0rd! > "$work/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 100); do grep -q "Ctrl-C stops" "$work/up.log" && break; sleep 0.2; done
