#!/usr/bin/env bash
# Installs what building and testing Umbra needs on Debian, idempotently: build-essential (a C
# compiler and linker: aws-lc-rs and mimalloc compile C), libclang-dev (bindgen for the RocksDB
# bindings), librocksdb-dev (RocksDB 7.8, linked instead of compiling it) and
# smbclient (the real SMB client the gateway's end-to-end tests drive), and impacket and
# smbprotocol in a virtualenv (UMBRA_VENV, default ~/.cache/umbra-venv).
set -euo pipefail

packages=(build-essential libclang-dev librocksdb-dev smbclient python3-venv)
IMPACKET_VERSION=0.13.1
SMBPROTOCOL_VERSION=1.17.0
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

# Python SMB clients for the gateway's tests, in a virtualenv outside the clone.
venv="${UMBRA_VENV:-$HOME/.cache/umbra-venv}"
if ! "$venv/bin/python" -c "import impacket, smbprotocol" 2>/dev/null; then
  echo "setup: installing impacket and smbprotocol into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "impacket==$IMPACKET_VERSION" "smbprotocol==$SMBPROTOCOL_VERSION"
fi
