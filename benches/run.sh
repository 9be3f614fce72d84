#!/bin/sh
# Runs every benchmark and prints the medians the README quotes.
#   benches/run.sh            (about 8 minutes)
set -eu
cd "$(dirname "$0")/.."
cargo bench --bench dispatch -- --noplot >/dev/null
cargo bench --bench cli -- --noplot >/dev/null
echo "medians (criterion, target/criterion/*/*/new/estimates.json):"
for f in target/criterion/*/*/new/estimates.json; do
    name=$(sed -E 's/.*"full_id":"([^"]*)".*/\1/' "$(dirname "$f")/benchmark.json")
    ns=$(sed -E 's/.*"median":\{"confidence_interval":\{[^}]*\},"point_estimate":([0-9.eE+-]+).*/\1/' "$f")
    awk -v n="$name" -v ns="$ns" 'BEGIN { if (ns >= 1e6) printf "  %-60s %10.2f ms\n", n, ns/1e6; else printf "  %-60s %10.2f us\n", n, ns/1e3 }'
done
cargo bench --bench concurrency 2>/dev/null
# The timeline on 100,000 files beside cp -a and a shadow git commit
# (about 6 minutes; generates ~500 MB under target/timeline-bench once).
cargo bench --bench timeline -- --noplot 2>&1 | grep -E '^(first|store|boundary by)|^[a-z]+/|time:'
# Guest images: a 10 MB pull beside curl, and a cached run (needs docker-registry).
benches/pull.sh
# The sidecar beside direct calls to the fake upstream (about 1 minute).
cargo bench --bench sidecar 2>/dev/null
# The daemon: idle memory, A2A round trip and throughput beside the guest alone (about 1 minute).
cargo bench --bench daemon 2>/dev/null
# The scheduler with 10,000 jobs beside a daemon with none (about 4 minutes).
cargo bench --bench schedule 2>/dev/null
# The tool broker's overhead per run on the 100,000-file tree (about 1 minute).
cargo bench --bench broker 2>/dev/null
