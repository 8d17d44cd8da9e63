#!/bin/sh
# Makes the files compose.tls.yaml mounts as secrets, in DIR (default: ./secrets next to
# this script): a demo CA, the proxy's certificate for localhost/127.0.0.1, a client
# certificate for the producer (mTLS) and its Java PEM key store, and placeholders for
# a secured cluster's CA and the sidecar's SASL password. Demo material only: the keys
# are unencrypted and world-readable so the containers' users can read the bind mounts.
set -eu
dir=${1:-$(dirname "$0")/secrets}
mkdir -p "$dir"
cd "$dir"
days=365

openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=idemproxy demo CA" \
  -keyout ca.key -out ca.crt 2>/dev/null

issue() { # name subject extension
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
issue proxy "/CN=idemproxy" \
  "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
issue producer "/OU=demo/CN=demo-producer" "extendedKeyUsage=clientAuth"
cat producer.key producer.crt > producer-keystore.pem

# A secured cluster's CA and the sidecar's SASL password: replace with the real ones.
[ -f upstream-ca.crt ] || cp ca.crt upstream-ca.crt
[ -f sasl-password ] || printf 'change-me\n' > sasl-password

rm -f ca.key ca.srl
chmod 0644 ./*
echo "secrets written to $(pwd)"
