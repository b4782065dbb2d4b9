#!/usr/bin/env python3
"""Issue #16: the inbound client-certificate request — a partner gateway that presents a
certificate from the configured CAs is recorded as verified in the trace (Received, and
Authentication-Results where mail is opened); one from elsewhere as not verified; a client
without a certificate still delivers (requested, never required). REQUIREMENTS.md §4 (SM-5).
"""
import os
import smtplib
import ssl
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from tlspeers import issue, make_ca, self_signed  # noqa: E402


def main():
    a = harness.args()
    c = harness.Checker("inbound_client_cert")
    root = harness.tempdir(a.keep)
    pki = os.path.join(root, "pki")
    make_ca(pki, "Partner-Gateways-CA")
    self_signed(pki, "server", ["gw-a.test"], key_mode=0o600)
    issue(pki, "gwb", ["gw-b.test"], usage="clientAuth")
    self_signed(pki, "rogue", ["rogue.test"])
    sink = harness.Sink(root)
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port, name="gw", local_domain="agency-a.test",
                           hostname="gw-a.test",
                           extra=f'tls {{ cert_file: "{pki}/server.crt" key_file: "{pki}/server.key" '
                                 f'client_ca_file: "{pki}/ca.crt" }}')
    gw.start()

    def send(subject, cert=None):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if cert:
            ctx.load_cert_chain(f"{pki}/{cert}.crt", f"{pki}/{cert}.key")
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=20) as s:
            s.ehlo("gw-b.test")
            s.starttls(context=ctx)
            s.ehlo("gw-b.test")
            s.sendmail("alice@agency-b.test", ["bob@agency-a.test"],
                       f"From: alice@agency-b.test\r\nTo: bob@agency-a.test\r\nSubject: {subject}\r\n\r\nbody\r\n")

    send("with-partner-cert", "gwb")
    send("with-rogue-cert", "rogue")
    send("without-cert")

    def got(subject):   # smtp-sink writes a file as it receives: complete once the body is there
        return [m for m in sink.messages() if f"Subject: {subject}".encode() in m and b"\nbody" in m]
    c.check(harness.eventually(lambda: all(got(s) for s in ("with-partner-cert", "with-rogue-cert", "without-cert")),
                               30, "three delivered"),
            "all three delivered: a certificate is requested, never required")
    m = got("with-partner-cert")
    c.check(m and b"client certificate verified: /CN=gw-b.test" in m[0],
            "a partner gateway's certificate from the configured CAs is recorded as verified in Received",
            m[0][:600] if m else b"")
    m = got("with-rogue-cert")
    c.check(m and b"client certificate not verified: /CN=rogue.test" in m[0],
            "a certificate from elsewhere is recorded as not verified", m[0][:600] if m else b"")
    m = got("without-cert")
    c.check(m and b"client certificate" not in m[0], "no certificate, no claim", m[0][:600] if m else b"")
    c.check(gw.stop() == 0, "clean stop")
    c.finish()


if __name__ == "__main__":
    main()
