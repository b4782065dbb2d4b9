#!/usr/bin/env python3
"""Issue #13 fault matrix: the audit disk dies (every write and sync of the audit log fails
with EIO — an LD_PRELOAD injector, tests/faults/fault_inject.cc, since a real disk cannot be
asked for EIO on demand). REQUIREMENTS.md SEE-AG-1, SEE-AG-4, DE-5.

- While the trail cannot be written, no new message is acknowledged (451 4.3.0, fail closed),
  a management change is refused, and health names the audit part as down.
- A failed sync is sticky (LevelDB's rule): the log is not trusted again in this run, even after
  the disk is back; the events that could not be written are kept and written at the next
  start, marked as late, so nothing is lost silently.
- After a restart on a healthy disk: every acknowledged message is delivered, each of them has
  its mail.accepted record, the trail verifies offline with the audit certificate, and nothing
  is called tampering.
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_control_api import control_pki  # noqa: E402
from test_smime_gateways import make_pki, send, smime_conf  # noqa: E402


def main():
    a = harness.args()
    c = harness.Checker("faults_audit_eio")
    root = harness.tempdir(a.keep)
    inject = os.path.abspath(os.environ.get("MAILSEAL_FAULT_INJECT") or os.path.join(
        os.path.dirname(a.mailseald), "..", "tests", "libmailseal_fault_inject.so"))
    c.check(os.path.exists(inject), "the fault injector is built", inject)
    ca_dir, [(da, env_a, pin_a)] = make_pki(root, a.keygen, [("gw-a", "agency-a.test")])
    m = control_pki(root, a.keygen, da, env_a, pin_a, ca_dir, ("admin-1", "auditor-1"))
    audit_dir = os.path.join(root, "auditdisk")
    os.makedirs(audit_dir)
    trigger = os.path.join(root, "DEAD-AUDIT-DISK")
    sink = harness.Sink(root)
    api_port = harness.free_port()
    control = (f'control {{ listen: "127.0.0.1:{api_port}" cert_file: "{m}/server.crt" key_file: "{m}/server.key" '
               f'client_ca_file: "{m}/mgmt-ca.crt" roles {{ common_name: "admin-1" role: "administrator" }} '
               f'roles {{ common_name: "auditor-1" role: "auditor" }} '
               f'audit {{ log_path: "{audit_dir}/audit.log" heads_path: "{audit_dir}/audit.heads" head_every: 5 '
               f'key_label: "audit" }} }}')
    env = dict(env_a, LD_PRELOAD=inject, MAILSEAL_FAULT_TRIGGER=trigger, MAILSEAL_FAULT_PREFIX=audit_dir + "/",
               MAILSEAL_FAULT_OPS="sync,write")
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port, env=env, hostname="gw-a.test",
                           extra=smime_conf("gw-a", da, pin_a, ca_dir, "") + control).start()
    harness.wait_for(lambda: "management API listening" in gw.read_log(), 15, "API up")
    c.check(b"250 2.0.0" in harness.send_classified(gw.port, "CLASSIFIED-AUDIT_EIO-PROBE"), "the classified probe is accepted")

    def ctl(who, *args):
        r = subprocess.run([a.mailsealctl, "--server", f"127.0.0.1:{api_port}", "--cert", f"{m}/{who}.crt",
                            "--key", f"{m}/{who}.key", "--ca", f"{m}/mgmt-ca.crt", *args],
                           capture_output=True, text=True, timeout=30)
        return r.returncode, r.stdout, r.stderr

    def mail(tag):
        return send(gw.port, "alice@agency-a.test", ["x@plain.test"],
                    f"From: alice@agency-a.test\r\nSubject: aeio-{tag}\r\n\r\nbody {tag}\r\n".encode())

    acked = set()
    for i in range(5):
        if b"250 2.0.0" in mail(i):
            acked.add(str(i))
    c.check(len(acked) == 5, "5 messages acknowledged while the audit disk is healthy", str(sorted(acked)))

    open(trigger, "w").close()   # the audit disk is dead from now on
    harness.wait_for(lambda: len(sink.messages()) >= 5, 30, "first messages delivered")   # their events are written
    replies = {}
    for i in range(5, 25):
        r = mail(i)
        replies[i] = r
        if b"250 2.0.0" in r:
            acked.add(str(i))
        if b"451 4.3.0 Audit trail unavailable" in r:
            break
    c.check(any(b"451 4.3.0 Audit trail unavailable" in r for r in replies.values()),
            "the dead audit disk is noticed: new mail gets 451 4.3.0 (never accepted unaudited)",
            repr({k: v[-120:] for k, v in replies.items()}))
    more = mail("after")
    c.check(b"451 4.3.0" in more, "and stays refused while the trail cannot be written", more[-200:].decode(errors="replace"))
    rc, o, e = ctl("admin-1", "policy", "set", "/dev/null", "--expect-version", "0")
    c.check(rc != 0 and ("audit log cannot be written" in e or "audit" in e), "a management change is refused", e)
    rc, o, e = ctl("auditor-1", "health")
    part = o.split("mailseal.audit", 1)[1].split("\n", 1)[0] if "mailseal.audit" in o else ""
    c.check("NOT_SERVING" in part, "health names the audit part as down", o + e)

    os.unlink(trigger)   # the disk is back, but a failed sync is not trusted in this run
    out = mail("disk-back")
    c.check(b"451 4.3.0" in out, "after a failed sync the log is not trusted again until a restart (LevelDB's rule)",
            out[-200:].decode(errors="replace"))
    gw.stop()
    log = gw.read_log()
    c.check("audit records could not be written" in log, "at shutdown the daemon says how many events wait for the "
            "trail", log[-1500:])
    gw.start()
    harness.wait_for(lambda: "audit trail checked" in gw.read_log() or "DAMAGED" in gw.read_log(), 20, "trail checked")
    harness.wait_for(lambda: "management API listening" in gw.read_log().split("audit trail checked")[-1], 15, "API up")
    log = gw.read_log()
    c.check("DAMAGED" not in log, "the trail opens without being called tampered", log[-1500:])
    out = mail("restarted")
    c.check(b"250 2.0.0" in out, "after the restart on a healthy disk mail is accepted again")
    acked.add("restarted")

    def delivered():
        got = {line.strip().split(b"aeio-", 1)[1].decode() for msg in sink.messages() for line in msg.split(b"\n")
               if line.startswith(b"Subject: aeio-")}
        return got if acked <= got else None
    c.check(harness.eventually(delivered, 60, "every acknowledged message delivered") is not None,
            "every acknowledged message is delivered", f"{len(acked)} acknowledged")

    def accepted_records():
        rc, o, e = ctl("auditor-1", "-o", "json", "audit", "records", "--limit", "1000")
        recs = json.loads(o).get("records", []) if rc == 0 else []
        got = [r for r in recs if r.get("action") == "mail.accepted"]
        return (recs, got) if len(got) >= len(acked) else None
    found = harness.eventually(accepted_records, 20, "accepted records")
    recs, got = found if found else ([], [])
    c.check(found is not None, "every acknowledged message has its mail.accepted record — none lost with the disk",
            f"{len(got)} records for {len(acked)} acknowledged")
    late = [r for r in recs if "late" in r.get("detail", "")]
    c.check(any(r.get("action") == "audit.late_records" for r in recs),
            "the events written after the restart are announced as late, with their number", str(late)[:300])
    harness.never_in_clear(c, gw, [sink], "CLASSIFIED-AUDIT_EIO-PROBE")
    gw.stop()
    r = subprocess.run([a.audit, "verify", f"{audit_dir}/audit.log", f"{audit_dir}/audit.heads", f"{da}/audit.crt"],
                       capture_output=True, text=True)
    c.check(r.returncode == 0 and "verified" in r.stdout and "NOT COVERED" not in r.stdout,
            "the trail verifies offline, every record under a signed head", r.stdout + r.stderr)
    c.finish()


if __name__ == "__main__":
    main()
