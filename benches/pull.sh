#!/bin/sh
# Pulling a 10 MB guest from a loopback registry, beside a plain HTTP
# download of the same blob (curl), in the same run; then what a second
# `cairn run <ref>` costs once the image is cached.
#   benches/pull.sh [ROUNDS]      (needs docker-registry and curl; ~1 minute)
set -eu
cd "$(dirname "$0")/.."
rounds=${1:-30}
cargo build --release --quiet
cairn=$PWD/target/release/cairn
work=$(mktemp -d)
trap 'kill $registry 2>/dev/null; rm -rf "$work"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/config.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port, secret: bench}
YML
docker-registry serve "$work/config.yml" >"$work/registry.log" 2>&1 &
registry=$!
until curl -sf "http://127.0.0.1:$port/v2/" >/dev/null; do sleep 0.05; done

# A valid 10 MB module: one passive data segment.
python3 - "$work/big.wat" <<'PY'
import sys
open(sys.argv[1], "w").write('(module (memory (export "memory") 1) (data "' + "abcdefghij" * 1_000_000 + '") (func (export "_start")))')
PY
ref="localhost:$port/bench/big:1"
CAIRN_DATA_DIR="$work/push" "$cairn" push "$work/big.wat" "$ref" >/dev/null
CAIRN_DATA_DIR="$work/probe" "$cairn" pull "$ref" >/dev/null
layer=$(CAIRN_DATA_DIR="$work/probe" "$cairn" images --json | sed -E 's/.*"layer":"([^"]*)".*/\1/')
size=$(stat -c %s "$work/probe/images/blobs/sha256/${layer#sha256:}")
url="http://127.0.0.1:$port/v2/bench/big/blobs/$layer"

now() { date +%s%N; }
median() { sort -n | awk '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.1f", m / 1e6 }'; }

: >"$work/curl.ns"; : >"$work/pull.ns"
i=0
while [ $i -lt "$rounds" ]; do
    rm -f "$work/blob"
    t=$(now); curl -sf -o "$work/blob" "$url"; echo $(( $(now) - t )) >>"$work/curl.ns"
    # An existing data directory without the image: what a first pull costs.
    CAIRN_DATA_DIR="$work/data" "$cairn" gc --images >/dev/null
    t=$(now); CAIRN_DATA_DIR="$work/data" "$cairn" pull "$ref" >/dev/null; echo $(( $(now) - t )) >>"$work/pull.ns"
    i=$((i + 1))
done
curl_ms=$(median <"$work/curl.ns"); pull_ms=$(median <"$work/pull.ns")
echo "blob: $size bytes, $rounds rounds, medians"
echo "  curl download of the blob       $curl_ms ms"
echo "  cairn pull (image not cached)   $pull_ms ms   ($(awk -v a="$pull_ms" -v b="$curl_ms" 'BEGIN { printf "%.2f", a / b }')x curl)"

# First run compiles; later runs read the cache: no blob transfer, no compile.
rm -rf "$work/data"
t=$(now); CAIRN_DATA_DIR="$work/data" "$cairn" run "$ref" >/dev/null 2>&1; first=$(( $(now) - t ))
code_before=$(find "$work/data/code" -type f -printf '%p %T@\n' | sort)
: >"$work/run.ns"
i=0
while [ $i -lt "$rounds" ]; do
    t=$(now); out=$(CAIRN_DATA_DIR="$work/data" "$cairn" run "$ref" --json 2>/dev/null); echo $(( $(now) - t )) >>"$work/run.ns"
    echo "$out" | grep -q '"from_cache":true,"layer":"[^"]*","reference":"[^"]*","transferred":0' || { echo "a cached run transferred blobs: $out"; exit 1; }
    i=$((i + 1))
done
[ "$code_before" = "$(find "$work/data/code" -type f -printf '%p %T@\n' | sort)" ] || { echo "a cached run recompiled"; exit 1; }
echo "  cairn run <ref>, first (pull + compile)   $(awk -v n="$first" 'BEGIN { printf "%.1f", n / 1e6 }') ms"
echo "  cairn run <ref>, cached (median)          $(median <"$work/run.ns") ms   (0 blob bytes fetched, compiled code reused)"
