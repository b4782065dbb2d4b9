#!/usr/bin/env python3
"""Issue #6 (DE-6): a message can carry its own expiry. A message with an "Expires:" header
(RFC 4021) to a next hop that is down is retried until that time, then returned to its sender
with an RFC 3464 DSN and removed; a message without one keeps being retried.
"""
import email.utils
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402


def send(port, mail_from, rcpt, headers):
    return harness.smtp_exchange(port, [
        f"EHLO client.test\r\nMAIL FROM:<{mail_from}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode(),
        f"From: {mail_from}\r\n{headers}\r\nbody\r\n.\r\nQUIT\r\n".encode()])


def main():
    a = harness.args()
    c = harness.Checker("policy_expiry")
    root = harness.tempdir(a.keep)
    dsn_sink = harness.Sink(root)
    down = harness.free_port()
    routes = (f'routes {{ domain: "partner-down.test" next_hop: "127.0.0.1:{down}" }}\n'
              f'routes {{ domain: "agency-a.test" next_hop: "127.0.0.1:{dsn_sink.port}" }}\n')
    gw = harness.Mailseald(a.mailseald, root, delivery_extra=routes).start()
    expires = email.utils.formatdate(time.time() + 4, usegmt=False)
    o1 = send(gw.port, "alice@agency-a.test", "bob@partner-down.test", f"Subject: offer\r\nExpires: {expires}\r\n")
    o2 = send(gw.port, "carol@agency-a.test", "bob@partner-down.test", "Subject: no expiry\r\n")
    c.check(b"250 2.0.0" in o1 and b"250 2.0.0" in o2, "both accepted")
    harness.wait_for(lambda: len(gw.queue_files("deferred")) >= 2, 15, "both deferred")
    dsn = harness.wait_for(lambda: [x for x in dsn_sink.messages() if b"Expires: header" in x], 30, "expiry DSN")
    c.check(b"To: <alice@agency-a.test>" in dsn[0] and b"Status: 5.4.7" in dsn[0] and b"Action: failed" in dsn[0],
            "after its Expires: time the message goes back to its sender (RFC 3464, 5.4.7)", dsn[0][:300])
    time.sleep(2)
    c.check(len(gw.queue_files("deferred")) + len(gw.queue_files("active")) == 1,
            "the expired message left the queue; the one without an expiry is still retried")
    c.check(not [x for x in dsn_sink.messages() if b"carol@agency-a.test" in x], "no DSN for the message without expiry")
    gw.stop()
    c.finish()


if __name__ == "__main__":
    main()
