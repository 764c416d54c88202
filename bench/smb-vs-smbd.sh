#!/usr/bin/env bash
# smbclient put and get of one file, and 1000 small-file creates (mput of 1000 files of 1 KiB
# into a new directory), against Umbra (gateway on the volume's owner, and gateway on another
# node) and against Samba smbd in the same run, A B A B, printing MB/s, creates/s and ratios.
# Every connection signs (smbclient --client-protection=sign): Umbra requires signing, and smbd
# with smbclient's defaults signs only the session setup, so an unsigned smbd is also timed, as
# `smbd-unsigned`, for reference.
# usage: bench/smb-vs-smbd.sh [SIZE_MIB] [SMALL_FILES]   (needs a release build: cargo build --release;
# starts smbd with ../shared/tools/samba-ref.sh and a local Umbra cluster with `umbra up`)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
small=${2:-1000}
. bench/peers.sh 27500
head -c $((size_mib << 20)) /dev/urandom > "$work/in.bin"
mkdir "$work/small"
for i in $(seq "$small"); do head -c 1024 /dev/urandom > "$work/small/f$i.bin"; done
# The inputs reach the disk before anything is timed: their writeback would otherwise run
# during the first round's put (measured: the first put of a run 280-410 MB/s, later ones 600-700).
sync

# smb ARGS...: smbclient against rate's server (bash: rate's locals are seen here)
smb() { smbclient "//127.0.0.1/$share" -p "$port" -U "$cred" --client-protection="$protection" "$@"; }

# rate SERVER PORT SHARE USER%PASS [PROTECTION]: seconds for put, then get, of in.bin, and
# creates per second
rate() {
  local t0 t1 t2 port=$2 share=$3 cred=$4 protection=${5:-sign}
  # Each put starts with nothing dirty in the page cache: the writeback of the server before's
  # put (or its own) would otherwise run during this one (whichever server comes next pays).
  # And each writes a new file, as a backup does: over an existing one, the pages its
  # truncate frees hold the new data at once, where new pages cost this VM four to ten times
  # more (its balloon reports free pages to the host; docs/benchmarks.md, Run 22), so a
  # server that overwrites in place would be timed on recycled pages and one that writes a
  # log on new ones.
  local name="b$RANDOM$RANDOM.bin" dir="small$RANDOM$RANDOM"
  case $1 in smbd*) printf '%s\n%s\n' "$name" "$dir" >> "$work/smbd.put" ;; esac
  sync
  t0=$(date +%s.%N)
  smb -c "lcd $work; put in.bin $name" >/dev/null
  t1=$(date +%s.%N)
  # The timed get goes to /dev/null: into a file it would time this machine's disk, which
  # the server's own writeback of the put keeps busy. A second, untimed get checks the data.
  smb -c "get $name /dev/null" >/dev/null
  t2=$(date +%s.%N)
  smb -c "lcd $work; get $name out.bin" >/dev/null
  cmp -s "$work/in.bin" "$work/out.bin" || { echo "$1: get differs from put" >&2; exit 1; }
  # The file stays until the run ends: deleting it would free pages for whichever server's put
  # comes next (measured: puts of 380-1060 MB/s in one run, by their order).
  local put get
  put=$(echo "$size_mib*1.048576/($t1-$t0)" | bc -l)
  get=$(echo "$size_mib*1.048576/($t2-$t1)" | bc -l)
  # The small files, into a directory new to this round.
  smb -c "mkdir $dir" >/dev/null
  sync
  t0=$(date +%s.%N)
  smb -c "lcd $work/small; cd $dir; prompt off; mput *" >/dev/null 2>&1
  t1=$(date +%s.%N)
  local listed
  listed=$(smb -c "cd $dir; ls" | grep -c '\.bin')
  [ "$listed" -eq "$small" ] || { echo "$1: $listed of $small small files listed" >&2; exit 1; }
  echo "$1 $put $get $(echo "$small/($t1-$t0)" | bc -l)"
}

results=$(for round in 1 2; do
  rate umbra-local 27512 share2 'admin%Passw0rd!'   # gateway on node 2, volume on node 2
  rate umbra-cross 27511 share2 'admin%Passw0rd!'   # gateway on node 1, volume on node 2
  rate smbd 4450 share 'fsuser%Passw0rd!'
  rate smbd-unsigned 4450 share 'fsuser%Passw0rd!' off
done)
echo "$results" | awk -v size="$size_mib" '
  { put[$1] += $2; get[$1] += $3; cr[$1] += $4; n[$1]++ }
  END {
    printf "%d MiB, smbclient, MB/s, and small-file creates/s (mean of %d rounds)\n", size, n["smbd"]
    for (s in n) printf "  %-12s put %7.1f  get %7.1f  creates %7.1f\n", s, put[s]/n[s], get[s]/n[s], cr[s]/n[s]
    printf "  umbra-local/smbd: put %.2f get %.2f creates %.2f\n", put["umbra-local"]/put["smbd"], get["umbra-local"]/get["smbd"], cr["umbra-local"]/cr["smbd"]
    printf "  umbra-local/smbd-unsigned: put %.2f get %.2f creates %.2f\n", put["umbra-local"]/put["smbd-unsigned"], get["umbra-local"]/get["smbd-unsigned"], cr["umbra-local"]/cr["smbd-unsigned"]
    printf "  umbra-cross/umbra-local: put %.2f get %.2f creates %.2f\n", put["umbra-cross"]/put["umbra-local"], get["umbra-cross"]/get["umbra-local"], cr["umbra-cross"]/cr["umbra-local"]
  }'
