#!/usr/bin/env bash
# The benchmark of issue #5: Postwire against Postfix + OpenDKIM on this machine, side by side in
# one run, printed as one markdown table (also written to target/bench/report.md).
#
#   scripts/bench.sh                       # default run, ~10-15 minutes
#   scripts/bench.sh --scale-max 1000000   # adds the 1M-queued scale row (much longer)
#   scripts/bench.sh --sections chaos      # kill -9 under retrying clients (issue 11), both backends
#   scripts/bench.sh --sections soak --backends embedded   # 30 min of steady load: RSS, store size
#   scripts/bench.sh --help                # every option (sections, backends, sizes)
#
# Runs as root: smtp-sink takes port 25 on 127.0.0.2. Installs postfix, opendkim and
# opendkim-tools from Debian's packages when they are missing, without starting Postfix's own
# instance; the benchmark runs Postfix from a throwaway config directory and stops it, and
# everything else it started, before it exits. The distributed rows use RabbitMQ and Redis on
# their default local ports (each run in a namespace of its own, deleted afterwards).
# Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "bench.sh: run as root (smtp-sink listens on 127.0.0.2:25)" >&2
    exit 1
fi

if ! command -v smtp-sink >/dev/null || ! command -v opendkim >/dev/null || ! command -v opendkim-genkey >/dev/null; then
    echo "bench.sh: installing postfix, opendkim, opendkim-tools…" >&2
    export DEBIAN_FRONTEND=noninteractive
    # "No configuration": the package's own Postfix gets no main.cf and is not started.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # Nor may the install start OpenDKIM's system service: a temporary policy-rc.d says no.
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    apt-get update -q >/dev/null
    apt-get install -y -q postfix opendkim opendkim-tools >/dev/null
    [ -n "$made_policy" ] && rm -f "$policy"
fi

for port in 5672 6379; do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "bench.sh: nothing on 127.0.0.1:$port; the distributed rows will fail" \
             "(start RabbitMQ and Redis, or pass --backends embedded)" >&2
    fi
done

cargo build --release -q -p postwire -p postwire-e2e --bin postwire --bin bench
target="${CARGO_TARGET_DIR:-target}"
POSTWIRE_BENCH_COMMAND="scripts/bench.sh${*:+ $*}" exec "$target/release/bench" --postwire-bin "$target/release/postwire" "$@"
