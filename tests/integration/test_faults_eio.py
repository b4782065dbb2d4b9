#!/usr/bin/env python3
"""Issue #13 fault matrix: the spool disk fails fsync with EIO (LevelDB's rule: after a failed
fsync, stop and recover). The fault comes from an LD_PRELOAD injector (tests/faults/
fault_inject.c) — a real disk cannot be asked for EIO on demand.

Messages are queued while the next hop is down; then fsync fails on the spool: no new message
may get 250 (its durability is unknown), and mailseald may stop (it aborts when the spool
directory's fsync fails, so that recovery starts from the disk). Then the disk is healthy
again, mailseald is restarted and the next hop comes up: every message that got 250 is
delivered, nothing is in corrupt/.
"""
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402



def main():
    a = harness.args()
    c = harness.Checker("faults_eio")
    root = harness.tempdir(a.keep)
    inject = os.environ.get("MAILSEAL_FAULT_INJECT") or os.path.join(os.path.dirname(a.mailseald), "..", "tests",
                                                                    "libmailseal_fault_inject.so")
    inject = os.path.abspath(inject)
    c.check(os.path.exists(inject), "the fault injector is built", inject)
    trigger = os.path.join(root, "FAIL-FSYNC")
    relay_port = harness.free_port()
    gw = harness.Mailseald(a.mailseald, root, relay_port=relay_port, name="gw",
                           env=dict(os.environ, LD_PRELOAD=inject, MAILSEAL_FAULT_TRIGGER=trigger,
                                    MAILSEAL_FAULT_PREFIX=os.path.join(root, "gw", "spool")))
    gw.start()
    c.check(b"250 2.0.0" in harness.send_classified(gw.port, "CLASSIFIED-EIO-PROBE"), "the classified probe is accepted")
    acked = set()
    for i in range(10):
        if b"250 2.0.0" in harness.send_one(gw.port, f"r{i}@remote.test", f"eio-{i}", "a@agency-a.test"):
            acked.add(i)
    c.check(len(acked) == 10, "10 messages acknowledged while the disk is healthy", str(sorted(acked)))
    harness.wait_for(lambda: len(gw.queue_files("deferred")) + len(gw.queue_files("active")) >= 10, 20, "queued")

    open(trigger, "w").close()   # from now on fsync/fdatasync on the spool fail with EIO
    during = {}
    for i in range(10, 15):
        during[i] = harness.send_one(gw.port, f"r{i}@remote.test", f"eio-{i}", "a@agency-a.test")
        if b"250 2.0.0" in during[i]:
            acked.add(i)
    c.check(not any(b"250 2.0.0" in r for r in during.values()),
            "with fsync failing, no new message is acknowledged (4xx or the connection ends)",
            repr({k: v[-80:] for k, v in during.items()}))
    time.sleep(2)   # retries append statuses meanwhile (their syncs fail too)
    log = gw.read_log()
    c.check("fdatasync" in log or "fsync" in log, "the failed syncs are logged with their cause")
    os.unlink(trigger)
    gw.kill()
    sink = harness.Sink(root, port=relay_port)
    gw.start()
    want = {f"Subject: eio-{i}".encode() for i in acked}

    def delivered():
        got = {line.strip() for m in sink.messages() for line in m.split(b"\n") if line.startswith(b"Subject: eio-")}
        return got if want <= got else None
    ok = harness.eventually(delivered, 60, "every acknowledged message delivered") is not None
    c.check(ok, "after the EIO episode and a restart, every acknowledged message is delivered",
            f"{len(acked)} acknowledged")
    c.check(not gw.queue_files("corrupt"), "nothing in corrupt/", str(gw.queue_files("corrupt")))
    harness.never_in_clear(c, gw, [sink], "CLASSIFIED-EIO-PROBE")
    gw.stop()
    c.finish()


if __name__ == "__main__":
    main()
