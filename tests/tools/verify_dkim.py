#!/usr/bin/env python3
"""Independent DKIM check for the end-to-end suite: dkimpy verifies every DKIM-Signature of a
message, fetching the public keys with real DNS queries to the given nameserver.

usage: verify_dkim.py MESSAGE_FILE NAMESERVER_IP NAMESERVER_PORT
Prints one line per signature ("ok d=… s=… a=…" or "fail …") and exits 0 only if there is at
least one signature and all of them verify.
"""
import sys

import dkim
import dns.resolver


def main():
    path, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [ip]
    resolver.port = port

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        answer = resolver.resolve(name.rstrip("."), "TXT", lifetime=timeout)
        return b"".join(b"".join(r.strings) for r in answer)

    message = open(path, "rb").read()
    d = dkim.DKIM(message)
    count = len([h for h in d.headers if h[0].lower() == b"dkim-signature"])
    if count == 0:
        print("fail: no DKIM-Signature header")
        return 1
    ok_all = True
    for i in range(count):
        ok = d.verify(idx=i, dnsfunc=dnsfunc)
        sig = d.signature_fields
        print("%s d=%s s=%s a=%s" % ("ok" if ok else "fail", sig.get(b"d", b"").decode(),
                                     sig.get(b"s", b"").decode(), sig.get(b"a", b"").decode()))
        ok_all = ok_all and ok
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
