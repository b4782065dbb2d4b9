#!/usr/bin/env python3
"""Issue #16, first part: per-destination TLS security levels and the "verify" level (PKIX
against the configured next-hop CAs, RFC 7817/6125 names). REQUIREMENTS.md §4 (SM-5: STARTTLS
whenever offered; SM-6.1: TLS that meets the minimum) and the issue's rule: a hop that fails
authentication under a level that needs it gets nothing — a 4.7.5 deferral, then a DSN saying
why; never delivery to an unauthenticated peer.

Real Postfix instances are the next hops, each with its own certificate:
- mx.agency-b.test: issued by the next-hop CA for mx.agency-b.test          (verify: delivered)
- mx.agency-c.test: a self-signed certificate — a man in the middle          (verify: nothing sent)
- mx.agency-d.test: issued by the CA, but for other.test                     (verify: nothing sent)
- mx.agency-e.test: issued by the CA for the recipient domain agency-e.test (verify: delivered)
- agency-f.test through the man in the middle at level encrypt             (delivered: TLS, not authenticated)
Mail for c and d is deferred with the reason, then returned to its sender in a DSN that says
why; their Postfix instances never see it.
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from tlspeers import issue, make_ca, postfix_hops, received, self_signed, send_each  # noqa: E402


def main():
    a = harness.args()
    c = harness.Checker("delivery_tls_verify")
    root = harness.tempdir(a.keep)
    pki = os.path.join(root, "pki")
    make_ca(pki, "Next-Hop-CA")
    issue(pki, "b", ["mx.agency-b.test"])
    self_signed(pki, "mitm", ["mx.agency-c.test"])
    issue(pki, "d", ["other.test"])
    issue(pki, "e", ["agency-e.test"])
    hops = postfix_hops(root, pki, ("b", "mitm", "d", "e"))
    sink_a = harness.Sink(root)
    routes = "".join(f'routes {{ domain: "agency-{d}.test" next_hop: "mx.agency-{d}.test:{hops[h][0].port}" }}\n'
                     for d, h in (("b", "b"), ("c", "mitm"), ("d", "d"), ("e", "e"), ("f", "mitm")))
    routes += f'routes {{ domain: "agency-a.test" next_hop: "127.0.0.1:{sink_a.port}" }}\n'
    local = "".join(f'dns_local_data: "mx.agency-{d}.test. A 127.0.0.1"\n' for d in "bcdef")
    policies = "".join(f'tls_policies {{ domain: "agency-{d}.test" level: "verify" }}\n' for d in "bcde")
    policies += 'tls_policies { domain: "agency-f.test" level: "encrypt" }\n'
    gw = harness.Mailseald(a.mailseald, root, name="gw", local_domain="agency-a.test", hostname="gw-a.test",
                           delivery_extra=f'{routes}{local}{policies}tls_ca_file: "{pki}/ca.crt" max_lifetime_s: 20')
    gw.start()
    send_each(c, gw, [f"agency-{d}.test" for d in "bcdef"])

    def got(name, subject):
        return received(hops, name, subject)

    c.check(harness.eventually(lambda: got("b", "to-b"), 30, "b delivered"),
            "verify: the hop whose certificate the CA issued for the MX name gets the mail")
    c.check(harness.eventually(lambda: got("e", "to-e"), 30, "e delivered"),
            "verify: a certificate naming the recipient domain is accepted (RFC 7817 §3)")
    c.check(harness.eventually(lambda: got("mitm", "to-f"), 30, "f delivered"),
            "encrypt: TLS to an unauthenticated peer is enough at that level")
    log = gw.read_log()
    c.check(re.search(r"delivered qid=\S+ to=user@agency-b.test .*verified as mx.agency-b.test", log) is not None,
            "the delivery log says the hop was verified and by which name",
            "\n".join(l for l in log.splitlines() if "agency-b" in l)[-400:])
    # c (a man in the middle) and d (a certificate for another name) get nothing.
    c.check(harness.eventually(lambda: "next hop not authenticated" in gw.read_log() and "agency-d.test" in gw.read_log(),
                               30, "refusals logged"), "the refusals are logged with the reason")
    log = gw.read_log()
    c.check(re.search(r"to=user@agency-c.test .*4\.7\.5 TLS level verify: mx.agency-c.test .*not authenticated: "
                      r".*self-signed and not on the trust list", log) is not None, "the self-signed man in the middle is refused: not from the configured CAs",
            "\n".join(l for l in log.splitlines() if "agency-c" in l)[-600:])
    c.check(re.search(r"destination=agency-d.test .*names none of mx.agency-d.test, agency-d.test", log) is not None,
            "a CA-issued certificate for another name is refused (RFC 6125)",
            "\n".join(l for l in log.splitlines() if "agency-d" in l)[-600:])
    def both_dsns():
        d = [m for m in sink_a.messages() if b"to-c" in m or b"to-d" in m]
        return d if any(b"to-c" in m for m in d) and any(b"to-d" in m for m in d) else None
    dsns = harness.eventually(both_dsns, 60, "DSNs for c and d")
    c.check(dsns is not None and len(dsns) >= 2 and all(b"4.7.5" in m and b"not authenticated" in m for m in dsns),
            "after the lifetime the sender gets a DSN saying the hop was not authenticated",
            [m[:1500] for m in (dsns or [])])
    c.check(not got("mitm", "to-c") and not got("d", "to-d"), "the unauthenticated hops never saw the mail")
    c.check(gw.stop() == 0, "clean stop")
    c.finish()


if __name__ == "__main__":
    main()
