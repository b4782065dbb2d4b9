#!/usr/bin/env python3
"""Issue #15: revocation fetched from the certificate's own CRL distribution point, with a real
HTTP server (python3 -m http.server) serving CRLs made by `openssl ca`. REQUIREMENTS.md §3
(SEE-2.8: "Gateways MUST always verify whether the certificate is valid"; the sending column of
its table: revoked -> do not send, status unknown -> send and notify).

Gateway A seals for partner agency-b, whose DCA certificate names
http://127.0.0.1:<port>/ca.crl as its distribution point:
1. the CRL server is down: the status is unknown — mail is sealed and sent, the failed fetch is
   logged with its cause;
2. the server serves a CRL that does not list the DCA (short nextUpdate): fetched in the
   background, cached on disk; mail is sealed and sent;
3. the CA revokes the DCA and publishes a new CRL: the gateway picks it up before the old one's
   nextUpdate, without a restart — mail for agency-b is held as revoked, never sent;
4. restart with the server gone: the cached CRL is read from disk — still held;
5. receiving: agency-b's gateway opens mail signed by agency-a's DSA after the CA revoked it —
   a HARD warning once it holds the CRL (a SOFT one, status unknown, before), never a pass.
(A replayed older CRL, a CRL of another issuer and oversized bodies: tests/pki/crl_cache_test.cc.)
"""
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_smime_gateways import make_pki, run, send, smime_conf  # noqa: E402

CA_CNF = """[ca]
default_ca = test
[test]
dir = {dir}
database = $dir/index.txt
crlnumber = $dir/crlnumber
certificate = $dir/ca.crt
private_key = $dir/ca.key
default_md = sha256
default_crl_days = 30
crl_extensions = crl_ext
[crl_ext]
authorityKeyIdentifier = keyid:always
"""


class CrlServer:
    """A real HTTP server (http.server) on a free loopback port serving `directory`."""

    def __init__(self, directory, port):
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=directory, **k)  # noqa: E731
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def sealed(sink):
    return [m for m in sink.messages() if b"application/pkcs7-mime" in m]


def notices(sink):
    return [m for m in sink.messages() if b"Auto-Submitted" in m and b"security warning" in m]


def headers(m):
    """The lines of a delivered message that say how it was judged."""
    return b"\n".join(l for l in (m or b"").splitlines() if l.startswith((b"Subject:", b"Authentication-Results:", b"\t")))[:800]


def message(i):
    return (f"From: alice@agency-a.test\r\nTo: bob@agency-b.test\r\nSubject: revocation {i}\r\n"
            f"Message-ID: <rev-{i}@agency-a.test>\r\n\r\nbody {i}\r\n").encode()


def main():
    a = harness.args()
    c = harness.Checker("pki_revocation")
    root = harness.tempdir(a.keep)
    ca_dir, [(da, env_a, pin_a), (db, env_b, pin_b)] = make_pki(root, a.keygen, [("gw-a", "agency-a.test"),
                                                                                  ("gw-b", "agency-b.test")])
    port = harness.free_port()
    url = f"http://127.0.0.1:{port}/ca.crl"
    www = os.path.join(root, "www")
    os.makedirs(www)
    # agency-b's DCA certificate again, now naming the distribution point.
    with open(os.path.join(db, "dp.ext"), "w") as f:
        f.write(f"crlDistributionPoints = URI:{url}\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n")
    run(f"openssl x509 -req -in dca.csr -CA {ca_dir}/ca.crt -CAkey {ca_dir}/ca.key -CAcreateserial "
        f"-copy_extensions copy -extfile dp.ext -days 30 -out dca-dp.crt", db)
    # agency-a's DSA certificate names it too (step 5: agency-b's gateway checks it on receipt).
    run(f"openssl x509 -req -in dsa.csr -CA {ca_dir}/ca.crt -CAkey {ca_dir}/ca.key -CAcreateserial "
        f"-copy_extensions copy -extfile {db}/dp.ext -days 30 -out dsa.crt", da)
    with open(os.path.join(ca_dir, "ca.cnf"), "w") as f:
        f.write(CA_CNF.format(dir=ca_dir))
    open(os.path.join(ca_dir, "index.txt"), "w").close()
    with open(os.path.join(ca_dir, "crlnumber"), "w") as f:
        f.write("10\n")

    def publish(seconds, name="ca.crl"):
        run(f"openssl ca -config ca.cnf -gencrl -crlsec {seconds} -out crl.pem", ca_dir)
        run(f"openssl crl -in crl.pem -outform DER -out {www}/{name}", ca_dir)

    sink = harness.Sink(root)
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port, name="a", local_domain="agency-a.test",
                           env=env_a, hostname="gw-a.test",
                           extra=smime_conf("gw-a", da, pin_a, ca_dir,
                                            f'partners {{ domain: "agency-b.test" dca_cert_file: "{db}/dca-dp.crt" }}'))
    gw.start()
    harness.wait_for(lambda: "security module ready" in gw.read_log(), 15, "token opened")

    # 1. No CRL server: status unknown -> sealed and sent (SEE-2.8), the cause logged.
    r = send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(1))
    c.check(b"250 2.0.0" in r, "accepted while the CRL cannot be had")
    c.check(harness.eventually(lambda: len(sealed(sink)) >= 1, 30, "sent with status unknown"),
            "status unknown: sealed and sent (SEE-2.8: send, notify)")
    c.check(harness.eventually(lambda: "CRL fetch failed" in gw.read_log(), 20, "fetch failure logged"),
            "the failed fetch is logged with its cause", gw.read_log()[-400:])

    # 2. A CRL that lists nothing, valid for 40 s: fetched in the background, cached on disk.
    publish(40)
    server = CrlServer(www, port)
    crl_dir = os.path.join(gw.spool, "certs", "crls")
    c.check(harness.eventually(lambda: any(f.endswith(".crl") for f in os.listdir(crl_dir))
                               if os.path.isdir(crl_dir) else False, 30, "CRL cached"),
            "the CRL is fetched in the background and kept on disk")
    r = send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(2))
    c.check(harness.eventually(lambda: len(sealed(sink)) >= 2, 30, "second message sent"), "not revoked: sealed and sent")
    # The administrator heard of the first one (sent with its status unknown), in one digest.
    got = harness.eventually(lambda: notices(sink) or None, 40, "notice to the administrator")
    c.check(got is not None and len(got) == 1 and b"postmaster@agency-a.test" in got[0]
            and b"status could not be checked" in got[0],
            "status unknown: the administrator gets one digested notice naming the reason (SEE-2.8: notify)",
            (got or [b""])[0][:600])

    # 3. Revoked: the new CRL is picked up before the old one expires, without a restart.
    run(f"openssl ca -config ca.cnf -revoke {db}/dca-dp.crt -crl_reason keyCompromise", ca_dir)
    publish(600)
    t0 = time.time()
    held = None
    i = 3
    while time.time() - t0 < 150 and held is None:
        send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(i))
        time.sleep(3)
        if gw.queue_files("hold"):
            held = i
        i += 1
    c.check(held is not None, f"after the CA revoked the DCA, mail for agency-b is held ({time.time() - t0:.0f} s, no restart)")
    log = gw.read_log()
    c.check("revoked" in log, "the hold names the revocation", log[-600:])
    sent_before = len(sealed(sink))
    r = send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(100))
    time.sleep(3)
    c.check(len(sealed(sink)) == sent_before and not any(b"body 100" in m for m in sink.messages()),
            "a revoked partner gets nothing, sealed or not")

    # 4. Restart with the CRL server gone: the cached CRL still says revoked.
    server.stop()
    gw.stop()
    gw.start()
    harness.wait_for(lambda: "security module ready" in gw.read_log(), 15, "token opened again")
    n_hold = len(gw.queue_files("hold"))
    send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(102))
    c.check(harness.eventually(lambda: len(gw.queue_files("hold")) > n_hold, 30, "held after restart"),
            "after a restart without the CRL server the cached CRL still holds the mail")
    c.check(len(sealed(sink)) == sent_before, "nothing reached the revoked partner")
    c.check(gw.stop() == 0, "clean stop")

    # 5. Receiving: agency-b's gateway opens mail signed by agency-a's DSA, which the CA has now
    # revoked: a HARD warning (SEE-2.8, receiving column) — once its CRL is fetched; before
    # that, the status is unknown: a SOFT warning.
    run(f"openssl ca -config ca.cnf -revoke {da}/dsa.crt -crl_reason keyCompromise", ca_dir)
    publish(600)
    server = CrlServer(www, port)
    sink_b = harness.Sink(root)
    shutil.copy(os.path.join(db, "dca-dp.crt"), os.path.join(db, "dca.crt"))   # the certificate a sealed to
    gb = harness.Mailseald(a.mailseald, root, relay_port=sink_b.port, name="b", local_domain="agency-b.test",
                           env=env_b, hostname="gw-b.test",
                           extra=smime_conf("gw-b", db, pin_b, ca_dir, 'partners { domain: "agency-a.test" }'))
    gb.start()
    harness.wait_for(lambda: "security module ready" in gb.read_log(), 15, "b's token opened")
    mail = sealed(sink)

    def opened(raw, n):
        send(gb.port, "alice@agency-a.test", ["bob@agency-b.test"], raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").rstrip(b"\r\n"))
        return harness.eventually(lambda: sink_b.messages()[n - 1] if len(sink_b.messages()) >= n else None, 30, "opened at b")
    first = opened(mail[0], 1)
    # b checks its own certificates at start, which name the same distribution point, so it may
    # hold the CRL already: a SOFT warning (status unknown) or the HARD one — never a pass.
    c.check(first is not None and (b"Subject: [SOFT WARNING" in first or b"Subject: [HARD WARNING" in first)
            and b"smime=pass" not in first, "the first message opened at b carries a warning, never smime=pass",
            headers(first))
    crls_b = os.path.join(gb.spool, "certs", "crls")
    harness.eventually(lambda: any(f.endswith(".crl") for f in os.listdir(crls_b)) if os.path.isdir(crls_b) else None,
                       30, "b fetched the CRL")
    second = opened(mail[1], 2)
    c.check(second is not None and b"Subject: [HARD WARNING: Certificate revoked" in second,
            "with the CRL that revokes agency-a's DSA: a HARD warning on receipt (SEE-2.8)", headers(second))
    server.stop()
    c.check(gb.stop() == 0, "b: clean stop")
    c.finish()


if __name__ == "__main__":
    main()
