#!/usr/bin/env python3
"""Issue #2 acceptance: next hop down -> messages defer and retry; a next hop that comes back
gets them; after the lifetime an RFC 3464 DSN from postmaster@ reaches the sender; a permanent
refusal bounces at once; a message delayed beyond delay_warning_s makes one "delayed" notice.
SEE-2.8c, SEE-2.12 (no DSN for <> or NOTIFY=NEVER, never loops).

Routing uses delivery.routes: partner-down.test -> a port nothing listens on,
partner-late.test -> a port whose sink starts later, hard.test -> a sink that refuses RCPT
with 550 5.1.1, agency-a.test (the senders' domain) -> the DSN sink.
"""
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402


def send(port, mail_from, rcpt, subject, mail_params=b"", rcpt_params=b""):
    return harness.smtp_exchange(port, [
        b"EHLO client.test\r\n" + b"MAIL FROM:<" + mail_from.encode() + b">" + mail_params + b"\r\n" +
        b"RCPT TO:<" + rcpt.encode() + b">" + rcpt_params + b"\r\nDATA\r\n",
        f"From: {mail_from}\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\nsecret line\r\n.\r\nQUIT\r\n".encode()])


def main():
    a = harness.args()
    c = harness.Checker("defer_dsn")
    root = harness.tempdir(a.keep)
    dsn_sink = harness.Sink(root)
    hard_sink = harness.Sink(root, extra=["-f", "RCPT", "-B", "550 5.1.1 no such user"])
    down_port = harness.free_port()
    late_port = harness.free_port()
    routes = (f'routes {{ domain: "partner-down.test" next_hop: "127.0.0.1:{down_port}" }}\n'
              f'routes {{ domain: "partner-late.test" next_hop: "127.0.0.1:{late_port}" }}\n'
              f'routes {{ domain: "hard.test" next_hop: "127.0.0.1:{hard_sink.port}" }}\n'
              f'routes {{ domain: "agency-a.test" next_hop: "127.0.0.1:{dsn_sink.port}" }}\n'
              "max_lifetime_s: 8")
    gw = harness.Mailseald(a.mailseald, root, delivery_extra=routes).start()

    t0 = time.time()
    ok = [
        send(gw.port, "alice@agency-a.test", "bob@partner-down.test", "expire-full"),
        send(gw.port, "carol@agency-a.test", "bob@partner-down.test", "expire-hdrs", b" RET=HDRS ENVID=env+2B1"),
        send(gw.port, "dave@agency-a.test", "bob@partner-down.test", "expire-never", b"", b" NOTIFY=NEVER"),
        send(gw.port, "", "bob@partner-down.test", "expire-null-sender"),
        send(gw.port, "erin@agency-a.test", "zed@partner-late.test", "late"),
        send(gw.port, "frank@agency-a.test", "nobody@hard.test", "hard"),
    ]
    c.check(all(b"250 2.0.0 Ok: queued as" in o for o in ok), "all six messages accepted")

    harness.wait_for(lambda: len(gw.queue_files("deferred")) >= 5, 15, "five messages deferred")
    c.check(True, "next hop down: messages are in deferred/")
    # Retries happen (backoff 1-2 s): at least two attempts logged for the same message.
    harness.wait_for(lambda: re.search(r"qmgr: deferred qid=\S+ attempts=2 ", gw.read_log()), 15,
                     "a second attempt")
    c.check(True, "deferred messages are retried with backoff")

    # The late next hop comes back: its message is delivered on a retry.
    late_sink = harness.Sink(root, port=late_port)
    harness.wait_for(lambda: any(b"Subject: late" in m for m in late_sink.messages()), 20, "late delivery")
    c.check(True, "a next hop that comes back receives the deferred message")

    # Permanent refusal: immediate bounce, 5.1.1 in the DSN.
    def dsn_for(subject):
        for m in dsn_sink.messages():
            if f"Subject: {subject}".encode() in m and b"multipart/report" in m:
                return m
        return None

    hard = harness.wait_for(lambda: dsn_for("hard"), 20, "DSN for the hard bounce")
    c.check(b"Status: 5.1.1" in hard and b"Diagnostic-Code: smtp; 550 5.1.1 no such user" in hard
            and b"Action: failed" in hard, "permanent 550 5.1.1: DSN with Status 5.1.1 and the next hop's reply")

    # Lifetime: 8 s. Then DSNs for the expired ones.
    full = harness.wait_for(lambda: dsn_for("expire-full"), 30, "DSN after lifetime")
    c.check(time.time() - t0 >= 7, f"DSN only after the lifetime ({time.time()-t0:.1f}s)")
    checks = [b"X-Mail-Args: <>", b"X-Rcpt-Args: <alice@agency-a.test>",
              b"From: Mail Delivery System <postmaster@gw.test>", b"To: <alice@agency-a.test>",
              b"Reporting-MTA: dns; gw.test", b"Final-Recipient: rfc822; bob@partner-down.test",
              b"Action: failed", b"Status: 4.4.7", b"Content-Type: message/rfc822", b"secret line"]
    missing = [x for x in checks if x not in full]
    c.check(not missing, "lifetime DSN: null sender, from postmaster@, RFC 3464 fields, original quoted", str(missing))
    hdrs = harness.wait_for(lambda: dsn_for("expire-hdrs"), 10, "RET=HDRS DSN")
    c.check(b"text/rfc822-headers" in hdrs and b"secret line" not in hdrs and b"Original-Envelope-Id: env+1" in hdrs,
            "RET=HDRS: headers only; ENVID returned decoded")
    time.sleep(2)
    c.check(dsn_for("expire-never") is None, "NOTIFY=NEVER: no DSN")
    c.check(dsn_for("expire-null-sender") is None, "null sender: no DSN (no loops)")
    c.check(not gw.queue_files("deferred") and not gw.queue_files("active"), "queue empty after expiry and DSNs")
    log = gw.read_log()
    c.check(log.count("qmgr: expired") == 4, f"four expiries logged ({log.count('qmgr: expired')})")
    c.check(gw.stop() == 0, "clean stop")

    # SEE-2.8c: a message still undelivered after delay_warning_s gets one "delayed" notice
    # ("will keep trying for another N hours"), only where NOTIFY allows it, never twice — not
    # even after a restart (the notice is recorded in the queue file).
    warn_sink = harness.Sink(root)
    routes2 = (f'routes {{ domain: "partner-down.test" next_hop: "127.0.0.1:{down_port}" }}\n'
               f'routes {{ domain: "agency-a.test" next_hop: "127.0.0.1:{warn_sink.port}" }}\n'
               "max_lifetime_s: 3600 delay_warning_s: 2")
    gw2 = harness.Mailseald(a.mailseald, root, delivery_extra=routes2, name="gw2").start()
    ok = [send(gw2.port, "gina@agency-a.test", "bob@partner-down.test", "slow-default"),
          send(gw2.port, "hank@agency-a.test", "bob@partner-down.test", "slow-failure-only", b"", b" NOTIFY=FAILURE"),
          send(gw2.port, "ivan@agency-a.test", "bob@partner-down.test", "slow-delay", b"", b" NOTIFY=DELAY,FAILURE")]
    c.check(all(b"250 2.0.0" in o for o in ok), "three messages for a next hop that is down")

    def delayed(subject):
        return [m for m in warn_sink.messages() if f"Subject: {subject}".encode() in m and b"Action: delayed" in m]
    d1 = harness.wait_for(lambda: delayed("slow-default"), 20, "a delay notice")[0]
    harness.wait_for(lambda: delayed("slow-delay"), 20, "a delay notice for NOTIFY=DELAY")
    want = [b"Subject: Delayed Mail (still being retried)", b"you do not need to send it again",
            b"keep trying for another", b"Action: delayed", b"Will-Retry-Until: ", b"To: <gina@agency-a.test>",
            b"text/rfc822-headers"]
    c.check(all(x in d1 for x in want) and b"secret line" not in d1,
            "delay notice: RFC 3464 Action: delayed, Will-Retry-Until, 'keep trying for another N hours', headers only",
            str([x for x in want if x not in d1]))
    gw2.stop()
    gw2.start()   # the same spool: the notices are recorded, so none is sent again
    harness.wait_for(lambda: re.search(r"qmgr: deferred qid=\S+ attempts=[4-9]", gw2.read_log()), 30, "more retries")
    time.sleep(1)
    c.check(len(delayed("slow-default")) == 1 and len(delayed("slow-delay")) == 1,
            "one delay notice per message, however many retries and restarts",
            f"{len(delayed('slow-default'))} / {len(delayed('slow-delay'))}")
    c.check(not delayed("slow-failure-only"), "NOTIFY=FAILURE: no delay notice (RFC 3461)")
    c.check(len(gw2.queue_files("deferred") + gw2.queue_files("active")) == 3, "the three messages are still queued")
    gw2.stop()

    # SIGTERM while a delivery waits on a very slow next hop: the stop is prompt and the
    # message stays queued for the next start.
    stuck = harness.Sink(root, extra=["-w", "120"])
    gw3 = harness.Mailseald(a.mailseald, root, relay_port=stuck.port, name="gw3").start()
    c.check(b"250 2.0.0 Ok: queued" in send(gw3.port, "alice@agency-a.test", "bob@partner.test", "slow"), "accepted for a slow next hop")
    harness.wait_for(lambda: subprocess.run(["ss", "-Htn", "state", "established", f"( dport = :{stuck.port} )"],
                                            capture_output=True, text=True).stdout.strip(), 10, "delivery under way")
    time.sleep(0.5)
    t1 = time.time()
    rc = gw3.stop(timeout=30)
    c.check(rc == 0 and time.time() - t1 < 5, f"SIGTERM during a slow delivery stops in {time.time()-t1:.1f}s")
    c.check(len(gw3.queue_files("active") + gw3.queue_files("deferred")) == 1, "the message is still queued")
    c.finish()


if __name__ == "__main__":
    main()
