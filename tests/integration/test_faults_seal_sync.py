#!/usr/bin/env python3
"""Issue #14 with issue #13's rule: the crypto workers write sealed copies without syncing, and
the queue manager makes each batch durable with one syncfs of the spool before it retires an
original or hands a copy on. When that group sync fails (EIO from the LD_PRELOAD injector,
syncfs only: received mail still commits), mailseald must stop before anything relies on the
copies — no copy leaves, no original is retired — and after a restart on a healthy disk every
acknowledged message is sealed and delivered, nothing in clear, nothing corrupt or held.
REQUIREMENTS.md §5 (SEE-AG-1: an acknowledged message is never discarded), §2 (SEE-2.1: never
in clear).
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_smime_gateways import make_pki, sealed_deliveries, send, smime_conf  # noqa: E402

N = 6


def message(i):
    return (f"From: a@agency-a.test\r\nTo: r{i}@agency-b.test\r\nSubject: seal sync {i}\r\n"
            f"Message-ID: <kill-{i}@agency-a.test>\r\n\r\nsealed body {i}\r\n").encode()


def main():
    a = harness.args()
    c = harness.Checker("faults_seal_sync")
    root = harness.tempdir(a.keep)
    inject = os.environ.get("MAILSEAL_FAULT_INJECT") or os.path.join(os.path.dirname(a.mailseald), "..", "tests",
                                                                    "libmailseal_fault_inject.so")
    inject = os.path.abspath(inject)
    c.check(os.path.exists(inject), "the fault injector is built", inject)
    ca_dir, [(da, env_a, pin_a), (db, _, _)] = make_pki(root, a.keygen, [("gw-a", "agency-a.test"),
                                                                          ("gw-b", "agency-b.test")])
    trigger = os.path.join(root, "FAIL-SYNCFS")
    open(trigger, "w").close()
    sink = harness.Sink(root)
    env = dict(env_a, LD_PRELOAD=inject, MAILSEAL_FAULT_TRIGGER=trigger, MAILSEAL_FAULT_OPS="syncfs",
               MAILSEAL_FAULT_PREFIX=os.path.join(root, "gw", "spool"))
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port, env=env, hostname="gw-a.test", name="gw",
                           extra=smime_conf("gw-a", da, pin_a, ca_dir,
                                            f'partners {{ domain: "agency-b.test" dca_cert_file: "{db}/dca.crt" }}'))
    gw.start()
    harness.wait_for(lambda: "security module ready" in gw.read_log(), 15, "token opened")
    acked, qids = set(), set()
    for i in range(N):
        if gw.proc.poll() is not None:
            break
        try:
            reply = send(gw.port, "a@agency-a.test", [f"r{i}@agency-b.test"], message(i))
        except OSError:
            continue
        if b"250 2.0.0" in reply:
            acked.add(i)
            qids.add(re.search(rb"queued as (\S+)", reply).group(1).decode())
    harness.wait_for(lambda: gw.proc.poll() is not None, 30, "mailseald stops when the copies' group sync fails")
    # The 250 of the first message may lose the race with the abort its own sealing causes, so
    # "committed" is read from the spool: originals (ids without a copy's "-k" suffix).
    originals = {f for f in gw.queue_files("active") if "-" not in f}
    c.check(len(originals) >= 1 and qids <= originals,
            f"received mail still commits while only syncfs fails ({len(originals)} originals, {len(acked)} acknowledged)")
    c.check(gw.proc.poll() not in (None, 0), f"mailseald stopped abnormally (exit {gw.proc.poll()})")
    c.check("sync of the spool's file system failed" in gw.read_log(), "the failed group sync is logged with its cause")
    c.check(not sink.messages(), f"no copy left before its sync succeeded ({len(sink.messages())} delivered)")
    copies = [f for f in gw.queue_files("active") if "-" in f]
    c.check(all(f.split("-")[0] in originals for f in copies),
            f"no original was retired: each of the {len(copies)} unsynced copies still has its original beside it")

    os.unlink(trigger)
    gw.start()
    harness.eventually(gw.drained, 60, "queue drained after the restart")
    delivered, clear = sealed_deliveries(sink)
    c.check(len(delivered) >= len(originals), f"every committed message delivered ({len(delivered)} of {len(originals)})")
    lost = sorted(acked - set(delivered))
    c.check(not lost, f"every acknowledged message delivered after the restart ({len(lost)} lost)", str(lost))
    c.check(clear == 0, f"nothing delivered in clear ({clear})")
    c.check(not gw.queue_files("corrupt") and not gw.queue_files("hold"), "nothing corrupt or held",
            str(gw.queue_files("corrupt") + gw.queue_files("hold")))
    c.check(gw.stop() == 0, "clean stop at the end")
    c.finish()


if __name__ == "__main__":
    main()
