#!/usr/bin/env python3
"""Issue #15: OCSP (RFC 6960) for a partner certificate that names a responder and no CRL
distribution point, against a real responder (`openssl ocsp` serving the CA's index).
REQUIREMENTS.md §3 (SEE-2.8, sending column).

1. the first message finds no answer cached: status unknown — sealed and sent, the administrator
   told; the refresher asks the responder in the background;
2. the responder says "good": mail is sealed and sent with the status known (no further notice);
3. the CA revokes the DCA (the responder restarted on the new index): once the cached answer
   is due again, mail for the partner is held as revoked, never sent;
4. an answer signed by a key that is neither the issuer's nor one it delegated is not believed.
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_smime_gateways import make_pki, run, send, smime_conf  # noqa: E402

CA_CNF = """[ca]
default_ca = test
[test]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/issued
serial = $dir/serial
certificate = $dir/ca.crt
private_key = $dir/ca.key
default_md = sha256
default_days = 30
policy = any
copy_extensions = copy
unique_subject = no
[any]
commonName = supplied
"""


def sealed(sink):
    return [m for m in sink.messages() if b"application/pkcs7-mime" in m]


def message(i):
    return (f"From: alice@agency-a.test\r\nTo: bob@agency-b.test\r\nSubject: ocsp {i}\r\n"
            f"Message-ID: <ocsp-{i}@agency-a.test>\r\n\r\nbody {i}\r\n").encode()


class Responder:
    def __init__(self, ca_dir, port, key="ca"):
        # Readiness from its own words: a bare connect-and-close probe wedges `openssl ocsp`
        # (it serves one connection at a time and waits on the empty one).
        self.log = os.path.join(ca_dir, f"ocsp-{port}-{time.time()}.log")
        self.proc = subprocess.Popen(
            ["openssl", "ocsp", "-index", "index.txt", "-port", str(port), "-ignore_err", "-rsigner", f"{key}.crt",
             "-rkey", f"{key}.key", "-CA", "ca.crt", "-nmin", "1"],
            cwd=ca_dir, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        harness.wait_for(lambda: "waiting for OCSP client connections" in open(self.log).read(), 10,
                         "OCSP responder listening")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def main():
    a = harness.args()
    c = harness.Checker("pki_ocsp")
    root = harness.tempdir(a.keep)
    ca_dir, [(da, env_a, pin_a), (db, _, _)] = make_pki(root, a.keygen, [("gw-a", "agency-a.test"),
                                                                          ("gw-b", "agency-b.test")])
    port = harness.free_port()
    with open(os.path.join(ca_dir, "ca.cnf"), "w") as f:
        f.write(CA_CNF.format(dir=ca_dir))
    os.makedirs(os.path.join(ca_dir, "issued"))
    open(os.path.join(ca_dir, "index.txt"), "w").close()
    with open(os.path.join(ca_dir, "serial"), "w") as f:
        f.write("1000\n")
    with open(os.path.join(ca_dir, "ocsp.ext"), "w") as f:
        f.write(f"authorityInfoAccess = OCSP;URI:http://127.0.0.1:{port}/\n"
                "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n")
    run(f"openssl ca -batch -config ca.cnf -in {db}/dca.csr -out {db}/dca-ocsp.crt -extfile ocsp.ext -notext", ca_dir)
    # A key the CA never delegated anything to, for step 4.
    run("openssl req -x509 -newkey rsa:2048 -nodes -keyout rogue.key -out rogue.crt -subj /CN=Rogue -days 2", ca_dir)

    sink = harness.Sink(root)
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port, name="a", local_domain="agency-a.test",
                           env=env_a, hostname="gw-a.test",
                           extra=smime_conf("gw-a", da, pin_a, ca_dir,
                                            f'partners {{ domain: "agency-b.test" dca_cert_file: "{db}/dca-ocsp.crt" }}'))
    gw.start()
    harness.wait_for(lambda: "security module ready" in gw.read_log(), 15, "token opened")
    responder = Responder(ca_dir, port)

    # 1 and 2.
    send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(1))
    c.check(harness.eventually(lambda: len(sealed(sink)) >= 1, 30, "first sent"), "status not known yet: sealed and sent")
    c.check(harness.eventually(lambda: "OCSP answer" in gw.read_log() and "status=good" in gw.read_log(), 30, "asked"),
            "the responder is asked in the background and says good", gw.read_log()[-500:])
    unknown_before = gw.read_log().count("status could not be checked")
    c.check(unknown_before >= 1, "the first message was logged as sent with its status unknown")
    send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(2))
    c.check(harness.eventually(lambda: len(sealed(sink)) >= 2, 30, "second sent"), "good: sealed and sent")
    time.sleep(1)
    c.check(gw.read_log().count("status could not be checked") == unknown_before,
            "with the answer known, the second message is sent without a 'status unknown' warning")

    # 3. Revoked: the responder serves the new index; held once the answer is due again.
    responder.stop()
    run(f"openssl ca -config ca.cnf -revoke {db}/dca-ocsp.crt -crl_reason keyCompromise", ca_dir)
    responder = Responder(ca_dir, port)
    sent_before = len(sealed(sink))
    t0 = time.time()
    held = False
    i = 3
    while time.time() - t0 < 120 and not held:
        send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(i))
        time.sleep(3)
        held = bool(gw.queue_files("hold"))
        i += 1
    c.check(held, f"after the CA revoked the DCA, mail is held ({time.time() - t0:.0f} s, no restart)")
    c.check("OCSP responder says so" in gw.read_log(), "the hold names the OCSP answer", gw.read_log()[-600:])
    n = len(sealed(sink))
    send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(200))
    time.sleep(3)
    c.check(len(sealed(sink)) == n and n - sent_before <= i - 3, "nothing more reaches the revoked partner")

    # 4. A rogue responder's answer is not believed: restart the gateway (no cached answer), let
    # the rogue sign "good" for the revoked certificate... it must stay unknown, never good.
    responder.stop()
    run("cp index.txt index.revoked && sed -i 's/^R\\t\\([^\\t]*\\)\\t[^\\t]*\\t/V\\t\\1\\t\\t/' index.txt", ca_dir)
    rogue = Responder(ca_dir, port, key="rogue")
    gw.stop()
    gw.start()
    harness.wait_for(lambda: "security module ready" in gw.read_log(), 15, "token opened again")
    send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(300))
    c.check(harness.eventually(lambda: "not signed by the issuer or its delegated responder" in gw.read_log(), 30,
                               "rogue refused"), "an answer signed by an undelegated key is refused", gw.read_log()[-600:])
    rogue.stop()
    c.check(gw.stop() == 0, "clean stop")
    c.finish()


if __name__ == "__main__":
    main()
