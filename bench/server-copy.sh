#!/usr/bin/env bash
# A copy of one file within a share, server-side (FSCTL_SRV_COPYCHUNK_WRITE, as Windows Explorer
# sends it, from bench/server_copy.py) and through the client (smbclient get, then put, of the
# same file), against Umbra (gateway on the volume's owner, and on another node) and Samba smbd
# in the same run, A B A B. Prints MB/s (of the file's size over the copy's time) and ratios.
# The server-side copy is checked byte for byte against the source.
# usage: bench/server-copy.sh [SIZE_MIB]   (needs a release build: cargo build --release;
# starts smbd with ../shared/tools/samba-ref.sh and a local Umbra cluster with `umbra up`)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-256}
py="${UMBRA_VENV:-$HOME/.cache/umbra-venv}/bin/python"
. bench/peers.sh 27600
head -c $((size_mib << 20)) /dev/urandom > "$work/in.bin"
sync  # its writeback would otherwise run during the first timed copy
smbclient //127.0.0.1/share2 -p 27612 -U 'admin%Passw0rd!' -c "lcd $work; put in.bin src.bin" >/dev/null
smbclient //127.0.0.1/share -p 4450 -U 'fsuser%Passw0rd!' -c "lcd $work; put in.bin src.bin" >/dev/null
printf '%s\n' src.bin copy-server.bin copy-client.bin >> "$work/smbd.put"

# copy NAME PORT SHARE USER PASS: server-side MB/s, then through-the-client MB/s
copy() {
  local server t0 t1
  server=$("$py" bench/server_copy.py "$2" "$3" "$4" "$5" src.bin "$size_mib")
  smbclient "//127.0.0.1/$3" -p "$2" -U "$4%$5" --client-protection=sign -c "get copy-server.bin $work/check.bin" >/dev/null 2>&1
  cmp -s "$work/in.bin" "$work/check.bin" || { echo "$1: the server-side copy differs" >&2; exit 1; }
  t0=$(date +%s.%N)
  smbclient "//127.0.0.1/$3" -p "$2" -U "$4%$5" --client-protection=sign -c "get src.bin $work/via.bin; lcd $work; put via.bin copy-client.bin" >/dev/null 2>&1
  t1=$(date +%s.%N)
  echo "$1 $server $(echo "$size_mib*1.048576/($t1-$t0)" | bc -l)"
}

results=$(for round in 1 2; do
  copy umbra-local 27612 share2 admin 'Passw0rd!'   # volume on node 2
  copy umbra-cross 27611 share2 admin 'Passw0rd!'   # gateway on node 1
  copy smbd 4450 share fsuser 'Passw0rd!'
done)
echo "$results" | awk -v size="$size_mib" '
  { server[$1] += $2; client[$1] += $3; n[$1]++ }
  END {
    printf "%d MiB copied within a share, impacket, MB/s (mean of %d rounds)\n", size, n["smbd"]
    for (s in n) printf "  %-12s server-side %7.1f  through the client %7.1f  server/client %.2f\n", s, server[s]/n[s], client[s]/n[s], server[s]/client[s]
    printf "  server-side, umbra-local/smbd %.2f, umbra-cross/umbra-local %.2f\n", server["umbra-local"]/server["smbd"], server["umbra-cross"]/server["umbra-local"]
  }'
