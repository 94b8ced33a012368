#!/usr/bin/env bash
set -u
# usage: tools/bench/run.sh (after cargo build --release -p iryo -p iryo-bench and iryo-bench replicate)
B=${IRYO:-target/release/iryo}; LB=${IRYO_BENCH:-target/release/iryo-bench}
echo "== load: $(uptime)"
rm -rf /tmp/b1 /tmp/b10
echo "== ingest 1x"; $B import --data /tmp/b1 /work/shared/datasets/synthea-r4/sample-60-patients.ndjson.gz 2>&1 | tail -2
echo "== ingest 10x"; $B import --data /tmp/b10 /tmp/synthea-10x.ndjson.gz 2>&1 | tail -2
for d in b1 b10; do
  $B serve --data /tmp/$d --listen 127.0.0.1:18080 2>/dev/null & pid=$!
  sleep 2
  echo "== $d reads"
  $LB read --base http://127.0.0.1:18080/fhir --clients 1 --seconds 10
  $LB read --base http://127.0.0.1:18080/fhir --clients 32 --seconds 10
  echo "== $d searches"
  $LB search --base http://127.0.0.1:18080/fhir --iterations 200
  kill $pid; wait $pid 2>/dev/null
done
echo "== load: $(uptime)"
