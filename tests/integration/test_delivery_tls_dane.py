#!/usr/bin/env python3
"""Issue #16: DANE for SMTP (RFC 7672) — the next hop's certificate matched against its
DNSSEC-validated TLSA records, looked up through libunbound. REQUIREMENTS.md §4 (SM-5, SM-6.1)
and the issue's rule: a hop that fails authentication under a level that needs it gets nothing.

A real unbound serves the zone "example." signed here with ldns-signzone; real Postfix
instances are the next hops; every destination is at level dane.
- agency-g: TLSA 3 1 1 (DANE-EE, the server key's SHA-256) matching its certificate: delivered.
- agency-h: the same TLSA record, but the hop answering is a man in the middle with its own
  key: nothing sent.
- agency-i: TLSA 2 0 1 (DANE-TA, the issuing CA's SHA-256); the server sends its chain with a
  certificate for mx.agency-i.example: delivered.
- agency-j: its TLSA record was changed after signing: the answer is bogus, the hop is never
  contacted; deferred, then a DSN that says why.
- agency-k: no TLSA records (a secure denial): delivered as "may".
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_pki_smimea import Unbound, sign_zone  # noqa: E402
from tlspeers import issue, make_ca, postfix_hops, received, self_signed, send_each, sh  # noqa: E402


def spki_sha256(pem, cwd):
    return sh(f"openssl x509 -in {pem} -pubkey -noout | openssl pkey -pubin -outform DER | openssl dgst -sha256 -r",
              cwd).split()[0]


def cert_sha256(pem, cwd):
    return sh(f"openssl x509 -in {pem} -outform DER | openssl dgst -sha256 -r", cwd).split()[0]


def main():
    a = harness.args()
    c = harness.Checker("delivery_tls_dane")
    root = harness.tempdir(a.keep)
    pki = os.path.join(root, "pki")
    make_ca(pki, "DANE-TA-CA")
    self_signed(pki, "g", ["mx.agency-g.example"])
    self_signed(pki, "mitm", ["mx.agency-h.example"])
    issue(pki, "i", ["mx.agency-i.example"])
    with open(os.path.join(pki, "i.crt"), "a") as f:   # the server sends its chain (RFC 7671 §5.2.2)
        f.write(open(os.path.join(pki, "ca.crt")).read())
    hops = postfix_hops(root, pki, ("g", "mitm", "i"))
    pg, pm, pi = hops["g"][0].port, hops["mitm"][0].port, hops["i"][0].port
    good = spki_sha256(f"{pki}/g.crt", pki)
    records = [f"mx.agency-{d} IN A 127.0.0.1" for d in ("g", "h", "i", "j", "k")]
    records += [f"_{pg}._tcp.mx.agency-g IN TLSA 3 1 1 {good}",
                f"_{pm}._tcp.mx.agency-h IN TLSA 3 1 1 {good}",
                f"_{pi}._tcp.mx.agency-i IN TLSA 2 0 1 {cert_sha256(f'{pki}/ca.crt', pki)}",
                f"_{pg}._tcp.mx.agency-j IN TLSA 3 1 1 {good}"]
    zdir = os.path.join(root, "zone")
    os.makedirs(zdir)
    signed, ds = sign_zone(zdir, records)
    lines, forged = [], 0
    for line in open(signed):
        if line.startswith(f"_{pg}._tcp.mx.agency-j.example.") and "\tTLSA\t" in line:
            line = re.sub(r"TLSA\t.*$", f"TLSA\t3 1 1 {spki_sha256(f'{pki}/mitm.crt', pki)}", line)
            forged += 1
        lines.append(line)
    with open(signed, "w") as f:
        f.writelines(lines)
    assert forged == 1, "the TLSA record to forge was not found"
    dns = Unbound(root, signed)
    dns.start()

    sink_a = harness.Sink(root)
    port_of = {"g": pg, "h": pm, "i": pi, "j": pg, "k": pm}
    routes = "".join(f'routes {{ domain: "agency-{d}.example" next_hop: "mx.agency-{d}.example:{p}" }}\n'
                     for d, p in port_of.items())
    routes += f'routes {{ domain: "agency-a.test" next_hop: "127.0.0.1:{sink_a.port}" }}\n'
    gw = harness.Mailseald(a.mailseald, root, name="gw", local_domain="agency-a.test", hostname="gw-a.test",
                           delivery_extra=(f'{routes}dns_forwarder: "127.0.0.1@{dns.port}" '
                                           f'dnssec_trust_anchor_file: "{ds}" '
                                           'tls_policies { domain: ".example" level: "dane" } max_lifetime_s: 20'))
    gw.start()
    send_each(c, gw, [f"agency-{d}.example" for d in port_of])

    def got(name, subject):
        return received(hops, name, subject)

    c.check(harness.eventually(lambda: got("g", "to-g"), 30, "g delivered"),
            "DANE-EE: the hop whose key matches its TLSA record gets the mail", gw.read_log()[-1200:])
    c.check(harness.eventually(lambda: got("i", "to-i"), 30, "i delivered"),
            "DANE-TA: the hop whose chain leads to the CA its TLSA record names gets the mail", gw.read_log()[-1200:])
    c.check(harness.eventually(lambda: got("mitm", "to-k"), 30, "k delivered"),
            "no TLSA records (a secure denial): delivered as may")
    log = gw.read_log()
    c.check(re.search(r"to=user@agency-g.example .*DANE-EE 3 1 1", log) is not None,
            "the delivery log says how the hop was authenticated",
            "\n".join(l for l in log.splitlines() if "agency-g" in l)[-400:])
    c.check(re.search(r"to=user@agency-i.example .*DANE-TA 2 0 1 \(/CN=DANE-TA-CA\), name mx.agency-i.example", log)
            is not None, "DANE-TA: the log names the trust anchor and the name checked",
            "\n".join(l for l in log.splitlines() if "agency-i" in l)[-400:])
    c.check(harness.eventually(lambda: re.search(r"to=user@agency-h.example .*4\.7\.5 TLS level dane: .*does not match its "
                                                 r"TLSA records", gw.read_log()), 30, "h refused"),
            "a man in the middle whose key does not match the TLSA records gets nothing",
            "\n".join(l for l in gw.read_log().splitlines() if "agency-h" in l)[-600:])
    c.check(harness.eventually(lambda: re.search(r"to=user@agency-j.example .*4\.7\.5 TLS level dane: TLSA lookup .*failed "
                                                 r"DNSSEC validation", gw.read_log()), 30, "j deferred"),
            "a TLSA answer that fails DNSSEC validation: the hop is not contacted, the mail deferred",
            "\n".join(l for l in gw.read_log().splitlines() if "agency-j" in l)[-600:])
    def both_dsns():
        d = [m for m in sink_a.messages() if b"to-h" in m or b"to-j" in m]
        return d if any(b"to-h" in m for m in d) and any(b"to-j" in m for m in d) else None
    dsns = harness.eventually(both_dsns, 60, "DSNs for h and j")
    c.check(dsns is not None and len(dsns) >= 2 and all(b"4.7.5" in m for m in dsns),
            "after the lifetime the sender gets a DSN that says why", [m[:1200] for m in (dsns or [])])
    c.check(not got("mitm", "to-h") and not got("g", "to-j"), "the unauthenticated and the forged hops never saw the mail")
    c.check(gw.stop() == 0, "clean stop")
    dns.stop()
    c.finish()


if __name__ == "__main__":
    main()
