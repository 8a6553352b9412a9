#!/usr/bin/env bash
# Makes a CA and one certificate signed by it, for Tessera's TLS and mTLS:
#   DIR/ca.pem, DIR/ca.key   the CA (keep ca.key off the cluster)
#   DIR/tls.pem, DIR/tls.key a certificate valid as server and as client
#                            (every Tessera process serves and calls others)
#
#   scripts/make-certs.sh DIR [--san DNS:name | --san IP:addr]... [--k8s-secret FILE [--namespace NS]]
#
# The certificate always names localhost and 127.0.0.1; add the names clients
# dial with --san (in Kubernetes, the Services of deploy/k8s: tessera,
# *.tessera-node and their .NS.svc.cluster.local names, which --k8s-secret adds).
# --k8s-secret writes a Secret `tessera-tls` (ca.crt, tls.crt, tls.key) for the
# deploy/k8s overlays. An existing CA in DIR is reused, so several runs give
# several certificates one CA trusts; a fresh DIR gives a CA nobody else trusts.
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
dir=$1; shift
sans="DNS:localhost,IP:127.0.0.1"
secret=""
namespace="default"
while [ $# -gt 0 ]; do
  case "$1" in
    --san) sans="$sans,$2"; shift 2 ;;
    --k8s-secret) secret=$2; shift 2 ;;
    --namespace) namespace=$2; shift 2 ;;
    *) usage ;;
  esac
done
if [ -n "$secret" ]; then
  sans="$sans,DNS:tessera,DNS:tessera.$namespace.svc,DNS:tessera.$namespace.svc.cluster.local"
  sans="$sans,DNS:*.tessera-node,DNS:*.tessera-node.$namespace.svc,DNS:*.tessera-node.$namespace.svc.cluster.local"
fi
command -v openssl >/dev/null || { echo "openssl missing: run scripts/setup.sh" >&2; exit 1; }
mkdir -p "$dir"
umask 077

if [ ! -f "$dir/ca.pem" ] || [ ! -f "$dir/ca.key" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 3650 -subj "/CN=Tessera CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
ext=$(mktemp)
trap 'rm -f "$ext" "$dir/tls.csr"' EXIT
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n' \
  "$sans" >"$ext"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$dir/tls.key" -out "$dir/tls.csr" -subj "/CN=tessera" 2>/dev/null
openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
  -out "$dir/tls.pem" -days 825 -extfile "$ext" 2>/dev/null
chmod 644 "$dir/ca.pem" "$dir/tls.pem"

if [ -n "$secret" ]; then
  b64() { base64 -w0 <"$1"; }
  cat >"$secret" <<EOF
# Made by scripts/make-certs.sh: the cluster's CA and certificate for mTLS.
apiVersion: v1
kind: Secret
metadata:
  name: tessera-tls
  namespace: $namespace
type: Opaque
data:
  ca.crt: $(b64 "$dir/ca.pem")
  tls.crt: $(b64 "$dir/tls.pem")
  tls.key: $(b64 "$dir/tls.key")
EOF
  echo "wrote $secret"
fi
echo "wrote $dir/ca.pem $dir/tls.pem $dir/tls.key (SANs $sans)"
