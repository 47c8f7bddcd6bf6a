#!/usr/bin/env bash
# The whole test suite, as README states it. Needs RabbitMQ and Redis on their default local
# ports for the distributed runs (.ci/run starts them). Installs the independent verifiers the
# end-to-end suite shells out to (dkimpy + dnspython + PyNaCl for DKIM; schemathesis for the
# OpenAPI contract; Postfix and swaks) and the npm packages of the TypeScript check, builds every
# crate once (the crash tests run the real `postwire` binary), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import dkim, dns.resolver, nacl' 2>/dev/null; then
    echo "installing the Python DKIM verifier (dkimpy, dnspython, pynacl)"
    python3 -m pip install --quiet --disable-pip-version-check dkimpy dnspython pynacl 2>/dev/null \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages dkimpy dnspython pynacl
fi

# Schemathesis, which the contract test (tests/tests/e2e/contract.rs) runs against the served
# OpenAPI document.
if ! schemathesis --version 2>/dev/null | grep -q "version 4\."; then
    echo "installing schemathesis"
    python3 -m pip install --quiet --disable-pip-version-check 'schemathesis==4.32.5' 2>/dev/null \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'schemathesis==4.32.5'
fi

# The real MTA, SMTP and POP3 clients the end-to-end suite drives: Postfix (a recipient MX
# that bounces, run from a throwaway config; the package's own instance is left unconfigured and
# stopped), swaks, and fetchmail (reads the sandbox POP3 mailbox). Debian packages; installing
# needs root, as the suite's port-25 tests do.
if ! command -v postfix >/dev/null || ! command -v swaks >/dev/null || ! command -v fetchmail >/dev/null; then
    echo "installing postfix, swaks and fetchmail"
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get install -y -q postfix swaks fetchmail >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q postfix swaks fetchmail >/dev/null; }
fi

# Node and npm for the TypeScript client check (this machine kind ships Node 20; Debian's
# packages otherwise).
if ! command -v npm >/dev/null; then
    echo "installing nodejs and npm"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q nodejs npm >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q nodejs npm >/dev/null; }
fi

# Every test app uses its own namespace of queues on the shared broker; let the broker delete
# them once unused, so repeated runs don't pile up hundreds of quorum queues.
if command -v rabbitmqctl >/dev/null; then
    rabbitmqctl set_policy --apply-to queues postwire-test-queues '^pw(test|crash)[-_]' '{"expires":120000}' >/dev/null \
        || echo "warning: could not set the test-queue expiry policy; test queues will stay on the broker"
fi

cargo build --workspace --locked
# A TypeScript client: types generated from openapi/openapi.json by openapi-typescript, and
# tests/typescript/client.ts type-checked against them (npm packages from its package-lock.json,
# installed into tests/typescript/node_modules, which git ignores).
(cd tests/typescript && npm ci --no-audit --no-fund --loglevel=error && npm run --silent check)
echo "typescript client: tests/typescript/client.ts type-checks against openapi/openapi.json"
# Everything, with the end-to-end suite on the embedded (SQLite) backend...
cargo test --workspace --locked
# ...and the same end-to-end suite again on the distributed backend (RabbitMQ + Redis at the
# default URLs: 127.0.0.1:5672 guest/guest and 127.0.0.1:6379).
POSTWIRE_TEST_BACKEND=distributed cargo test --locked -p postwire-e2e --test e2e
