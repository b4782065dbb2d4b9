#!/usr/bin/env python3
"""Issue #13: hostile-input conformance from a suite nobody here wrote — OpenSMTPD's 69
black-box SMTP scripts (../shared/testdata/smtp-opensmtpd-regress, smtpscript language, run by
our own interpreter tests/integration/smtpscript.py) against mailseald with STARTTLS.

Every case passes, except those whose expectation is OpenSMTPD policy rather than RFC 5321;
each of those is decided below, with its reason, and the test asserts that mailseald answers
as decided (so a change of behaviour is noticed either way).
"""
import glob
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import smtpscript  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SUITE = os.environ.get("MAILSEAL_SHARED", os.path.join(HERE, "..", "..", "..", "shared")) + "/testdata/smtp-opensmtpd-regress"

# case -> (what mailseald answers instead, why that is our decision)
PARAMS_NEED_EHLO = ("555 5.5.4", "ESMTP parameters after HELO: RFC 5321 §4.1.1.1/§3.3 — a client may only use an "
                                 "extension the server announced in its EHLO reply; OpenSMTPD tolerates it")
DECIDED = {
    "mailfrom.at-sign": ("501 5.1.7", "'<@>' is no RFC 5321 Reverse-path (only '<>' is the null path); OpenSMTPD reads it as <>"),
    "mailfrom.src-route": ("501 5.1.7", "'<whatever:a@a>' is no source route (RFC 5321 A-d-l is '@domain,...:'); "
                                        "real source routes are accepted and ignored"),
    "rcptto.src-route": ("501 5.1.3", "as mailfrom.src-route"),
    "mailfrom.option-size": PARAMS_NEED_EHLO,
    "mailfrom.option-7bit": PARAMS_NEED_EHLO,
    "mailfrom.option-8bitmime": PARAMS_NEED_EHLO,
    "mailfrom.option-8bitmime-size": PARAMS_NEED_EHLO,
    "mailfrom.option-auth": PARAMS_NEED_EHLO,
    "test.smtp4#17": PARAMS_NEED_EHLO,
    "test.smtp0#8": ("501 5.1.3", "a bare LF inside a command line: RFC 5321 §2.3.8 allows only CRLF; taking LF as a "
                                  "line end is the leniency SMTP smuggling lives on, so it ends the line and the rest is "
                                  "refused"),
    "test.smtp2#3": ("250 2.1.0", "a 101st message in one session is accepted: a per-session message count is "
                                  "OpenSMTPD policy, not RFC 5321; sessions are bounded by time, errors and per-client "
                                  "connection limits instead"),
}


def run_suite(c, port, host="127.0.0.1"):
    """Every case of the suite against the server at host:port (STARTTLS offered, local domain
    "localhost", the client trusted), checked as decided above."""
    total, passed, decided = 0, 0, 0
    for path in sorted(glob.glob(os.path.join(SUITE, "test.*"))):
        with open(path) as f:
            procs, cases = smtpscript.parse(f.read())
        for i, (name, body) in enumerate(cases):
            cid = name or f"{os.path.basename(path)}#{i + 1}"
            total += 1
            why = smtpscript.run_case(port, body, procs, host=host)
            if cid in DECIDED:
                reply, reason = DECIDED[cid]
                ok = why is not None and reply in why
                decided += ok
                c.check(ok, f"{cid}: decided — we answer {reply}: {reason}", why or "the case passed: update DECIDED")
            else:
                passed += why is None
                c.check(why is None, f"{cid}: passes", why or "")
    print(f"OpenSMTPD regress: {total} cases, {passed} pass, {decided} differ as decided (policy), "
          f"{total - passed - decided} fail")
    c.check(total == 69, "all 69 cases of the suite were run", str(total))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--client":
        # Client only, against a running server (test_dpdk_suites runs it inside a namespace).
        host, port = sys.argv[2].rsplit(":", 1)
        c = harness.Checker("opensmtpd_regress (client)")
        run_suite(c, int(port), host)
        c.finish()
    a = harness.args()
    c = harness.Checker("opensmtpd_regress")
    root = harness.tempdir(a.keep)
    if not os.path.isdir(SUITE):
        c.check(False, f"the suite is at {SUITE}")
        c.finish()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", f"{root}/tls.key", "-out", f"{root}/tls.crt", "-subj", "/CN=gw.test", "-days", "2"],
                   check=True, capture_output=True)
    os.chmod(f"{root}/tls.key", 0o600)
    sink = harness.Sink(root)
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port, local_domain="localhost",
                           extra=f'tls {{ cert_file: "{root}/tls.crt" key_file: "{root}/tls.key" }}').start()
    run_suite(c, gw.port)
    # The decision above says real source routes are accepted and ignored (RFC 5321 §4.1.2, App. C).
    out = harness.smtp_exchange(gw.port, [b"EHLO l\r\nMAIL FROM:<@a.test,@b.test:u@c.test>\r\n"
                                          b"RCPT TO:<@relay.test:r@localhost>\r\nQUIT\r\n"])
    c.check(out.count(b"250 2.1.") == 2, "a real source route (A-d-l) is accepted and ignored", out.decode(errors="replace"))
    gw.stop()
    c.finish()


if __name__ == "__main__":
    main()
