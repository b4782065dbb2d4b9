#!/usr/bin/env python3
"""Issue #16: the inbound client-certificate request — a partner gateway that presents a
certificate from the configured CAs is recorded as verified in the trace (Received, and
Authentication-Results where mail is opened); one from elsewhere as not verified; a client
without a certificate still delivers (requested, never required). REQUIREMENTS.md §4 (SM-5).
"""
import os
import smtplib
import ssl
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402


def run(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True)
    assert r.returncode == 0, f"{cmd}: {r.stdout}{r.stderr}"


def main():
    a = harness.args()
    c = harness.Checker("inbound_client_cert")
    root = harness.tempdir(a.keep)
    pki = os.path.join(root, "pki")
    os.makedirs(pki)
    run("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -subj /CN=Partner-Gateways-CA -days 2 "
        "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign", pki)
    run("openssl req -x509 -newkey rsa:2048 -nodes -keyout server.key -out server.crt -subj /CN=gw-a.test -days 2", pki)
    os.chmod(os.path.join(pki, "server.key"), 0o600)
    run("openssl req -new -newkey rsa:2048 -nodes -keyout gwb.key -out gwb.csr -subj /CN=gw-b.test", pki)
    with open(os.path.join(pki, "client.ext"), "w") as f:
        f.write("extendedKeyUsage = clientAuth\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
                "basicConstraints = CA:FALSE\n")
    run("openssl x509 -req -in gwb.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out gwb.crt", pki)
    run("openssl req -x509 -newkey rsa:2048 -nodes -keyout rogue.key -out rogue.crt -subj /CN=rogue.test -days 2", pki)
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

    def got(subject):
        return [m for m in sink.messages() if f"Subject: {subject}".encode() in m]
    c.check(harness.eventually(lambda: len(sink.messages()) >= 3, 30, "three delivered"),
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
