#!/usr/bin/env bash
# Runs the same workloads against a 3-node ordkv and a 3-member etcd on loopback, alternating,
# each on a fresh cluster with its data on the same disk, and writes target/bench/compare.json,
# compare.md (ratio table) and compare.png. Both systems fdatasync before acknowledging a write.
#
#   benches/compare-etcd.sh            # full: 3 repeats x 10 s, plus 1 M keys for memory
#   benches/compare-etcd.sh --quick    # every workload once, briefly (checks that it works)
#
# Options: --only WORKLOAD (repeatable: run just these workloads, e.g. get-linearizable),
# --repeats N, --duration S, --memory-keys N (0 skips the memory comparison),
# --lease-keys N (leases granted, each with a key, then left to expire together: memory and
# how late the last one ends; 0 skips it),
# --threads-per-member N (default: the machine's cores / 3, at least 1; 0 leaves both runtimes
# at their defaults). The 3 members of each system share this machine's cores, so each is
# given its share, as a CPU limit would in a pod: `ORDKV_WORKER_THREADS` for ordkv,
# `GOMAXPROCS` for etcd. With the defaults (one thread per core in every member), both spend
# CPU waking idle threads; see benches/README.md for the measured difference.
# --tls runs both with TLS: server TLS on the client ports and mutual TLS between members
# (one openssl-made CA and certificate for 127.0.0.1), and writes compare-tls.* instead.
# ORDKV_BIN=path runs that ordkv binary instead of this checkout's (an A/B of two builds, with
# etcd as the yardstick of both runs).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/target/bench
QUICK=0 REPEATS=3 DURATION=10 WARMUP=2 KEYS=10000 MEMORY_KEYS=1000000 LEASE_KEYS=100000
THREADS=$(( $(nproc) / 3 )); [ "$THREADS" -ge 1 ] || THREADS=1
ONLY=() TLS=0
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1; REPEATS=1 DURATION=2 WARMUP=1 KEYS=2000 MEMORY_KEYS=0 LEASE_KEYS=0 ;;
        --only) ONLY+=("$2"); shift ;;
        --repeats) REPEATS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --memory-keys) MEMORY_KEYS=$2; shift ;;
        --lease-keys) LEASE_KEYS=$2; shift ;;
        --threads-per-member) THREADS=$2; shift ;;
        --tls) TLS=1 ;;
        *) echo "unknown option $1 (see the comment at the top of $0)" >&2; exit 2 ;;
    esac
    shift
done
if [ $QUICK = 1 ]; then
    WORKLOADS=("put 1" "put 64" "get-linearizable 64" "get-serializable 64" "range 16" "mixed 64" "watch 100"
               "lease 64" "keepalive 64")
else
    WORKLOADS=("put 1" "put 16" "put 64" "put 256" "get-linearizable 256" "get-serializable 256"
               "range 64" "mixed 64" "watch 100" "lease 64" "keepalive 64")
fi
if [ ${#ONLY[@]} -gt 0 ]; then
    # `--only memory` and `--only lease-expiry` keep those one-off runs; any other name picks
    # workloads from the list.
    chosen=() keep_memory=0 keep_leases=0
    for o in "${ONLY[@]}"; do
        [ "$o" = memory ] && keep_memory=1
        [ "$o" = lease-expiry ] && keep_leases=1
    done
    for w in "${WORKLOADS[@]}"; do
        for o in "${ONLY[@]}"; do [ "${w%% *}" = "$o" ] && chosen+=("$w"); done
    done
    [ $(( ${#chosen[@]} + keep_memory + keep_leases )) -gt 0 ] ||
        { echo "--only ${ONLY[*]}: no such workload in: ${WORKLOADS[*]} memory lease-expiry" >&2; exit 2; }
    WORKLOADS=(${chosen[@]+"${chosen[@]}"})
    [ $keep_memory = 1 ] || MEMORY_KEYS=0
    [ $keep_leases = 1 ] || LEASE_KEYS=0
fi

log() { printf '%s  %s\n' "$(date +%T)" "$*" >&2; }

# --- what it needs -------------------------------------------------------------------------
if ! command -v etcd >/dev/null; then
    log "installing etcd-server from Debian"
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server >/dev/null
fi
command -v curl >/dev/null || { echo "curl is needed to probe readiness" >&2; exit 1; }
log "building ordkv and kvbench (release)"
cargo build --quiet --release --locked -p ordkv-cli -p kvbench --manifest-path "$ROOT/Cargo.toml"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
ORDKV=${ORDKV_BIN:-$BIN/ordkv} KVBENCH=$BIN/kvbench
# Each member's share of the cores (unset: the runtime's own default).
if [ "$THREADS" -gt 0 ]; then
    export ORDKV_WORKER_THREADS=$THREADS GOMAXPROCS=$THREADS
    log "threads per member: $THREADS (ORDKV_WORKER_THREADS, GOMAXPROCS)"
else
    unset ORDKV_WORKER_THREADS GOMAXPROCS
    log "threads per member: the runtimes' defaults"
fi

mkdir -p "$OUT"
DATA=$OUT/data LOGS=$OUT/logs RESULTS=$OUT/results.jsonl NAME=compare
rm -rf "$DATA" "$LOGS" "$RESULTS"
mkdir -p "$DATA" "$LOGS"

# --- TLS: one CA and one certificate (127.0.0.1, server and client use) for every member -----
SCHEME=http ORDKV_TLS=() ETCD_TLS=() CURL_TLS=() KVBENCH_TLS=()
if [ $TLS = 1 ]; then
    command -v openssl >/dev/null || { echo "--tls needs openssl" >&2; exit 1; }
    PKI=$OUT/pki NAME=compare-tls SCHEME=https
    rm -rf "$PKI" && mkdir -p "$PKI"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=bench CA" -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=member" \
        -keyout "$PKI/tls.key" -out "$PKI/member.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >"$PKI/ext"
    openssl x509 -req -in "$PKI/member.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
        -CAcreateserial -days 2 -extfile "$PKI/ext" -out "$PKI/tls.crt" 2>/dev/null
    ORDKV_TLS=(--tls-dir "$PKI" --http-plaintext)
    ETCD_TLS=(--cert-file "$PKI/tls.crt" --key-file "$PKI/tls.key"
              --peer-cert-file "$PKI/tls.crt" --peer-key-file "$PKI/tls.key"
              --peer-trusted-ca-file "$PKI/ca.crt" --peer-client-cert-auth)
    CURL_TLS=(--cacert "$PKI/ca.crt")
    KVBENCH_TLS=(--cacert "$PKI/ca.crt")
    log "TLS on: client ports server-authenticated, members mutually authenticated"
fi

# --- processes: every one started is remembered and stopped by pid --------------------------
PIDS=()
stop_all() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

wait_ready() { # url...
    for url in "$@"; do
        for _ in $(seq 300); do curl -sf "${CURL_TLS[@]}" -o /dev/null "$url" && continue 2; sleep 0.1; done
        echo "$url did not become ready; logs in $LOGS" >&2; exit 1
    done
}

start_ordkv() { # tag
    local peers= i
    for i in 0 1 2; do peers+="${peers:+,}kv-$i=127.0.0.1:$((7502 + 10 * i))"; done
    for i in 0 1 2; do
        "$ORDKV" serve --name "kv-$i" --data-dir "$DATA/ordkv-$1-$i" --peers "$peers" \
            --client-addr "127.0.0.1:$((7501 + 10 * i))" --peer-addr "127.0.0.1:$((7502 + 10 * i))" \
            --http-addr "127.0.0.1:$((7503 + 10 * i))" "${ORDKV_TLS[@]}" 2>"$LOGS/ordkv-$1-$i.log" &
        PIDS+=($!)
    done
    ENDPOINTS=127.0.0.1:7501,127.0.0.1:7511,127.0.0.1:7521
    wait_ready http://127.0.0.1:7503/readyz http://127.0.0.1:7513/readyz http://127.0.0.1:7523/readyz
}

start_etcd() { # tag
    local cluster= i
    for i in 0 1 2; do cluster+="${cluster:+,}e$i=$SCHEME://127.0.0.1:$((12380 + 10 * i))"; done
    for i in 0 1 2; do
        etcd --name "e$i" --data-dir "$DATA/etcd-$1-$i" "${ETCD_TLS[@]}" \
            --listen-client-urls "$SCHEME://127.0.0.1:$((12379 + 10 * i))" \
            --advertise-client-urls "$SCHEME://127.0.0.1:$((12379 + 10 * i))" \
            --listen-peer-urls "$SCHEME://127.0.0.1:$((12380 + 10 * i))" \
            --initial-advertise-peer-urls "$SCHEME://127.0.0.1:$((12380 + 10 * i))" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "bench-$1" >"$LOGS/etcd-$1-$i.log" 2>&1 &
        PIDS+=($!)
    done
    ENDPOINTS=127.0.0.1:12379,127.0.0.1:12389,127.0.0.1:12399
    wait_ready $SCHEME://127.0.0.1:12379/health $SCHEME://127.0.0.1:12389/health $SCHEME://127.0.0.1:12399/health
}

# bench backend tag kvbench-args...: a fresh cluster, one run, the cluster stopped and removed.
bench() {
    local backend=$1 tag=$2; shift 2
    "start_$backend" "$tag"
    local pids; pids=$(IFS=,; echo "${PIDS[*]}")
    "$KVBENCH" run --backend "$backend" --endpoints "$ENDPOINTS" --server-pids "$pids" \
        --out "$RESULTS" "${KVBENCH_TLS[@]}" "$@" >/dev/null
    stop_all
    rm -rf "$DATA"/"$backend"-"$tag"-*
}

# --- the physical limits ---------------------------------------------------------------------
log "measuring fdatasync in $DATA and the loopback round trip"
"$KVBENCH" fsync --dir "$DATA" --count $((QUICK ? 200 : 1000)) --out "$RESULTS" >/dev/null
"$KVBENCH" rtt --out "$RESULTS" >/dev/null

# --- the workloads, alternating which system goes first ---------------------------------------
for rep in $(seq "$REPEATS"); do
    order=(ordkv etcd); [ $((rep % 2)) = 0 ] && order=(etcd ordkv)
    for w in ${WORKLOADS[@]+"${WORKLOADS[@]}"}; do
        read -r workload clients <<<"$w"
        for backend in "${order[@]}"; do
            log "repeat $rep/$REPEATS: $backend $workload x$clients"
            bench "$backend" "$rep-$workload-$clients" --workload "$workload" --clients "$clients" \
                --duration "${DURATION}s" --warmup "${WARMUP}s" --keys "$KEYS"
        done
    done
    if [ "$MEMORY_KEYS" -gt 0 ] && [ "$rep" = 1 ]; then
        for backend in "${order[@]}"; do
            log "$backend: resident memory after loading $MEMORY_KEYS keys"
            bench "$backend" memory --workload memory --keys "$MEMORY_KEYS" --clients 64 --quiet
        done
    fi
    if [ "$LEASE_KEYS" -gt 0 ] && [ "$rep" = 1 ]; then
        for backend in "${order[@]}"; do
            log "$backend: $LEASE_KEYS leases with a key each, then their expiry"
            bench "$backend" lease-expiry --workload lease-expiry --keys "$LEASE_KEYS" \
                --lease-ttl 10 --clients 64 --quiet
        done
    fi
done

"$KVBENCH" report --input "$RESULTS" --json "$OUT/$NAME.json" --markdown "$OUT/$NAME.md" \
    --chart "$OUT/$NAME.png"
log "wrote $OUT/$NAME.json, $NAME.md and $NAME.png"
