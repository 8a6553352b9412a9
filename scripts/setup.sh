#!/usr/bin/env bash
# Installs the system packages Tessera's build and tests use, when missing:
#   protobuf-compiler (protoc, for etcd-client's build), etcd-server (cluster tests),
#   chromium (the status page test renders the page in a real headless browser),
#   openssl (scripts/make-certs.sh, for the TLS tests), curl (HTTPS checks in tests).
# Rust comes with the machine (rustup); Python 3 with pip is used to fetch models.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found (install Rust with rustup)" >&2; exit 1; }
