#!/usr/bin/env bash
# Receive throughput: spineagent (durable: fsync before every Success) vs
# DCMTK storescp (no fsync), same storescu sender, loopback, 500 MR
# instances of 512 KB, one and four associations. TCP_NODELAY=1 for both
# DCMTK peers (without it DCMTK stalls ~45 ms per instance on Nagle).
#
#   bench/receive_throughput.sh [instances] [repetitions]
#
# Prints a markdown table for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-500}
reps=${2:-3}
scripts/setup >/dev/null
cargo build --release --bins -q
bin=$PWD/target/release/spineagent
work=$(mktemp -d -p "${BENCH_DIR:-$PWD/target}" bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
python3 bench/make_mr_instances.py "$work/in" "$n"
mb=$(du -sm --apparent-size "$work/in" | cut -f1)
export TCP_NODELAY=1

send() { # port, associations
  local port=$1 assocs=$2
  local files=("$work"/in/*.dcm)
  local per=$(( (${#files[@]} + assocs - 1) / assocs ))
  local start end pids=()
  start=$(date +%s.%N)
  for ((a = 0; a < assocs; a++)); do
    storescu -q -pdu 131072 -aet BENCH -aec RECEIVER 127.0.0.1 "$port" "${files[@]:a*per:per}" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

run_storescp() { # associations
  local times=()
  for ((r = 0; r < reps; r++)); do
    rm -rf "$work/dcmtk" && mkdir -p "$work/dcmtk"
    storescp -aet RECEIVER -pdu 131072 -od "$work/dcmtk" 11990 &
    local pid=$!
    sleep 0.5
    times+=("$(send 11990 "$1")")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    [[ $(ls "$work/dcmtk" | wc -l) -eq $n ]] || { echo "storescp stored $(ls "$work/dcmtk" | wc -l)" >&2; exit 1; }
  done
  printf '%s\n' "${times[@]}" | median
}

run_spineagent() { # associations
  local times=()
  sed -e 's/^ae_title = .*/ae_title = "RECEIVER"/' -e 's/^series_idle_seconds = .*/series_idle_seconds = 600.0/' \
      -e 's/^study_idle_seconds = .*/study_idle_seconds = 600.0/' config/spineagent.toml > "$work/spineagent.toml"
  for ((r = 0; r < reps; r++)); do
    rm -rf "$work/spool"
    "$bin" serve --config "$work/spineagent.toml" --spool "$work/spool" --port 11991 \
      --metrics-addr 127.0.0.1:11992 2>"$work/daemon.log" &
    local pid=$!
    for _ in $(seq 50); do "$bin" echo RECEIVER@127.0.0.1:11991 >/dev/null 2>&1 && break; sleep 0.1; done
    times+=("$(send 11991 "$1")")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    local got
    got=$(find "$work/spool/studies" -name '*.dcm' | wc -l)
    [[ $got -eq $n ]] || { echo "spineagent stored $got" >&2; exit 1; }
  done
  printf '%s\n' "${times[@]}" | median
}

echo "| associations | receiver | seconds (median of $reps) | instances/s | MB/s | spineagent / storescp |"
echo "|---|---|---|---|---|---|"
for assocs in 1 4; do
  t_dcmtk=$(run_storescp "$assocs")
  t_ours=$(run_spineagent "$assocs")
  for pair in "DCMTK storescp 3.6.7 (no fsync):$t_dcmtk" "spineagent (fsync per instance):$t_ours"; do
    name=${pair%%:*}; t=${pair##*:}
    ratio=""
    [[ $name == spineagent* ]] && ratio=$(printf '%.2f' "$(echo "$t_dcmtk / $t_ours" | bc -l)")
    printf '| %d | %s | %.2f | %.0f | %.0f | %s |\n' "$assocs" "$name" "$t" "$(echo "$n / $t" | bc -l)" \
      "$(echo "$mb / $t" | bc -l)" "$ratio"
  done
done
echo
echo "$n instances, $mb MB in all; $(nproc) cores; $(uname -r); storescu -pdu 131072, TCP_NODELAY=1."
