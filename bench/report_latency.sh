#!/usr/bin/env bash
# End-to-end report latency: standard lumbar phantom studies (SYNTHETIC;
# sagittal T1, T2, STIR, axial T2) sent by storescu to the daemon (release
# build, default bundle, 2 threads), analyzed, and their SR and SEG
# delivered to Orthanc on loopback. Prints latency from the last instance's
# acknowledgement to the SR in Orthanc, and studies per hour with four
# scanners sending at once (bench/report_latency.py says what is measured).
#   bench/report_latency.sh [runs] [studies per scanner] [study idle seconds] [stream cache slices]
# (stream cache 0 = no encoding while the study arrives: the baseline.)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
per_scanner=${2:-3}
idle=${3:-1.0}
stream=${4:-4096}
scripts/setup >/dev/null
cargo build --release -q --bin spineagent
bin=$PWD/target/release/spineagent
work=$(mktemp -d -p "${BENCH_DIR:-$PWD/target}" latency.XXXXXX)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dicom=$(port); ops=$(port); pacs=$(port); http=$(port)

# Orthanc as the PACS: own storage and ports, no plugins.
mkdir -p "$work/orthanc"
cat > "$work/orthanc/orthanc.json" <<JSON
{"Name": "bench-pacs", "StorageDirectory": "$work/orthanc/db", "IndexDirectory": "$work/orthanc/db",
 "DicomAet": "ORTHANC", "DicomPort": $pacs, "HttpPort": $http, "RemoteAccessAllowed": false,
 "AuthenticationEnabled": false, "Plugins": []}
JSON
Orthanc "$work/orthanc/orthanc.json" > "$work/orthanc/log" 2>&1 &
pids+=($!)

# The built-in defaults with the default bundle, Orthanc as destination and
# the given idle times.
sed -e "s/^series_idle_seconds = .*/series_idle_seconds = $idle/" \
    -e "s/^study_idle_seconds = .*/study_idle_seconds = $idle/" \
    -e "s|^# bundle = .*|bundle = \"$PWD/models/spinefm-tiny\"|" \
    -e "s|^listen = \"0.0.0.0:11112\"|listen = \"127.0.0.1:$dicom\"|" \
    -e "s|^listen = \"127.0.0.1:9464\"|listen = \"127.0.0.1:$ops\"|" \
    -e "s|^dir = .*|dir = \"$work/spool\"|" \
    -e "s|^stream_cache_slices = .*|stream_cache_slices = $stream|" config/spineagent.toml > "$work/spineagent.toml"
printf '\n[[destination]]\nname = "pacs"\nae_title = "ORTHANC"\naddress = "127.0.0.1:%s"\n' "$pacs" >> "$work/spineagent.toml"
RUST_LOG=warn "$bin" serve --config "$work/spineagent.toml" 2> "$work/daemon.log" &
pids+=($!)

# Studies: distinct seeds so every study is new to the daemon and the PACS.
lat=(); thr=()
for i in $(seq "$runs"); do lat+=($((424242 + i))); done
for i in $(seq $((4 * per_scanner))); do thr+=($((525252 + i))); done
for s in "${lat[@]}" "${thr[@]}"; do
  "$bin" phantom study --seed "$s" --region lumbar --vendor siemens --out "$work/study_$s" --standard \
    --finding herniation:L4-L5:left:severe:extrusion >/dev/null
done
python3 -c "import json,sys; json.dump({'latency': [int(x) for x in sys.argv[1].split()], 'throughput': [int(x) for x in sys.argv[2].split()]}, open('$work/seeds.json','w'))" "${lat[*]}" "${thr[*]}"

for _ in $(seq 300); do
  curl -sf "http://127.0.0.1:$ops/readyz" >/dev/null 2>&1 && curl -sf "http://127.0.0.1:$http/system" >/dev/null 2>&1 && break
  sleep 0.1
done
python3 bench/report_latency.py "$work" "$dicom" "$ops" "$http" "$idle" "$runs" "$per_scanner"
