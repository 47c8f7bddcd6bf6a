#!/usr/bin/env bash
# The whole test suite, as README states it: installs the independent verifiers the
# end-to-end suite shells out to (dkimpy + dnspython + PyNaCl for DKIM), builds every
# crate once (the crash tests run the real `postwire` binary), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import dkim, dns.resolver, nacl' 2>/dev/null; then
    echo "installing the Python DKIM verifier (dkimpy, dnspython, pynacl)"
    python3 -m pip install --quiet --disable-pip-version-check dkimpy dnspython pynacl 2>/dev/null \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages dkimpy dnspython pynacl
fi

cargo build --workspace --locked
cargo test --workspace --locked
