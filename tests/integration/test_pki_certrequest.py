#!/usr/bin/env python3
"""Issue #15: SEE-2.8b's mandatory fallback — a signed e-mail request to
domain-certificate-request@<partner> ("the subject line MUST be the e-mail address of the target
certificate; the certificate MUST be returned as a .cer/.crt attachment or a PKCS#7 container"),
the answer processed automatically, and our gateway answering such requests for its own
certificates. REQUIREMENTS.md §3 (SEE-2.8, SEE-2.8b, SEE-2.10).

Two gateways on loopback, agency-a and agency-b, each with its own token; neither knows the
other's certificate, and no directory is configured.
1. Mail from agency-a for bob@agency-b is held for want of agency-b's DCA certificate; gateway
   A sends a signed request to domain-certificate-request@agency-b.test (its Subject the address
   of the certificate wanted).
2. Gateway B verifies the request's signature (and so learns A's certificates, SEE-2.10) and
   answers from domain-certificate-request@agency-b.test with its DCA certificate attached
   (.cer), signed and — now that it knows A — sealed.
3. Gateway A opens the answer, takes the certificate (it validates and names agency-b's
   authority), releases the held mail by itself: bob gets it, sealed by A and opened by B with
   smime=pass. Neither request nor answer reaches anyone's mailbox.
4. An unsigned request gets no answer (logged with the reason).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_smime_gateways import make_pki, send, smime_conf  # noqa: E402


def main():
    a = harness.args()
    c = harness.Checker("pki_certrequest")
    root = harness.tempdir(a.keep)
    ca_dir, [(da, env_a, pin_a), (db, env_b, pin_b)] = make_pki(root, a.keygen, [("gw-a", "agency-a.test"),
                                                                                  ("gw-b", "agency-b.test")])
    sink_a, sink_b = harness.Sink(root), harness.Sink(root)
    port_a = harness.free_port()
    gb = harness.Mailseald(a.mailseald, root, relay_port=sink_b.port, name="b", local_domain="agency-b.test",
                           env=env_b, hostname="gw-b.test",
                           delivery_extra=f'routes {{ domain: "agency-a.test" next_hop: "127.0.0.1:{port_a}" }}',
                           extra=smime_conf("gw-b", db, pin_b, ca_dir, 'partners { domain: "agency-a.test" }'))
    ga = harness.Mailseald(a.mailseald, root, relay_port=sink_a.port, name="a", local_domain="agency-a.test",
                           env=env_a, hostname="gw-a.test",
                           delivery_extra=f'routes {{ domain: "agency-b.test" next_hop: "127.0.0.1:{gb.port}" }}',
                           extra=smime_conf("gw-a", da, pin_a, ca_dir, 'partners { domain: "agency-b.test" } '
                                            'certificate_requests: true certificate_request_interval_s: 600'))
    with open(ga.config) as f:   # A listens where B's route points
        conf = f.read().replace(f"127.0.0.1:{ga.port}", f"127.0.0.1:{port_a}")
    with open(ga.config, "w") as f:
        f.write(conf)
    ga.port = port_a
    for g in (gb, ga):
        g.start()
        harness.wait_for(lambda: "security module ready" in g.read_log(), 15, "token opened")

    # 1-3. Held, requested, answered, released, sealed, opened.
    r = send(ga.port, "alice@agency-a.test", ["bob@agency-b.test"],
             b"From: alice@agency-a.test\r\nTo: bob@agency-b.test\r\nSubject: needs a certificate\r\n"
             b"Message-ID: <req-1@agency-a.test>\r\n\r\nbody 1 for bob\r\n")
    c.check(b"250 2.0.0" in r, "accepted")
    got = harness.eventually(lambda: [m for m in sink_b.messages() if b"body 1 for bob" in m] or None, 60,
                             "bob's mail at agency-b")
    c.check(got is not None and b"smime=pass" in got[0],
            "the held mail is released once the answer's certificate is taken: sealed by A, opened by B (smime=pass)",
            (got or [b""])[0][:600] + ga.read_log()[-1500:].encode())
    log_a, log_b = ga.read_log(), gb.read_log()
    c.check("certificate requested by signed mail" in log_a and "to=domain-certificate-request@agency-b.test" in log_a,
            "A sent a signed request to domain-certificate-request@agency-b.test", log_a[-1200:])
    c.check("certificate of domain-confidentiality-authority@agency-b.test sent to <domain-certificate-request@agency-a.test>"
            in log_b, "B answered the verified request with its DCA certificate", log_b[-1500:])
    c.check("certificate answer from agency-b.test: 1 certificate" in log_a, "A read the certificate attached to the answer",
            "\n".join(l for l in log_a.splitlines() if "certificate answer" in l)[-600:])
    c.check(os.path.exists(os.path.join(ga.spool, "certs", "agency-b.test.dca.pem")), "A stored agency-b's certificate")
    c.check(harness.eventually(lambda: not ga.queue_files("hold"), 15, "A's hold empty"), "nothing left held at A")
    stray = [m for m in sink_a.messages() + sink_b.messages() if b"domain-certificate-request" in m]
    c.check(not stray, "neither the request nor the answer reaches a mailbox", [m[:300] for m in stray])

    # 4. An unsigned request: no answer.
    n_b = gb.read_log().count("certificate of domain-confidentiality-authority@agency-b.test sent")
    send(gb.port, "mallory@agency-a.test", ["domain-certificate-request@agency-b.test"],
         b"From: mallory@agency-a.test\r\nTo: domain-certificate-request@agency-b.test\r\n"
         b"Subject: domain-confidentiality-authority@agency-b.test\r\n\r\nplease\r\n")
    c.check(harness.eventually(lambda: "not signed by a verified domain authority" in gb.read_log(), 30, "refused"),
            "an unsigned request is not answered (SEE-2.8b: a signed request)", gb.read_log()[-800:])
    c.check(gb.read_log().count("certificate of domain-confidentiality-authority@agency-b.test sent") == n_b,
            "no answer went out for it")
    for g in (ga, gb):
        c.check(g.stop() == 0, "clean stop")
    c.finish()


if __name__ == "__main__":
    main()
