#!/usr/bin/env python3
"""Issue #6 (SEE-2.12): notices never loop. Two gateways whose routes point at each other
bounce each other's mail (each relays the other's domain back until the mail-loop limit,
554 5.4.6). gw-x holds a classified message and notifies its sender and administrator; the
notices circle, are refused at the hop limit, and — sent from the null sender and marked as
notifications — cause no DSN and no further notice. Both queues drain; the number of notices
stays at two.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_smime_gateways import make_pki, send, smime_conf  # noqa: E402


def main():
    a = harness.args()
    c = harness.Checker("policy_loop")
    root = harness.tempdir(a.keep)
    ca_dir, [(dx, env_x, pin_x)] = make_pki(root, a.keygen, [("gw-x", "agency-x.test")])
    port_y = harness.free_port()
    gx = harness.Mailseald(a.mailseald, root, relay_port=port_y, env=env_x, hostname="gw-x.test",
                           local_domain="agency-x.test", name="gw-x", extra=smime_conf("gw-x", dx, pin_x, ca_dir, ""))
    gy = harness.Mailseald(a.mailseald, root, relay_port=gx.port, hostname="gw-y.test", local_domain="agency-y.test",
                           name="gw-y")
    with open(gy.config) as f:   # gw-y listens where gw-x relays
        conf = f.read().replace(f'address: "127.0.0.1:{gy.port}"', f'address: "127.0.0.1:{port_y}"')
    with open(gy.config, "w") as f:
        f.write(conf)
    gy.port = port_y
    gx.start()
    gy.start()

    out = send(gx.port, "alice@agency-x.test", ["carol@agency-q.test"],
               b"From: alice@agency-x.test\r\nTo: carol@agency-q.test\r\nSubject: [RESTRICTED] x\r\n\r\nsecret\r\n")
    c.check(b"250 2.0.0" in out, "a classified message for an unlisted domain is accepted")
    harness.wait_for(lambda: gx.queue_files("hold"), 20, "held")
    harness.wait_for(lambda: gx.read_log().count("notice about held mail queued") >= 2, 40, "two notices")

    def quiet():
        busy = sum(len(g.queue_files(s)) for g in (gx, gy) for s in ("incoming", "active", "deferred"))
        return busy == 0
    harness.wait_for(quiet, 120, "both queues drained")
    time.sleep(3)
    logs = gx.read_log() + gy.read_log()
    c.check(quiet(), "both queues drain: the circling notices end")
    c.check("mail loop suspected" in logs, "the notices were refused at the mail-loop limit (554 5.4.6)")
    c.check(gx.read_log().count("notice about held mail queued") == 2,
            "still exactly two notices (sender and administrator): none about a notice",
            str(gx.read_log().count("notice about held mail queued")))
    c.check("sender notified (DSN)" not in logs, "no DSN about a refused notice (null sender)")
    c.check(len(gx.queue_files("hold")) == 1, "the held message is still held, nothing else is")
    gx.stop()
    gy.stop()
    c.finish()


if __name__ == "__main__":
    main()
