#!/usr/bin/env python3
"""Issue #16 (SEE-2.4b): the SMTP server's and the management API's TLS keys live in the
PKCS#11 token (SoftHSM), so that no private key of the appliance is a file.

- Keys made inside the token (mailseal-keygen ... tls: an RSA key for STARTTLS, a P-256 key for
  the API), certificates from the test CAs; the configuration names them by key_label.
- STARTTLS works with TLS 1.2 and TLS 1.3 (openssl s_client and Python's ssl as independent
  clients), the certificate served is the one configured, mail sent over it arrives; 24
  handshakes at once all complete (the key is shared by the net threads).
- The gRPC API answers mailsealctl over its token key.
- No file the configuration names, and no file in the gateway's directories, holds a private
  key.
- The token goes away: handshakes fail (no other key is used), and when it is back the key is
  found again on the new opening and handshakes succeed without a restart.
- A key_label the token does not have, and a token key that is not the certificate's, are
  refused at start with the field named.
"""
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_control_api import ctl_as, issue  # noqa: E402
from test_smime_gateways import MODULE, make_pki, run, smime_conf  # noqa: E402


def starttls_handshake(port, cafile, version=None, timeout=20):
    """(ok, detail): a STARTTLS handshake verified against cafile for gw-a.test."""
    ctx = ssl.create_default_context(cafile=cafile)
    if version:
        ctx.minimum_version = ctx.maximum_version = version
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as s:
            s.ehlo("client.test")
            code, msg = s.docmd("STARTTLS")
            if code != 220:
                return False, f"STARTTLS answered {code} {msg!r}"
            t = ctx.wrap_socket(s.sock, server_hostname="gw-a.test")
            der = t.getpeercert(binary_form=True)
            v = t.version()
            t.close()
            return True, (v, der)
    except (ssl.SSLError, OSError, smtplib.SMTPException) as ex:
        return False, str(ex)


def main():
    a = harness.args()
    c = harness.Checker("tls_token_keys")
    root = harness.tempdir(a.keep)
    ca_dir, [(da, env, pin)] = make_pki(root, a.keygen, [("gw-a", "agency-a.test")])
    # The TLS keys are made inside the token; only CSRs come out.
    run([a.keygen, MODULE, "gw-a", pin, "smtp-tls", "tls", "rsa2048", "gw-a.test", f"{da}/smtp.csr"], da, env)
    run(f"openssl x509 -req -in smtp.csr -CA {ca_dir}/ca.crt -CAkey {ca_dir}/ca.key -CAcreateserial "
        "-copy_extensions copy -days 30 -out smtp.crt", da)
    run([a.keygen, MODULE, "gw-a", pin, "api-tls", "tls", "p256", "127.0.0.1", f"{da}/api.csr"], da, env)
    run([a.keygen, MODULE, "gw-a", pin, "audit", "audit", "p256", "agency-a.test", f"{da}/audit.csr"], da, env)
    run(f"openssl x509 -req -in audit.csr -CA {ca_dir}/ca.crt -CAkey {ca_dir}/ca.key -CAcreateserial -days 30 "
        "-out audit.crt", da)
    m = os.path.join(root, "mgmt")   # the operators' side: the management CA and their certificates
    os.makedirs(m)
    run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout mgmt-ca.key -out mgmt-ca.crt "
        "-subj /CN=mgmt-ca -days 2", m)
    run(f"openssl x509 -req -in {da}/api.csr -CA mgmt-ca.crt -CAkey mgmt-ca.key -CAcreateserial "
        f"-copy_extensions copy -days 2 -out {da}/api.crt", m)
    issue(m, "admin-1", "mgmt-ca")
    san = subprocess.run(["openssl", "x509", "-in", f"{da}/api.crt", "-noout", "-ext", "subjectAltName,extendedKeyUsage"],
                         capture_output=True, text=True).stdout
    c.check("IP Address:127.0.0.1" in san and "TLS Web Server Authentication" in san,
            "the token key's CSR names the address and server use", san)

    sink = harness.Sink(root)
    api_port = harness.free_port()
    tls = f'tls {{ cert_file: "{da}/smtp.crt" key_label: "smtp-tls" }}\n'
    control = (f'control {{ listen: "127.0.0.1:{api_port}" cert_file: "{da}/api.crt" key_label: "api-tls" '
               f'client_ca_file: "{m}/mgmt-ca.crt" roles {{ common_name: "admin-1" role: "administrator" }} '
               f'audit {{ log_path: "{root}/audit.log" heads_path: "{root}/audit.heads" key_label: "audit" }} }}\n')
    smime = smime_conf("gw-a", da, pin, ca_dir, "").replace("health_interval_ms: 500", "health_interval_ms: 100")
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port, env=env, hostname="gw-a.test",
                           extra=smime + tls + control)
    gw.start()
    harness.wait_for(lambda: "management API listening" in gw.read_log(), 15, "API up")
    log = gw.read_log()
    c.check("STARTTLS key in the token" in log and "management API key in the token" in log,
            "both TLS keys are bound to the token at start")

    # No private key is a file: neither what the configuration names nor anything in the
    # gateway's directories (its token directory holds SoftHSM's encrypted objects).
    with open(gw.config) as f:
        conf = f.read()
    named = [w.split('"')[1] for w in conf.split() if w.startswith('"/')] + \
        [p for p in conf.split('"') if p.startswith("/")]
    offenders = []
    for path in set(named):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                if b"PRIVATE KEY" in f.read():
                    offenders.append(path)
    for d in (da, gw.root):
        for dirpath, _, files in os.walk(d):
            for fn in files:
                p = os.path.join(dirpath, fn)
                if not os.path.isfile(p) or os.path.islink(p):
                    continue   # sockets
                with open(p, "rb") as f:
                    if b"PRIVATE KEY" in f.read():
                        offenders.append(p)
    c.check("key_file" not in conf and not offenders, "no private key file exists in the configuration",
            offenders)

    with open(f"{da}/smtp.crt") as f:
        smtp_der = ssl.PEM_cert_to_DER_cert(f.read())
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ok, detail = starttls_handshake(gw.port, f"{ca_dir}/ca.crt", version)
        c.check(ok and detail[1] == smtp_der, f"STARTTLS {version.name} signs with the token key and serves its "
                "certificate (verified against the CA for gw-a.test)", detail if not ok else detail[0])
    for flag in ("-tls1_2", "-tls1_3"):
        r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{gw.port}", "-starttls", "smtp", flag,
                            "-CAfile", f"{ca_dir}/ca.crt", "-verify_hostname", "gw-a.test", "-verify_return_error",
                            "-brief"], input="QUIT\n", capture_output=True, text=True, timeout=30)
        c.check(r.returncode == 0 and "Verification: OK" in r.stderr, f"openssl s_client {flag} verifies the server",
                r.stderr[-400:])

    # Mail over that TLS arrives.
    ctx = ssl.create_default_context(cafile=f"{ca_dir}/ca.crt")
    # A raw exchange: smtplib before Python 3.12 cannot name the server for starttls.

    def send_over_tls(subject):
        raw = socket.create_connection(("127.0.0.1", gw.port), timeout=20)
        f = raw.makefile("rb")
        f.readline()
        raw.sendall(b"EHLO client.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        raw.sendall(b"STARTTLS\r\n")
        if not f.readline().startswith(b"220"):
            return b""
        t = ctx.wrap_socket(raw, server_hostname="gw-a.test")
        tf = t.makefile("rb")
        t.sendall(b"EHLO client.test\r\n")
        while not tf.readline().startswith(b"250 "):
            pass
        t.sendall(b"MAIL FROM:<alice@agency-a.test>\r\nRCPT TO:<bob@plain.test>\r\nDATA\r\n")
        replies = [tf.readline() for _ in range(3)]
        t.sendall(f"From: alice@agency-a.test\r\nTo: bob@plain.test\r\nSubject: {subject}\r\n\r\nbody\r\n.\r\n"
                  .encode())
        replies.append(tf.readline())
        t.sendall(b"QUIT\r\n")
        t.close()
        return b"".join(replies)
    out = send_over_tls("over-token-tls")
    c.check(out.endswith(b"\r\n") and b"250 2.0.0" in out.splitlines()[-1], "mail over the token key's TLS is accepted",
            out)
    c.check(harness.eventually(lambda: any(b"Subject: over-token-tls" in x for x in sink.messages()), 20, "delivered"),
            "and delivered")
    got = [x for x in sink.messages() if b"Subject: over-token-tls" in x]
    c.check(got and b"TLS" in got[0].split(b"\r\n\r\n")[0], "its Received header records the TLS", got[0][:400] if got else b"")

    # Handshakes on every net thread at once share the one token key.
    results = []
    lock = threading.Lock()

    def one():
        r = starttls_handshake(gw.port, f"{ca_dir}/ca.crt")
        with lock:
            results.append(r[0])
    threads = [threading.Thread(target=one) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    c.check(len(results) == 24 and all(results), "24 concurrent STARTTLS handshakes all complete",
            f"{sum(results)} of {len(results)}")

    ctl = ctl_as(a.mailsealctl, api_port, m)
    rc, o, e = ctl("queue", "counts")
    c.check(rc == 0, "mailsealctl works over the API's token key (TLS 1.3, P-256 in the token)", e[-300:])
    rc, o, e = ctl("keys", "list")
    c.check(rc == 0 and "smtp-tls" in o and "api-tls" in o and "tls" in o, "keys list shows the TLS keys", o[-600:])

    # The token goes away: no handshake succeeds (there is no other key) ...
    tokens = os.path.join(da, "tokens")
    shutil.move(tokens, tokens + ".gone")
    harness.wait_for(lambda: "security module unavailable" in gw.read_log(), 15, "outage seen")
    ok, detail = starttls_handshake(gw.port, f"{ca_dir}/ca.crt", timeout=10)
    c.check(not ok, "while the token is away, no STARTTLS handshake completes", detail if ok else "")
    # ... and when it is back, the key is found on the new opening, no restart needed.
    shutil.move(tokens + ".gone", tokens)
    harness.wait_for(lambda: "security module back" in gw.read_log(), 30, "token back")
    c.check(harness.eventually(lambda: starttls_handshake(gw.port, f"{ca_dir}/ca.crt")[0], 20, "handshake again"),
            "after the token is back, STARTTLS works again with the token key")
    rc, o, e = ctl("queue", "counts")
    c.check(rc == 0, "and so does the API", e[-300:])
    gw.stop()

    # Start-up refusals name the field.
    def refused(extra_tls, extra_control, name):
        g = harness.Mailseald(a.mailseald, root, relay_port=sink.port, env=env, hostname="gw-a.test", name=name,
                              extra=smime + extra_tls + extra_control.replace(str(api_port), str(harness.free_port())))
        try:
            g.start()
            g.stop()
            return None
        except RuntimeError as ex:
            return str(ex)
    why = refused(tls.replace("smtp-tls", "no-such-key"), "", "bad1")
    c.check(why and "exited 2" in why and "tls.key_label" in why and "no-such-key" in why,
            "a key_label the token lacks is refused at start, the field named", (why or "")[-300:])
    why = refused(tls.replace("smtp-tls", "dsa"), "", "bad2")
    c.check(why and "exited 2" in why and "tls.key_label" in why and "certificate" in why,
            "a token key that is not the certificate's is refused at start", (why or "")[-300:])
    why = refused("", control.replace("api-tls", "smtp-tls").replace(f"{root}/audit", f"{root}/bad3-audit"), "bad3")
    c.check(why and "exited 2" in why and "control.key_label" in why,
            "the API's key is checked against its certificate too", (why or "")[-300:])
    c.finish()


if __name__ == "__main__":
    main()
