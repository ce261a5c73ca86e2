#!/usr/bin/env bash
# Makes a development PKI for edgesplit's TLS transport (transport/tls.hpp) with the openssl
# command-line tool (Debian: openssl): a CA, a server certificate and one client certificate per
# edge device, EC P-256 keys and SHA-256 signatures, PEM files.
#
#   scripts/make_certs.sh [--out DIR] [--days N] [--server NAME_OR_ADDRESS]... [--client NAME]...
#
#   --out DIR     where the files go (default: certs)
#   --days N      validity of the certificates (default: 365)
#   --server X    a DNS name or IP address the server is reached by; repeat for several
#                 (default: localhost, 127.0.0.1 and ::1)
#   --client NAME a client certificate with subject CN=NAME; repeat for several (default: edge-1)
#
# Writes, in DIR: ca.pem and ca.key (the CA), server.pem and server.key, and NAME.pem and NAME.key
# for each client. Keys are written with mode 0600. Files that exist are kept, so running it again
# with a new --client signs one more client certificate with the same CA.
#
# What goes where (see docs/deployment.md): the cloud gets server.pem, server.key and ca.pem
# (TlsOptions certificate_file, private_key_file, ca_file with require_client_certificate); each
# edge gets its NAME.pem, NAME.key and ca.pem. ca.key signs new certificates: it belongs on no
# device. For production, use your organisation's CA instead of this script.
set -euo pipefail

out=certs
days=365
servers=()
clients=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --days) days="$2"; shift 2 ;;
    --server) servers+=("$2"); shift 2 ;;
    --client) clients+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "make_certs.sh: unknown argument '$1' (--help lists them)" >&2; exit 2 ;;
  esac
done
[ ${#servers[@]} -gt 0 ] || servers=(localhost 127.0.0.1 ::1)
[ ${#clients[@]} -gt 0 ] || clients=(edge-1)
case "$days" in ''|*[!0-9]*) echo "make_certs.sh: --days wants a number of days" >&2; exit 2 ;; esac
command -v openssl >/dev/null || { echo "make_certs.sh: needs the openssl command-line tool (Debian: openssl)" >&2; exit 1; }
for name in "${clients[@]}"; do
  case "$name" in
    ''|*[!A-Za-z0-9._-]*|ca|server) echo "make_certs.sh: bad client name '$name' (letters, digits, . _ -; not ca or server)" >&2; exit 2 ;;
  esac
done

mkdir -p "$out"
umask 077
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }

# Signs $1.key's request for subject $2 with the CA, with the extensions in file $3, into $1.pem.
sign() {
  openssl req -new -key "$1.key" -subj "$2" -out "$tmp/req.csr"
  openssl x509 -req -in "$tmp/req.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -days "$days" -sha256 -extfile "$3" -out "$1.pem" 2>/dev/null
  chmod 644 "$1.pem"
}

if [ ! -e "$out/ca.pem" ]; then
  new_key "$out/ca.key"
  openssl req -x509 -new -key "$out/ca.key" -subj "/O=edgesplit development/CN=edgesplit development CA" \
    -days "$days" -sha256 -out "$out/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  chmod 644 "$out/ca.pem"
  echo "made $out/ca.pem (CA; its key $out/ca.key signs certificates and stays off the devices)"
else
  echo "kept $out/ca.pem"
fi

if [ ! -e "$out/server.pem" ]; then
  san=""
  for s in "${servers[@]}"; do
    if [[ "$s" =~ ^[0-9.]+$ || "$s" == *:* ]]; then san+="${san:+,}IP:$s"; else san+="${san:+,}DNS:$s"; fi
  done
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" "subjectAltName=$san" "subjectKeyIdentifier=hash" \
    "authorityKeyIdentifier=keyid" >"$tmp/server.ext"
  new_key "$out/server.key"
  sign "$out/server" "/O=edgesplit development/CN=${servers[0]}" "$tmp/server.ext"
  echo "made $out/server.pem for $san"
else
  echo "kept $out/server.pem"
fi

printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=clientAuth" "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" >"$tmp/client.ext"
for name in "${clients[@]}"; do
  if [ -e "$out/$name.pem" ]; then
    echo "kept $out/$name.pem"
    continue
  fi
  new_key "$out/$name.key"
  sign "$out/$name" "/O=edgesplit development/CN=$name" "$tmp/client.ext"
  echo "made $out/$name.pem (client CN=$name)"
done

# Every certificate must verify against the CA, as the peers will check it.
certs=("$out/server.pem")
for name in "${clients[@]}"; do certs+=("$out/$name.pem"); done
openssl verify -CAfile "$out/ca.pem" "${certs[@]}" >/dev/null
echo "verified against $out/ca.pem: ${certs[*]}"
