# Sourced by the bench scripts that time Umbra against Samba smbd in one run: starts smbd
# (../shared/tools/samba-ref.sh, port 4450, share `share`, user fsuser) and a local Umbra
# cluster (`umbra up`, release build, user admin) on base port $1, in a fresh $work directory
# that goes, with both servers, when the script exits.
. scripts/env.sh
umbra="$CARGO_TARGET_DIR/release/umbra"
ref=../shared/tools/samba-ref.sh
work=$(mktemp -d)
trap 'kill -INT "$up_pid" 2>/dev/null; wait "$up_pid" 2>/dev/null; bash "$ref" stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

bash "$ref" install >/dev/null && bash "$ref" setup >/dev/null && bash "$ref" start >/dev/null
"$umbra" up --data "$work/umbra" --base-port "$1" --password Passw0rd! > "$work/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 100); do grep -q "Ctrl-C stops" "$work/up.log" && break; sleep 0.2; done
