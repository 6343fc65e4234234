#!/usr/bin/env bash
# A throwaway single-node Ceph cluster with an S3 gateway (RGW) on loopback,
# for testing ferry's S3 backend against a real object store (RADOS +
# BlueStore), not just moto.
#
#   eval "$(scripts/ceph-rgw.sh start [DIR])"   # DIR defaults to target/ceph
#   ... tests using FERRY_TEST_S3_ENDPOINT / FERRY_TEST_S3_BUCKET / AWS_* ...
#   scripts/ceph-rgw.sh stop [DIR]
#   scripts/ceph-rgw.sh status [DIR]            # daemons, pids, memory; exit 1 if not up
#
# `start` installs the Debian packages radosgw, ceph-mon and ceph-osd if
# missing (Ceph 16 on Debian 12; apt-get, needs root), then creates under DIR
# one monitor, one BlueStore OSD on a sparse file and one radosgw listening on
# a free port of 127.0.0.1, with cephx off. It creates the S3 user
# ferry / ferry-secret and the bucket `ferry`, waits until S3 answers, and
# prints `export` lines on stdout (everything else goes to stderr):
#   FERRY_TEST_S3_ENDPOINT FERRY_TEST_S3_BUCKET AWS_ACCESS_KEY_ID
#   AWS_SECRET_ACCESS_KEY AWS_REGION, and AWS_REQUEST_CHECKSUM_CALCULATION /
#   AWS_RESPONSE_CHECKSUM_VALIDATION = when_required: recent AWS SDKs add the
#   newer CRC checksums to every request by default, which Ceph 16 ignores
#   (awscli 1.45 over http works either way; this keeps SDK clients off
#   checksum features the server does not have).
# If DIR already holds a running cluster whose S3 endpoint answers, `start`
# prints its exports again; a dead or half-made cluster in DIR is wiped and
# made again. `stop` kills the daemons (by their pid files in DIR) and removes
# DIR. Logs: DIR/*.log (the daemons' own logs and the setup commands' output).
#
# Environment knobs: CEPH_RGW_PORT (default: a free port), CEPH_OSD_SIZE
# (bytes of the sparse BlueStore file, default 4 GiB), CEPH_START_TIMEOUT
# (seconds each wait may take, default 120).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
access_key=ferry
secret_key=ferry-secret
bucket=ferry
region=us-east-1
osd_size=${CEPH_OSD_SIZE:-$((4 * 1024 * 1024 * 1024))}
timeout_s=${CEPH_START_TIMEOUT:-120}
rgw_name=client.rgw.ferry
marker=.ferry-ceph-rgw   # only a DIR holding this file is ever removed

say() { printf '[ceph-rgw %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf '[ceph-rgw] error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

# --- arguments -------------------------------------------------------------
[ $# -ge 1 ] || usage
cmd=$1
dir=${2:-$repo/target/ceph}
case $cmd in start | stop | status) ;; -h | --help | help) usage ;; *) usage ;; esac
[ $# -le 2 ] || usage
mkdir -p "$(dirname "$dir")"
dir=$(cd "$(dirname "$dir")" && pwd)/$(basename "$dir")
case $dir in / | /root | /home | /tmp | /work | "$repo") die "refusing to use $dir as the cluster directory" ;; esac
conf=$dir/ceph.conf

# --- helpers -----------------------------------------------------------------
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Run a setup command with its output appended to DIR/setup.log; on failure
# show the log's tail.
run() {
    echo "+ $*" >>"$dir/setup.log"
    if ! "$@" >>"$dir/setup.log" 2>&1; then
        tail -n 30 "$dir/setup.log" >&2
        die "command failed: $* (log: $dir/setup.log)"
    fi
}

# The ceph CLI against our cluster, with a bounded wait for the monitor.
cephc() { timeout 30 ceph -c "$conf" --connect-timeout 10 "$@"; }

# wait_for DESCRIPTION COMMAND...: poll until COMMAND succeeds or the timeout.
wait_for() {
    local what=$1 start
    shift
    start=$(now)
    local deadline=$((SECONDS + timeout_s))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            die "timed out after ${timeout_s}s waiting for $what (logs: $dir/*.log)"
        fi
        check_alive
        sleep 0.5
    done
    say "$what: ok ($(elapsed "$start")s)"
}

daemon_names() { echo "$rgw_name osd.0 mon.a"; }

pid_of() {
    local f=$dir/$1.pid
    [ -s "$f" ] && cat "$f"
}

# The daemon's program, for checking that a pid file's pid is still ours.
prog_of() {
    case $1 in mon.*) echo ceph-mon ;; osd.*) echo ceph-osd ;; *) echo radosgw ;; esac
}

# Running (not a zombie) and still the program the pid file was written by.
alive() {
    local pid state
    pid=$(pid_of "$1") || return 1
    [ -r "/proc/$pid/stat" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$(prog_of "$1")" ] || return 1
    state=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
    [ "$state" != Z ] && [ "$state" != X ]
}

# During start: a daemon that was started must still be running.
started=()
check_alive() {
    local name
    for name in "${started[@]}"; do
        alive "$name" || { tail -n 20 "$dir/$name.log" >&2 2>/dev/null || true; die "$name died (log: $dir/$name.log)"; }
    done
}

aws_s3() {
    env -u AWS_PROFILE -u AWS_DEFAULT_PROFILE -u AWS_SESSION_TOKEN \
        AWS_ACCESS_KEY_ID=$access_key AWS_SECRET_ACCESS_KEY=$secret_key AWS_DEFAULT_REGION=$region \
        AWS_REQUEST_CHECKSUM_CALCULATION=when_required AWS_RESPONSE_CHECKSUM_VALIDATION=when_required \
        AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
        AWS_MAX_ATTEMPTS=${aws_attempts:-3} \
        timeout "${aws_timeout:-60}" aws --endpoint-url "$endpoint" --cli-read-timeout "${aws_read_timeout:-20}" \
        --cli-connect-timeout 5 "$@"
}

print_exports() {
    cat <<EOF
export FERRY_TEST_S3_ENDPOINT=$endpoint
export FERRY_TEST_S3_BUCKET=$bucket
export AWS_ACCESS_KEY_ID=$access_key
export AWS_SECRET_ACCESS_KEY=$secret_key
export AWS_REGION=$region
export AWS_REQUEST_CHECKSUM_CALCULATION=when_required
export AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
EOF
}

# In order (gateway, OSD, monitor), each given up to 10 s after SIGTERM: an
# OSD stopped while its monitor runs is marked down at once instead of
# waiting for the monitor's answer.
kill_daemons() {
    local name pid deadline
    for name in $(daemon_names); do
        alive "$name" || continue
        pid=$(pid_of "$name")
        say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while alive "$name"; do
            if [ $SECONDS -ge $deadline ]; then
                say "$name (pid $pid) still running 10s after SIGTERM: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
                sleep 0.2
                break
            fi
            sleep 0.1
        done
    done
}

wipe_dir() {
    [ -e "$dir" ] || return 0
    [ -e "$dir/$marker" ] || die "$dir exists but was not made by this script (no $marker): not removing it"
    kill_daemons
    rm -rf "$dir"
}

# --- install -----------------------------------------------------------------
install_packages() {
    local missing=0 bin
    for bin in ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool; do
        command -v "$bin" >/dev/null 2>&1 || missing=1
    done
    [ $missing = 1 ] || return 0
    [ "$(id -u)" = 0 ] || die "the Ceph packages are missing and installing them needs root: apt-get install --no-install-recommends radosgw ceph-mon ceph-osd"
    command -v apt-get >/dev/null || die "no apt-get: install radosgw, ceph-mon and ceph-osd (Ceph >= 16) yourself"
    local start
    start=$(now)
    say "installing radosgw ceph-mon ceph-osd (apt-get, --no-install-recommends)"
    export DEBIAN_FRONTEND=noninteractive
    local apt_opts=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    if ! apt-get install "${apt_opts[@]}" radosgw ceph-mon ceph-osd >&2; then
        say "apt-get install failed; running apt-get update and retrying"
        apt-get update -q >&2 || die "apt-get update failed"
        apt-get install "${apt_opts[@]}" radosgw ceph-mon ceph-osd >&2 || die "apt-get install radosgw ceph-mon ceph-osd failed"
    fi
    for bin in ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool; do
        command -v "$bin" >/dev/null 2>&1 || die "$bin still missing after installing the packages"
    done
    say "packages installed ($(elapsed "$start")s): $(ceph --version 2>/dev/null || true)"
}

# --- start -------------------------------------------------------------------
write_conf() {
    local fsid=$1 mon_port=$2 rgw_port=$3
    cat >"$conf" <<EOF
# Throwaway test cluster made by scripts/ceph-rgw.sh: no authentication, one of everything.
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:$mon_port]
public_network = 127.0.0.0/8
ms_bind_msgr1 = false
ms_bind_ipv6 = false

# No cephx. Without the crc modes radosgw hangs in AUTH_CONNECTING.
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_mon_client_mode = crc
ms_client_mode = crc
ms_cluster_mode = crc
ms_service_mode = crc
ms_mon_cluster_mode = crc
ms_mon_service_mode = crc

# Everything lives under the cluster directory.
run_dir = $dir/run
admin_socket = $dir/run/\$name.asok
pid_file = $dir/\$name.pid
log_file = $dir/\$name.log
mon_data = $dir/\$name
osd_data = $dir/\$name
log_to_stderr = false
err_to_stderr = false
log_to_syslog = false
mon_cluster_log_file = $dir/cluster.log

# One OSD: replication 1, no failure domain above the OSD, few PGs, no mgr.
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_crush_chooseleaf_type = 0
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_delete = true
mon_data_avail_warn = 2
mon_data_avail_crit = 1
mon_warn_on_insecure_global_id_reclaim = false
mon_warn_on_insecure_global_id_reclaim_allowed = false

[mon]
mon_initial_members = a
# Commit map changes at once, not in 1 s batches: radosgw's first start makes
# about a dozen pool changes, each of which it waits for.
paxos_propose_interval = 0.05
paxos_min_wait = 0.01

[osd]
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = $osd_size
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
osd_memory_target = 1073741824
osd_max_object_size = 134217728

[client]
# The ceph / radosgw-admin CLIs: no log files of their own.
log_file = /dev/null
admin_socket =

[$rgw_name]
rgw_frontends = beast endpoint=127.0.0.1:$rgw_port
rgw_data = $dir/rgw
log_file = $dir/\$name.log
admin_socket = $dir/run/\$name.asok
rgw_thread_pool_size = 64
EOF
}

# One quick probe (the waits poll it).
s3_ready() { aws_attempts=1 aws_read_timeout=5 aws_timeout=10 aws_s3 s3api head-bucket --bucket "$bucket"; }

start_cluster() {
    if [ -e "$dir/$marker" ] && [ -s "$dir/env" ]; then
        endpoint=$(sed -n 's/^endpoint=//p' "$dir/env")
        local all=1 name
        for name in $(daemon_names); do alive "$name" || all=0; done
        if [ $all = 1 ] && s3_ready >/dev/null 2>&1; then
            say "cluster in $dir already running: $endpoint"
            print_exports
            return 0
        fi
        say "$dir holds a cluster that is not (fully) running: removing it and starting afresh"
    fi
    wipe_dir

    local t0 t fsid mon_port rgw_port osd_uuid osd_id
    t0=$(now)
    mkdir -p "$dir/run" "$dir/rgw"
    touch "$dir/$marker"
    : >"$dir/setup.log"
    fsid=$(cat /proc/sys/kernel/random/uuid)
    mon_port=$(free_port)
    rgw_port=${CEPH_RGW_PORT:-$(free_port)}
    [ "$rgw_port" != "$mon_port" ] || mon_port=$(free_port)
    endpoint=http://127.0.0.1:$rgw_port
    write_conf "$fsid" "$mon_port" "$rgw_port"
    say "cluster dir $dir (fsid $fsid), monitor 127.0.0.1:$mon_port, S3 $endpoint"

    # Monitor.
    run monmaptool --create --clobber --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$dir/monmap"
    mkdir -p "$dir/mon.a"
    run ceph-mon -c "$conf" -i a --mkfs --monmap "$dir/monmap"
    run ceph-mon -c "$conf" -i a
    started+=(mon.a)
    wait_for "monitor quorum" cephc quorum_status

    # OSD: BlueStore makes its sparse block file at mkfs.
    t=$(now)
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    osd_id=$(cephc osd new "$osd_uuid" 2>>"$dir/setup.log") || die "ceph osd new failed (log: $dir/setup.log)"
    [ "$osd_id" = 0 ] || die "expected OSD id 0, got '$osd_id'"
    mkdir -p "$dir/osd.0"
    run ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid"
    say "OSD created (BlueStore mkfs on a sparse $((osd_size >> 20)) MiB file): ok ($(elapsed "$t")s)"
    run ceph-osd -c "$conf" -i 0
    started+=(osd.0)
    wait_for "OSD up" osd_up

    # Gateway. It creates its pools at start.
    run radosgw -c "$conf" -n "$rgw_name"
    started+=("$rgw_name")
    wait_for "radosgw answering HTTP" curl -fsS -o /dev/null --max-time 2 "$endpoint/"

    # S3 user and bucket.
    t=$(now)
    run timeout 60 radosgw-admin -c "$conf" user create --uid=ferry --display-name=ferry \
        --access-key="$access_key" --secret="$secret_key"
    say "S3 user $access_key: ok ($(elapsed "$t")s)"
    local out
    if ! out=$(aws_s3 s3api create-bucket --bucket "$bucket" 2>&1); then
        case $out in *BucketAlreadyOwnedByYou* | *BucketAlreadyExists*) ;; *) echo "$out" >&2; die "creating bucket $bucket failed" ;; esac
    fi
    wait_for "S3 bucket $bucket" s3_ready
    printf 'endpoint=%s\nmon_port=%s\nfsid=%s\n' "$endpoint" "$mon_port" "$fsid" >"$dir/env"
    say "cluster ready in $(elapsed "$t0")s: S3 at $endpoint, bucket $bucket, key $access_key"
    print_exports
}

osd_up() {
    cephc osd dump --format json 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if any(o["osd"] == 0 and o["up"] == 1 and o["in"] == 1 for o in d["osds"]) else 1)'
}

# --- status ------------------------------------------------------------------
status_cluster() {
    [ -e "$dir/$marker" ] || { say "no cluster in $dir"; exit 1; }
    local name pid ok=0 rss
    for name in $(daemon_names); do
        if alive "$name"; then
            pid=$(pid_of "$name")
            rss=$(ps -o rss= -p "$pid" | tr -d ' ')
            say "$name: pid $pid, RSS $((rss / 1024)) MiB"
        else
            say "$name: not running"
            ok=1
        fi
    done
    endpoint=$(sed -n 's/^endpoint=//p' "$dir/env" 2>/dev/null || true)
    if [ -n "$endpoint" ] && s3_ready >/dev/null 2>&1; then say "S3 $endpoint: bucket $bucket answers"; else say "S3 not answering"; ok=1; fi
    return $ok
}

case $cmd in
    start)
        install_packages
        start_cluster
        ;;
    stop)
        if [ -e "$dir" ]; then
            wipe_dir
            say "stopped; removed $dir"
        else
            say "nothing in $dir"
        fi
        ;;
    status) status_cluster ;;
esac
