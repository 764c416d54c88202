#!/usr/bin/env bash
# Installs what building and testing Umbra needs on Debian, idempotently: libclang-dev (bindgen
# for the RocksDB bindings), librocksdb-dev (RocksDB 7.8, linked instead of compiling it) and
# smbclient (the real SMB client the gateway's end-to-end tests drive).
set -euo pipefail

packages=(libclang-dev librocksdb-dev smbclient)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust with rustup first" >&2; exit 1; }
