#!/usr/bin/env python3
"""Issue #15: the trust list, CRL files and pinned partner certificates are reloaded on SIGHUP,
without a restart; a broken trust list is refused and the one in force stays. REQUIREMENTS.md
§3 (SEE-2.7: the managed trust list; SEE-2.8).

Gateway A seals for agency-b, whose DCA certificate comes from a second CA that A's trust
list does not hold yet: mail is held (unknown CA). The operator adds that CA to the trust list
and sends SIGHUP: the next message is sealed and sent. Then a trust list holding a certificate
that is not a CA's is refused on SIGHUP with its reason, and mail still goes (the old list).
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_smime_gateways import make_pki, run, send, smime_conf  # noqa: E402


def sealed(sink):
    return [m for m in sink.messages() if b"application/pkcs7-mime" in m]


def message(i):
    return (f"From: alice@agency-a.test\r\nTo: bob@agency-b.test\r\nSubject: reload {i}\r\n"
            f"Message-ID: <reload-{i}@agency-a.test>\r\n\r\nbody {i}\r\n").encode()


def main():
    a = harness.args()
    c = harness.Checker("pki_reload")
    root = harness.tempdir(a.keep)
    ca_dir, [(da, env_a, pin_a), (db, _, _)] = make_pki(root, a.keygen, [("gw-a", "agency-a.test"),
                                                                          ("gw-b", "agency-b.test")])
    ca2 = os.path.join(root, "ca2")
    os.makedirs(ca2)
    run("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -subj /CN=Second-CA -days 30", ca2)
    run(f"openssl x509 -req -in {db}/dca.csr -CA ca.crt -CAkey ca.key -CAcreateserial -copy_extensions copy "
        f"-days 30 -out {db}/dca-ca2.crt", ca2)
    trust = os.path.join(ca_dir, "ca.crt")
    original = open(trust).read()

    sink = harness.Sink(root)
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port, name="a", local_domain="agency-a.test",
                           env=env_a, hostname="gw-a.test",
                           extra=smime_conf("gw-a", da, pin_a, ca_dir,
                                            f'partners {{ domain: "agency-b.test" dca_cert_file: "{db}/dca-ca2.crt" }}'))
    gw.start()
    harness.wait_for(lambda: "security module ready" in gw.read_log(), 15, "token opened")

    send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(1))
    c.check(harness.eventually(lambda: gw.queue_files("hold") or None, 30, "held") is not None,
            "a partner certificate from a CA not on the trust list: held (unknown CA)")
    c.check(not sealed(sink), "nothing sent to agency-b")

    with open(trust, "w") as f:
        f.write(original + open(os.path.join(ca2, "ca.crt")).read())
    gw.proc.send_signal(signal.SIGHUP)
    c.check(harness.eventually(lambda: "trust list, CRL files and pinned partner certificates reloaded" in gw.read_log(),
                               15, "reloaded"), "SIGHUP reloads the trust list")
    send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(2))
    c.check(harness.eventually(lambda: len(sealed(sink)) >= 1, 30, "sealed after reload"),
            "after the reload the partner's CA is trusted: sealed and sent, no restart")

    # A trust list with a certificate that is not a CA's: refused, the list in force stays.
    with open(trust, "w") as f:
        f.write(original + open(os.path.join(db, "dca-ca2.crt")).read())
    gw.proc.send_signal(signal.SIGHUP)
    refused = lambda: "reload refused" in gw.read_log() or "certificates not reloaded" in gw.read_log()  # noqa: E731
    c.check(harness.eventually(refused, 15, "refused"), "a broken trust list is refused on SIGHUP", gw.read_log()[-400:])
    c.check("not a CA certificate" in gw.read_log(), "the refusal says why")
    send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(3))
    c.check(harness.eventually(lambda: len(sealed(sink)) >= 2, 30, "still sealed"),
            "the trust list in force stays: mail for agency-b is still sealed and sent")
    c.check(gw.proc.poll() is None, "the daemon kept running")
    c.check(gw.stop() == 0, "clean stop")
    c.finish()


if __name__ == "__main__":
    main()
