#!/usr/bin/env bash
# sluice against HAProxy and NGINX (and a direct connection), side by side.
#
#   bash bench/run.sh            full run (7 interleaved repetitions, about 25 minutes with the sip scenario);
#                                writes bench/RESULTS.md and bench/results/<time>/
#   bash bench/run.sh --quick    smoke run (1 repetition, short windows, 1,000 idle
#                                sessions, 2 fills of 1,000, about a minute after the
#                                build); writes only bench/results/<time>-quick/
#   bash bench/run.sh --reps 3   another number of repetitions
#   bash bench/run.sh --report bench/results/<time>
#                                rebuild that run's RESULTS.md from its runs.jsonl
#   bash bench/run.sh --baseline REV
#                                also run the sluice of git revision REV (a branch, tag or
#                                commit) as targets sluice-base (and sluice-accept-base),
#                                interleaved with the others, with ratios sluice ÷ sluice-base
#                                within each repetition; REV is built in release mode from a
#                                temporary git worktree into $CARGO_TARGET_DIR/bench-baseline/
#                                <commit>/ (kept, and reused by the next run)
#   bash bench/run.sh --only-sluice
#                                leave HAProxy and NGINX out (targets direct and sluice's)
#   bash bench/run.sh --admission / --no-admission
#                                run / skip the admission percentiles (benches/admission.rs
#                                --percentiles, a few seconds, once per repetition); full
#                                runs include them, quick runs and --scenarios runs only
#                                with --admission
#   bash bench/run.sh --scenarios sip[,load,…]
#                                run only these scenarios (of rtt, load, idle, handshakes,
#                                sip; default all of them)
#
#   The SIP call counting figures of issue 17 alone, 5 repetitions (a few minutes):
#   bash bench/run.sh --reps 5 --only-sluice --scenarios sip
#
#   A comparison against the previous commit, in about 10 minutes after the builds:
#   bash bench/run.sh --reps 3 --baseline HEAD~1 --only-sluice
#
# What it does: builds sluice and examples/wsbench in release mode; installs haproxy,
# nginx and perf (Debian linux-perf) when missing; writes the configs from
# bench/{sluice.toml,haproxy.cfg,nginx.conf} into a temporary directory; starts the echo
# server (the upstream of every target), sluice, HAProxy and NGINX on 127.0.0.1; then,
# for each repetition and each scenario, runs it against every target in turn (the
# order rotates each repetition); finally prints medians (wsbench report).
#
# Targets: direct (no proxy), sluice (a hold-mode tenant: the byte tunnel),
# sluice-accept (the same process, an accept-mode tenant: sluice's message relay),
# HAProxy, NGINX; with --baseline, sluice-base and sluice-accept-base (the same two
# tenants in a second process, REV's binary; sluice-accept-base only when REV accepts
# the accept-mode tenant). Scenario sip only: sluice-sip and sluice-sip-off (the same
# sluice process, two accept-mode tenants with subprotocol sip: bench_sip counts calls,
# bench_sip_off has no call keys); never a baseline.
#
# Scenarios (1 KiB text frames, all on loopback):
#   rtt         one connection, sequential frames: latency p50/p99
#   load        100 connections, one frame in flight each: round trips/s and the proxy's
#               CPU time (user+system, /proc/PID/stat; NGINX: its workers summed) per
#               round trip; syscalls and context switches per round trip with perf
#   idle        9,000 idle sessions: RSS growth per session, RSS 2 s and 5 s after all
#               close (each proxy is restarted just before, so it starts from a fresh heap)
#   handshakes  repeated connect fills: 6,000 sessions opened with 200 handshakes in
#               flight, held until the fill is complete, then closed; 3 fills (at most
#               60 s): handshakes/s and proxy CPU per handshake over the connect phases,
#               CPU per session over connect + close (sluice's admission and [edge] are
#               on, with limits that never bind)
#   admission   (sluice only, no proxy) p50/p99 of one admission decision, one thread
#               on one tenant and two threads on the same tenant
#   sip         (issue 17; sluice-sip and sluice-sip-off only) load --sip: 100
#               connections, one SIP call up on each, in-dialog INFOs of 1 KiB: proxy
#               CPU per round trip with call counting on and off; then calls (on
#               sluice-sip, restarted just before): RSS with 4,000 idle SIP sessions open
#               and again with one call up on each: bytes per tracked call and per idle
#               SIP session
#
# Environment: BENCH_PORT_BASE (default 17000; uses BASE..BASE+6), CARGO_TARGET_DIR,
# BENCH_NICE (default -10: as root, the benchmark's processes get this priority, so
# other work on a shared machine disturbs it less; 0 = leave priorities alone).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ARGS_TEXT="$*"   # for commands.md

QUICK=0
REPS=7
REPORT_ONLY=""
BASELINE=""
ONLY_SLUICE=0
ADMISSION=""   # empty: on for full runs, off for quick ones
ALL_SCENARIOS="rtt load idle handshakes sip"
SCENARIOS=""   # empty: all of them
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1; REPS=1 ;;
        --reps) REPS=${2:?--reps needs a number}; shift ;;
        --report) REPORT_ONLY=${2:?--report needs a directory}; shift ;;
        --baseline) BASELINE=${2:?--baseline needs a git revision}; shift ;;
        --only-sluice) ONLY_SLUICE=1 ;;
        --admission) ADMISSION=1 ;;
        --no-admission) ADMISSION=0 ;;
        --scenarios) SCENARIOS=${2:?--scenarios needs a list, e.g. sip or load,sip}; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

if [ -n "$SCENARIOS" ]; then
    SCENARIOS=${SCENARIOS//,/ }
    for s in $SCENARIOS; do
        case " $ALL_SCENARIOS " in
            *" $s "*) ;;
            *) echo "--scenarios: unknown scenario $s (known: $ALL_SCENARIOS)" >&2; exit 2 ;;
        esac
    done
    # In the order of a full run, whatever order they were given in.
    picked=""
    for s in $ALL_SCENARIOS; do
        case " $SCENARIOS " in *" $s "*) picked="$picked $s" ;; esac
    done
    SCENARIOS=${picked# }
    ADMISSION=${ADMISSION:-0}
else
    SCENARIOS=$ALL_SCENARIOS
fi

if [ -n "$BASELINE" ]; then
    BASE_COMMIT=$(git rev-parse --verify --quiet "$BASELINE^{commit}") \
        || { echo "--baseline $BASELINE: not a git revision" >&2; exit 2; }
fi

if [ "$QUICK" = 1 ]; then
    RTT_FRAMES=2000; LOAD_WARM=0.5; LOAD_SECS=2; PERF_SECS=1
    IDLE_CONNS=1000; IDLE_HOLD=1; IDLE_SETTLE=1; IDLE_AFTER=2
    HS_COUNT=1000; HS_FILLS=2; HS_SETTLE=0.5
    CALLS_CONNS=1000; CALLS_SETTLE=1
    ADMISSION=${ADMISSION:-0}
else
    RTT_FRAMES=20000; LOAD_WARM=2; LOAD_SECS=10; PERF_SECS=3
    IDLE_CONNS=9000; IDLE_HOLD=3; IDLE_SETTLE=2; IDLE_AFTER=5
    HS_COUNT=6000; HS_FILLS=3; HS_SETTLE=1
    CALLS_CONNS=4000; CALLS_SETTLE=2
    ADMISSION=${ADMISSION:-1}
fi
LOAD_CONNS=100
# Connect fills: HS_COUNT sessions held open at once need 2 × HS_COUNT descriptors in a
# proxy (of 20,000) and HS_COUNT client + HS_COUNT proxy-to-echo ports of loopback's
# ~28,000 ephemeral ones; the client's close leaves no TIME_WAIT (wsbench: "Closing").
HS_CONC=200
HS_MAX_SECS=60
SIZE=1024
# The sip scenario's calls run: CALLS_CONNS sessions (2 descriptors each in sluice), one
# call each, placed 200 at a time.
CALLS_CONC=200

# A proxied session holds two descriptors in the proxy; 9,000 sessions need 18,000.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# sluice logs as operators run it: its default level (a line per connect and per
# session end); SLUICE_LOG=warn measures it without those lines.
SLUICE_LOG=${SLUICE_LOG:-info}
if [ "$(ulimit -n)" -lt 20000 ] && [ "$QUICK" = 0 ]; then
    echo "warning: open files limited to $(ulimit -n); 9,000 idle sessions may fail" >&2
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi

# --- tools ----------------------------------------------------------------------------
PATH=$PATH:/usr/sbin:/sbin   # haproxy and nginx live in /usr/sbin
missing=()
if [ "$ONLY_SLUICE" = 0 ]; then
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v nginx >/dev/null || missing+=(nginx)
fi
command -v perf >/dev/null || missing+=(linux-perf)
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y "${missing[@]}" >/dev/null \
        || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y "${missing[@]}" >/dev/null; } \
        || echo "warning: could not install ${missing[*]}" >&2
fi

# Everything started here is stopped on exit, by its own pid.
declare -A PID=()
ECHO_PID=""
TMP=""
BASE_WT=""   # the baseline's temporary worktree while it builds

cleanup() {
    for t in "${!PID[@]}"; do stop_target "$t"; done
    if [ -n "$ECHO_PID" ]; then kill "$ECHO_PID" 2>/dev/null || true; wait "$ECHO_PID" 2>/dev/null || true; fi
    if [ -n "$TMP" ]; then rm -rf "$TMP"; fi
    if [ -n "$BASE_WT" ]; then
        git -C "$ROOT" worktree remove --force "$BASE_WT/src" 2>/dev/null || true
        rm -rf "$BASE_WT"
    fi
    if [ -n "${AUTOGROUP_NICE:-}" ]; then echo "$AUTOGROUP_NICE" >/proc/self/autogroup 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
echo "== cargo build --release --bin sluice --example wsbench"
cargo build --release --bin sluice --example wsbench
SLUICE=$CARGO_TARGET_DIR/release/sluice
W=$CARGO_TARGET_DIR/release/examples/wsbench

# The admission percentiles: benches/admission.rs, built by cargo bench (bench profile).
ADMISSION_BIN=""
if [ "$ADMISSION" = 1 ] && [ -z "$REPORT_ONLY" ]; then
    echo "== cargo bench --bench admission --no-run"
    # The bench target's own artifact: cargo also reports the sluice binary it builds
    # for the benches, in either order.
    ADMISSION_BIN=$(cargo bench --bench admission --no-run --message-format=json \
        | grep '"kind":\["bench"\]' | grep -o '"executable":"[^"]*"' | tail -1 \
        | sed 's/"executable":"\(.*\)"/\1/')
    [ -x "$ADMISSION_BIN" ] || { echo "warning: no admission benchmark binary; skipping it" >&2; ADMISSION_BIN=""; }
fi

# The baseline: REV's sluice, built once per commit in a target directory of its own (its
# dependencies may differ) from a temporary worktree, which goes away after the build.
SLUICE_BASE=""
if [ -n "$BASELINE" ] && [ -z "$REPORT_ONLY" ]; then
    BASE_TARGET=$CARGO_TARGET_DIR/bench-baseline/$BASE_COMMIT
    SLUICE_BASE=$BASE_TARGET/release/sluice
    BASE_NAME=$(git rev-parse --short "$BASE_COMMIT")
    case "$BASE_COMMIT" in "$BASELINE"*) ;; *) BASE_NAME="$BASELINE ($BASE_NAME)" ;; esac
    if [ -x "$SLUICE_BASE" ]; then
        echo "== baseline $BASE_NAME: reusing $SLUICE_BASE"
    else
        echo "== baseline $BASE_NAME: cargo build --release --bin sluice in a temporary worktree"
        BASE_WT=$(mktemp -d /tmp/sluice-baseline.XXXXXX)
        git worktree add --detach --quiet "$BASE_WT/src" "$BASE_COMMIT"
        (cd "$BASE_WT/src" && CARGO_TARGET_DIR=$BASE_TARGET cargo build --release --bin sluice)
        git worktree remove --force "$BASE_WT/src"
        rm -rf "$BASE_WT"
        BASE_WT=""
    fi
fi

# RESULTS.md of a results directory: its meta.md, the tables, its commands.md. A full
# run's also becomes bench/RESULTS.md.
assemble() {
    local dir=$1 table
    table=$("$W" report --input "$dir/runs.jsonl")
    echo
    echo "$table"
    { cat "$dir/meta.md"; echo; echo "$table"; echo; cat "$dir/commands.md"; } >"$dir/RESULTS.md"
    case "${dir%/}" in
        *-quick) echo "== wrote $dir/RESULTS.md (quick run: bench/RESULTS.md left as it is)" ;;
        *-vs-*|*-only-sluice*) echo "== wrote $dir/RESULTS.md (baseline or --only-sluice run: bench/RESULTS.md left as it is)" ;;
        *-scenarios-*) echo "== wrote $dir/RESULTS.md (--scenarios run: bench/RESULTS.md left as it is)" ;;
        *) cp "$dir/RESULTS.md" bench/RESULTS.md; echo "== wrote bench/RESULTS.md and $dir/" ;;
    esac
}
if [ -n "$REPORT_ONLY" ]; then
    assemble "${REPORT_ONLY%/}"
    exit 0
fi

# perf: the tracepoint and software event we count (a VM without a PMU has no
# `instructions` but still has these).
PERF_ARGS=()
perf_probe=$(perf stat -x, -e raw_syscalls:sys_enter,context-switches true 2>&1 >/dev/null || true)
if grep -q '^[0-9][0-9]*,.*raw_syscalls:sys_enter' <<<"$perf_probe"; then
    PERF_ARGS=(--perf --perf-secs "$PERF_SECS")
    PERF_NOTE="perf stat -e raw_syscalls:sys_enter,context-switches (own ${PERF_SECS} s window after the CPU window)"
else
    PERF_NOTE="perf unavailable: syscall and context-switch columns skipped"
fi
echo "== $PERF_NOTE"

# Priority on a shared machine. With autogroup scheduling (the default on desktops and
# many VMs) a task's nice only counts inside its session's group, so the group's nice is
# set too. Every process of the benchmark inherits it: no target is favoured.
NICE=${BENCH_NICE:--10}
PRIO_NOTE="priorities left alone"
if [ "$NICE" != 0 ] && [ "$(id -u)" -eq 0 ]; then
    renice -n "$NICE" -p $$ >/dev/null 2>&1 && PRIO_NOTE="benchmark processes at nice $NICE"
    # The group is the caller's session: its nice is given back on exit (cleanup).
    if [ -w /proc/self/autogroup ]; then
        AUTOGROUP_NICE=$(sed -n 's/.* nice //p' /proc/self/autogroup)
        if echo "$NICE" >/proc/self/autogroup 2>/dev/null; then
            PRIO_NOTE="$PRIO_NOTE (and their autogroup)"
        else
            AUTOGROUP_NICE=""
        fi
    fi
fi
echo "== $PRIO_NOTE"

# --- ports, configs ---------------------------------------------------------------------
BASE=${BENCH_PORT_BASE:-17000}
ECHO_PORT=$BASE; SLUICE_PORT=$((BASE + 1)); SLUICE_ADMIN_PORT=$((BASE + 2))
HAPROXY_PORT=$((BASE + 3)); NGINX_PORT=$((BASE + 4))
SLUICE_BASE_PORT=$((BASE + 5)); SLUICE_BASE_ADMIN_PORT=$((BASE + 6))
ports=("$ECHO_PORT" "$SLUICE_PORT" "$SLUICE_ADMIN_PORT")
[ "$ONLY_SLUICE" = 0 ] && ports+=("$HAPROXY_PORT" "$NGINX_PORT")
[ -n "$SLUICE_BASE" ] && ports+=("$SLUICE_BASE_PORT" "$SLUICE_BASE_ADMIN_PORT")
for p in "${ports[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "port $p is in use; set BENCH_PORT_BASE" >&2
        exit 1
    fi
done

TMP=$(mktemp -d /tmp/sluice-bench.XXXXXX)
mkdir -p "$TMP/nginx-tmp"
chmod 755 "$TMP"
# render TEMPLATE OUTPUT [SLUICE_PORT SLUICE_ADMIN_PORT]
render() {
    sed -e "s|@ECHO_PORT@|$ECHO_PORT|g" -e "s|@SLUICE_PORT@|${3:-$SLUICE_PORT}|g" \
        -e "s|@SLUICE_ADMIN_PORT@|${4:-$SLUICE_ADMIN_PORT}|g" -e "s|@HAPROXY_PORT@|$HAPROXY_PORT|g" \
        -e "s|@NGINX_PORT@|$NGINX_PORT|g" -e "s|@DIR@|$TMP|g" "$1" >"$2"
}
render bench/sluice.toml "$TMP/sluice.toml"
"$SLUICE" check-config "$TMP/sluice.toml" >/dev/null
if [ "$ONLY_SLUICE" = 0 ]; then
    render bench/haproxy.cfg "$TMP/haproxy.cfg"
    render bench/nginx.conf "$TMP/nginx.conf"
    haproxy -c -q -f "$TMP/haproxy.cfg"
    nginx -t -q -p "$TMP" -c "$TMP/nginx.conf" -e "$TMP/nginx-error.log"
fi

# The baseline reads the same bench/sluice.toml (on its own ports) when it accepts it;
# otherwise REV's own bench/sluice.toml. Its accept-mode target runs when that config has
# the accept-mode tenant.
BASE_ACCEPT=0
BASE_CONFIG_NOTE=""
if [ -n "$SLUICE_BASE" ]; then
    render bench/sluice.toml "$TMP/sluice-base.toml" "$SLUICE_BASE_PORT" "$SLUICE_BASE_ADMIN_PORT"
    if "$SLUICE_BASE" check-config "$TMP/sluice-base.toml" >/dev/null 2>"$TMP/base-check.log"; then
        BASE_CONFIG_NOTE="the same bench/sluice.toml as sluice"
    else
        echo "== the baseline refuses bench/sluice.toml: $(grep -v '^$' "$TMP/base-check.log" | head -1)"
        echo "   trying $BASELINE's own bench/sluice.toml"
        git show "$BASE_COMMIT:bench/sluice.toml" >"$TMP/sluice-base.toml.in" 2>/dev/null \
            || { echo "$BASELINE has no bench/sluice.toml: write one the baseline accepts" >&2; exit 1; }
        render "$TMP/sluice-base.toml.in" "$TMP/sluice-base.toml" "$SLUICE_BASE_PORT" "$SLUICE_BASE_ADMIN_PORT"
        "$SLUICE_BASE" check-config "$TMP/sluice-base.toml" >/dev/null
        BASE_CONFIG_NOTE="its own revision's bench/sluice.toml (it refuses today's)"
    fi
    grep -q '^\[tenants\.bench_accept\]' "$TMP/sluice-base.toml" && BASE_ACCEPT=1
fi

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=bench/results/$STAMP
# Only a full run of all targets and scenarios, without a baseline, becomes
# bench/RESULTS.md.
[ -n "$SLUICE_BASE" ] && OUT=$OUT-vs-$(git rev-parse --short "$BASE_COMMIT")
[ "$ONLY_SLUICE" = 1 ] && OUT=$OUT-only-sluice
[ "$SCENARIOS" != "$ALL_SCENARIOS" ] && OUT=$OUT-scenarios-${SCENARIOS// /-}
[ "$QUICK" = 1 ] && OUT=$OUT-quick
mkdir -p "$OUT"
RUNS=$OUT/runs.jsonl
LOG=$OUT/run.log
CMDS=$OUT/commands.txt
: >"$RUNS"
: >"$CMDS"

# --- processes --------------------------------------------------------------------------

wait_port() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# sluice-accept is the sluice process too (its accept-mode tenant); likewise the baseline's,
# and the SIP tenants' targets.
proc_of() {
    case "$1" in
        sluice-accept|sluice-sip|sluice-sip-off) echo sluice ;;
        sluice-accept-base) echo sluice-base ;;
        *) echo "$1" ;;
    esac
}

start_target() {
    case "$(proc_of "$1")" in
        sluice)
            RUST_LOG="$SLUICE_LOG" "$SLUICE" run --config "$TMP/sluice.toml" 2>>"$OUT/sluice.log" &
            PID[sluice]=$!; wait_port "$SLUICE_PORT" ;;
        sluice-base)
            RUST_LOG="$SLUICE_LOG" "$SLUICE_BASE" run --config "$TMP/sluice-base.toml" 2>>"$OUT/sluice-base.log" &
            PID[sluice-base]=$!; wait_port "$SLUICE_BASE_PORT" ;;
        haproxy)
            haproxy -db -f "$TMP/haproxy.cfg" >>"$OUT/haproxy.log" 2>&1 &
            PID[haproxy]=$!; wait_port "$HAPROXY_PORT" ;;
        nginx)
            nginx -p "$TMP" -c "$TMP/nginx.conf" -e "$TMP/nginx-error.log" >>"$OUT/nginx.log" 2>&1 &
            PID[nginx]=$!; wait_port "$NGINX_PORT"
            for _ in $(seq 100); do
                [ "$(ps -o pid= --ppid "${PID[nginx]}" | wc -l)" -ge 2 ] && break
                sleep 0.05
            done ;;
    esac
}

stop_target() {
    local t
    t=$(proc_of "$1")
    local p=${PID[$t]:-}
    [ -n "$p" ] || return 0
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    unset "PID[$t]"
}

# The processes whose CPU and memory count: sluice, HAProxy, NGINX's workers.
measured_pids() {
    case "$1" in
        direct) echo "" ;;
        nginx) ps -o pid= --ppid "${PID[nginx]}" | tr -d ' ' | paste -sd, ;;
        *) echo "${PID[$(proc_of "$1")]}" ;;
    esac
}

url_of() {
    local port tenant=bench
    case "$1" in
        direct) port=$ECHO_PORT ;; sluice) port=$SLUICE_PORT ;;
        sluice-accept) port=$SLUICE_PORT; tenant=bench_accept ;;
        sluice-sip) port=$SLUICE_PORT; tenant=bench_sip ;;
        sluice-sip-off) port=$SLUICE_PORT; tenant=bench_sip_off ;;
        sluice-base) port=$SLUICE_BASE_PORT ;;
        sluice-accept-base) port=$SLUICE_BASE_PORT; tenant=bench_accept ;;
        haproxy) port=$HAPROXY_PORT ;; nginx) port=$NGINX_PORT ;;
    esac
    echo "ws://127.0.0.1:$port/t/$tenant/echo"
}

# --sip: it also answers INVITE and BYE like a minimal SIP call server (scenario sip);
# every other message is echoed as without it.
"$W" --sip echo --listen "127.0.0.1:$ECHO_PORT" 2>>"$OUT/echo.log" &
ECHO_PID=$!
wait_port "$ECHO_PORT"
PROCS=(sluice)
[ -n "$SLUICE_BASE" ] && PROCS+=(sluice-base)
[ "$ONLY_SLUICE" = 0 ] && PROCS+=(haproxy nginx)
for t in "${PROCS[@]}"; do start_target "$t"; done

# One measurement: appends wsbench's JSON line to runs.jsonl; a failed run is recorded
# (with "error") and the benchmark goes on.
run() {
    local target=$1 rep=$2 scenario=$3
    shift 3
    local pids
    pids=$(measured_pids "$target")
    local cmd=("$W" "$scenario" --url "$(url_of "$target")" "$@")
    if [ -n "$pids" ] && [ "$scenario" != rtt ]; then cmd+=(--pids "$pids"); fi
    [ "$rep" = 1 ] && echo "${cmd[*]}" >>"$CMDS"
    local line
    line=$(timeout 300 "${cmd[@]}" --tag "target=$target" --tag "rep=$rep" 2>>"$LOG") || true
    [ -n "$line" ] || line="{\"target\":\"$target\",\"rep\":$rep,\"scenario\":\"$scenario\",\"error\":\"no output\"}"
    echo "$line" >>"$RUNS"
    printf '  %-18s %s\n' "$target" "$line"
}

# A baseline target runs next to its counterpart, so the pair shares the machine's mood.
TARGETS=(direct sluice)
[ -n "$SLUICE_BASE" ] && TARGETS+=(sluice-base)
TARGETS+=(sluice-accept)
[ "$BASE_ACCEPT" = 1 ] && TARGETS+=(sluice-accept-base)
[ "$ONLY_SLUICE" = 0 ] && TARGETS+=(haproxy nginx)
METRICS_URL="http://127.0.0.1:$SLUICE_ADMIN_PORT/metrics"
START=$(date +%s)
for rep in $(seq "$REPS"); do
    # Rotate the order each repetition so no target always runs first or last; every
    # other repetition, a baseline target and its counterpart also swap places.
    order=()
    n=${#TARGETS[@]}
    for i in $(seq 0 $((n - 1))); do
        t=${TARGETS[$(((i + rep - 1) % n))]}
        if [ $((rep % 2)) = 0 ] && [ -n "$SLUICE_BASE" ]; then
            case $t in
                sluice) t=sluice-base ;;
                sluice-base) t=sluice ;;
                sluice-accept) [ "$BASE_ACCEPT" = 1 ] && t=sluice-accept-base ;;
                sluice-accept-base) t=sluice-accept ;;
            esac
        fi
        order+=("$t")
    done
    sip_order=(sluice-sip sluice-sip-off)
    [ $((rep % 2)) = 0 ] && sip_order=(sluice-sip-off sluice-sip)
    case "$SCENARIOS" in
        sip) echo "== repetition $rep/$REPS (sip: ${sip_order[*]}, then calls on sluice-sip)" ;;
        *sip) echo "== repetition $rep/$REPS (order: ${order[*]}; sip: ${sip_order[*]}, then calls on sluice-sip)" ;;
        *) echo "== repetition $rep/$REPS (order: ${order[*]})" ;;
    esac
    if [ -n "$ADMISSION_BIN" ]; then
        # No proxy is busy meanwhile: the two threads have the cores (and whatever else
        # runs on the machine).
        [ "$rep" = 1 ] && echo "$ADMISSION_BIN --percentiles --json" >>"$CMDS"
        line=$(timeout 120 "$ADMISSION_BIN" --percentiles --json 2>>"$LOG" | grep -m1 '^{') || true
        if [ -n "$line" ]; then
            line="${line%\}},\"target\":\"sluice\",\"rep\":$rep}"
        else
            line="{\"target\":\"sluice\",\"rep\":$rep,\"scenario\":\"admission\",\"error\":\"no output\"}"
        fi
        echo "$line" >>"$RUNS"
        printf '  %-18s %s\n' admission "$line"
    fi
    for scenario in $SCENARIOS; do
        if [ "$scenario" = sip ]; then
            # Counting on and off side by side (the order alternates each repetition), then
            # the memory of a tracked call on a freshly started sluice.
            for t in "${sip_order[@]}"; do
                run "$t" "$rep" load --sip --conns "$LOAD_CONNS" --seconds "$LOAD_SECS" \
                    --warmup-secs "$LOAD_WARM" --size "$SIZE" --echo-pid "$ECHO_PID" \
                    --metrics "$METRICS_URL"
                sleep 1
            done
            stop_target sluice-sip; start_target sluice-sip
            run sluice-sip "$rep" calls --conns "$CALLS_CONNS" --concurrency "$CALLS_CONC" \
                --settle-secs "$CALLS_SETTLE" --size "$SIZE" --metrics "$METRICS_URL"
            sleep 1
            continue
        fi
        for t in "${order[@]}"; do
            case $scenario in
                rtt) run "$t" "$rep" rtt --frames "$RTT_FRAMES" --size "$SIZE" ;;
                load) run "$t" "$rep" load --conns "$LOAD_CONNS" --seconds "$LOAD_SECS" \
                    --warmup-secs "$LOAD_WARM" --size "$SIZE" --echo-pid "$ECHO_PID" \
                    ${PERF_ARGS[@]+"${PERF_ARGS[@]}"} ;;
                idle)
                    [ "$t" = direct ] && continue   # no proxy to measure
                    stop_target "$t"; start_target "$t"
                    run "$t" "$rep" idle --conns "$IDLE_CONNS" --hold-secs "$IDLE_HOLD" \
                        --settle-secs "$IDLE_SETTLE" --after-secs "$IDLE_AFTER" ;;
                handshakes) run "$t" "$rep" handshakes --count "$HS_COUNT" --concurrency "$HS_CONC" \
                    --fills "$HS_FILLS" --max-secs "$HS_MAX_SECS" --settle-secs "$HS_SETTLE" ;;
            esac
            sleep 1
        done
    done
done
ELAPSED=$(($(date +%s) - START))

# --- report -------------------------------------------------------------------------------
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
show() { echo "${1#"$ROOT"/}"; }   # paths inside the repository, relative to it
{
    title="# sluice benchmarks: against"
    [ "$ONLY_SLUICE" = 0 ] && title="$title HAProxy and NGINX"
    if [ -n "$SLUICE_BASE" ]; then
        [ "$ONLY_SLUICE" = 0 ] && title="$title, and"
        title="$title $BASE_NAME"
    fi
    [ "$ONLY_SLUICE" = 1 ] && [ -z "$SLUICE_BASE" ] && title="# sluice benchmarks (without HAProxy and NGINX)"
    echo "$title"
    echo
    echo "Run $STAMP ($([ "$QUICK" = 1 ] && echo "QUICK smoke run, not for comparison" || echo "full run"), $REPS repetitions, ${ELAPSED} s):"
    echo "$(nproc) cores ($cpu), Linux $(uname -r), open files $(ulimit -n);"
    echo "sluice $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)'),"
    if [ -n "$SLUICE_BASE" ]; then
        echo "baseline (targets sluice-base$([ "$BASE_ACCEPT" = 1 ] && echo ", sluice-accept-base")): sluice $BASE_NAME,"
        echo "\"$(git log -1 --format=%s "$BASE_COMMIT" | cut -c1-72)\" ($(git log -1 --format=%cs "$BASE_COMMIT")),"
        echo "in a second process with $BASE_CONFIG_NOTE, on its own ports;"
    fi
    if [ "$ONLY_SLUICE" = 0 ]; then
        echo "$(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3), $(nginx -v 2>&1 | sed 's/.*: //'), $(rustc -V 2>/dev/null)."
        echo "Client, echo server and proxy share these cores; the client and the echo server run"
        echo "one tokio worker each, sluice its default (one per core), HAProxy 2 threads,"
        echo "NGINX 2 worker processes; $PRIO_NOTE. $PERF_NOTE."
    else
        echo "$(rustc -V 2>/dev/null); HAProxy and NGINX left out (--only-sluice)."
        echo "Client, echo server and proxy share these cores; the client and the echo server run"
        echo "one tokio worker each, sluice its default (one per core); $PRIO_NOTE. $PERF_NOTE."
    fi
    echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg). Method and reading: bench/README.md."
} >"$OUT/meta.md"
{
    echo "## Commands"
    echo
    echo "Entry point: \`bash bench/run.sh\` (\`--quick\` for a smoke run); this run: \`bash bench/run.sh${ARGS_TEXT:+ $ARGS_TEXT}\`. Settings:"
    echo "rtt $RTT_FRAMES frames; load $LOAD_CONNS connections, ${LOAD_WARM} s warm-up, ${LOAD_SECS} s CPU window;"
    echo "idle $IDLE_CONNS sessions opened 200 at a time, ${IDLE_SETTLE} s settle, ${IDLE_HOLD} s hold, ${IDLE_AFTER} s after close;"
    echo "handshakes: $HS_FILLS fills (none started after ${HS_MAX_SECS} s) of $HS_COUNT sessions, $HS_CONC handshakes in flight,"
    echo "${HS_SETTLE} s after each fill's close; frames of $SIZE bytes;"
    echo "sip: load --sip as load (no perf window) on sluice-sip and sluice-sip-off, then calls on sluice-sip:"
    echo "$CALLS_CONNS SIP sessions, one call each, $CALLS_CONC at a time, ${CALLS_SETTLE} s settle per phase;"
    echo "scenarios run: $SCENARIOS;"
    if [ -n "$ADMISSION_BIN" ]; then
        echo "admission percentiles once per repetition, before its scenarios."
    else
        echo "admission percentiles not run (\`--admission\` runs them)."
    fi
    echo
    echo '```sh'
    echo "# servers (configs rendered from bench/ into a temporary directory \$TMP)"
    echo "$(show "$W") --sip echo --listen 127.0.0.1:$ECHO_PORT"
    echo "RUST_LOG=$SLUICE_LOG $(show "$SLUICE") run --config \$TMP/sluice.toml"
    if [ -n "$SLUICE_BASE" ]; then
        echo "RUST_LOG=$SLUICE_LOG $(show "$SLUICE_BASE") run --config \$TMP/sluice-base.toml   # $BASELINE"
    fi
    if [ "$ONLY_SLUICE" = 0 ]; then
        echo "haproxy -db -f \$TMP/haproxy.cfg"
        echo "nginx -p \$TMP -c \$TMP/nginx.conf -e \$TMP/nginx-error.log"
    fi
    echo "# measurements of repetition 1 (later ones differ only in pids); each also gets"
    echo "# --tag target=NAME --tag rep=N, and idle and calls restart the proxy first"
    sed "s|$ROOT/||g" "$CMDS"
    echo "# medians and ratios"
    echo "$(show "$W") report --input $RUNS"
    echo '```'
} >"$OUT/commands.md"
assemble "$OUT"
