#!/usr/bin/env bash
# Benchmark: our `smtpd -c Sink` against Postfix's `smtp-sink`, both driven by Postfix's
# `smtp-source`, interleaved in one run; then 10,000 idle connections against each.
#
#   tools/bench.sh                 # everything, medians of 3 rounds
#   ROUNDS=5 tools/bench.sh        # more rounds
#   SKIP_SCALE=1 tools/bench.sh    # throughput scenarios only
#   BASELINE_BIN=/tmp/smtpd-old tools/bench.sh   # A/B: another build of ours in smtp-sink's place
#
# Needs Linux, loopback, `cargo`, and the Debian package `postfix` (for /usr/sbin/smtp-source
# and /usr/sbin/smtp-sink); it is installed non-interactively when missing and we are root.
# Our server runs with RUST_LOG=warn: at the default `info` it logs one line per message,
# which smtp-sink does not do (see docs/performance.md for that cost).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SESSIONS=${SESSIONS:-10}
N_PERSIST=${N_PERSIST:-60000}   # 1 KiB messages over persistent sessions
N_PERCONN=${N_PERCONN:-20000}   # 1 KiB messages, one per connection
N_BIG=${N_BIG:-6000}            # 100 KiB messages over persistent sessions
IDLE=${IDLE:-10000}
SAMPLES=${SAMPLES:-200}
PORT_OURS=${PORT_OURS:-12525}
PORT_SINK=${PORT_SINK:-12526}

cd "$(dirname "$0")/.."

SOURCE=/usr/sbin/smtp-source
SINK=/usr/sbin/smtp-sink
if [[ ! -x $SOURCE || ! -x $SINK ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "installing postfix (for smtp-source and smtp-sink)..." >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq postfix >/dev/null
        # The package may start a mail system; we only need the two tools.
        command -v postfix >/dev/null && postfix stop >/dev/null 2>&1 || true
    else
        echo "need $SOURCE and $SINK: sudo DEBIAN_FRONTEND=noninteractive apt-get install -y postfix" >&2
        exit 1
    fi
fi

cargo build --release --quiet --bin smtpd --example conn_scale
OURS_BIN=${OURS_BIN:-target/release/smtpd}
SCALE_BIN=target/release/examples/conn_scale

# 10k idle connections need >10k descriptors in each process.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if (( $(ulimit -n) < IDLE + SAMPLES + 100 )); then
    echo "ulimit -n is $(ulimit -n); the connection-scale run needs $((IDLE + SAMPLES + 100))" >&2
    exit 1
fi

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
TCK=$(getconf CLK_TCK)

wait_port() { # PORT PID
    for _ in $(seq 100); do
        if ! kill -0 "$2" 2>/dev/null; then
            echo "the server on port $1 exited; is the port in use?" >&2
            exit 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

# start_ours / start_sink set PID to the new server's process id.
start_ours() {
    RUST_LOG=warn "$OURS_BIN" -n -c Sink "127.0.0.1:$PORT_OURS" 2>>"$TMP/ours.log" &
    PID=$!
    PIDS+=("$PID")
    wait_port "$PORT_OURS" "$PID"
}
start_sink() {
    if [[ -n ${BASELINE_BIN:-} ]]; then
        RUST_LOG=warn "$BASELINE_BIN" -n -c Sink "127.0.0.1:$PORT_SINK" 2>>"$TMP/sink.log" &
        PID=$!
        PIDS+=("$PID")
        wait_port "$PORT_SINK" "$PID"
        return
    fi
    local user=()
    [[ $(id -u) -eq 0 ]] && user=(-u nobody)
    "$SINK" "${user[@]}" -m $((IDLE + SAMPLES + 100)) "127.0.0.1:$PORT_SINK" 1024 2>>"$TMP/sink.log" &
    PID=$!
    PIDS+=("$PID")
    wait_port "$PORT_SINK" "$PID"
}
stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run SCENARIO SERVER PID PORT N LEN [smtp-source flags...]  -> appends a line to $TMP/results
run() {
    local scenario=$1 server=$2 pid=$3 port=$4 n=$5 len=$6
    shift 6
    local c0 c1 t0 t1
    c0=$(cpu_ticks "$pid")
    t0=$(date +%s.%N)
    "$SOURCE" "$@" -s "$SESSIONS" -m "$n" -l "$len" -M localhost "127.0.0.1:$port" \
        >/dev/null 2>>"$TMP/source.log"
    t1=$(date +%s.%N)
    c1=$(cpu_ticks "$pid")
    awk -v s="$scenario" -v srv="$server" -v n="$n" -v len="$len" -v t0="$t0" -v t1="$t1" \
        -v c0="$c0" -v c1="$c1" -v tck="$TCK" 'BEGIN {
            secs = t1 - t0
            printf "%s %s %.0f %.1f %.3f\n", s, srv, n / secs, n * len / secs / 1048576,
                (c1 - c0) / tck * 10000 / n
        }' >>"$TMP/results"
}

start_ours; OURS=$PID
start_sink; SINKPID=$PID
echo "round:" >&2
for round in $(seq "$ROUNDS"); do
    echo -n " $round" >&2
    # Alternate which server goes first, so neither always runs on a warmer machine.
    if (( round % 2 )); then order="ours sink"; else order="sink ours"; fi
    for scenario in persist perconn big; do
        for server in $order; do
            if [[ $server == ours ]]; then pid=$OURS port=$PORT_OURS; else pid=$SINKPID port=$PORT_SINK; fi
            case $scenario in
                persist) run persist "$server" "$pid" "$port" "$N_PERSIST" 1024 -d ;;
                perconn) run perconn "$server" "$pid" "$port" "$N_PERCONN" 1024 ;;
                big) run big "$server" "$pid" "$port" "$N_BIG" 102400 -d ;;
            esac
        done
    done
done
echo >&2
stop "$OURS"
stop "$SINKPID"

median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
col() { awk -v s="$1" -v srv="$2" -v c="$3" '$1 == s && $2 == srv {print $c}' "$TMP/results" | median; }

echo
echo "smtp-source -s $SESSIONS, medians of $ROUNDS interleaved rounds (ratio = ours / smtp-sink)"
printf "%-26s %12s %12s %9s %12s %12s %9s %10s %10s %9s\n" scenario "ours msg/s" "sink msg/s" ratio \
    "ours MiB/s" "sink MiB/s" ratio "ours CPU" "sink CPU" ratio
for scenario in persist perconn big; do
    case $scenario in
        persist) label="1 KiB persistent (-d)" ;;
        perconn) label="1 KiB one msg per conn" ;;
        big) label="100 KiB persistent (-d)" ;;
    esac
    om=$(col $scenario ours 3); sm=$(col $scenario sink 3)
    ob=$(col $scenario ours 4); sb=$(col $scenario sink 4)
    oc=$(col $scenario ours 5); sc=$(col $scenario sink 5)
    awk -v l="$label" -v om="$om" -v sm="$sm" -v ob="$ob" -v sb="$sb" -v oc="$oc" -v sc="$sc" 'BEGIN {
        printf "%-26s %12.0f %12.0f %9.2f %12.1f %12.1f %9.2f %9.3fs %9.3fs %9.2f\n",
            l, om, sm, om / sm, ob, sb, ob / sb, oc, sc, (sc > 0 ? oc / sc : 0)
    }'
done
echo "(CPU = server utime+stime per 10,000 messages, from /proc/PID/stat)"

if [[ -n ${SKIP_SCALE:-} ]]; then exit 0; fi

echo
echo "$IDLE idle connections after EHLO; fresh transaction latency over $SAMPLES (medians of $ROUNDS)"
for round in $(seq "$ROUNDS"); do
    for server in ours sink; do
        if [[ $server == ours ]]; then start_ours; port=$PORT_OURS; else start_sink; port=$PORT_SINK; fi
        line=$("$SCALE_BIN" "127.0.0.1:$port" "$PID" "$IDLE" "$SAMPLES")
        echo "$server $line" >>"$TMP/scale"
        stop "$PID"
        sleep 1 # let the closed connections drain from the kernel
    done
done
field() { awk -v srv="$1" -v f="$2" '$1 == srv { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == f) print kv[2] } }' "$TMP/scale" | median; }
printf "%-10s %16s %10s %10s %10s\n" server "bytes/idle conn" "p50 us" "p90 us" "p99 us"
for server in ours sink; do
    name=$server; [[ $server == sink ]] && name=smtp-sink
    printf "%-10s %16s %10s %10s %10s\n" "$name" "$(field $server bytes_per_conn)" \
        "$(field $server p50_us)" "$(field $server p90_us)" "$(field $server p99_us)"
done
