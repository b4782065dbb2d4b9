#!/usr/bin/env python3
"""Issue #4 with issue #2's durability rule: kill -9 mailseald in a loop while 300 messages for
a partner domain are accepted, sealed by the crypto workers and delivered. Sealing writes a new
spool copy and records the transfer in the original (dataplane/queue/FORMAT.md); a crash at
any point must neither lose an acknowledged message nor let one out unsealed, and must not hold
anything. Duplicates from the usual MTA windows are allowed and counted.
"""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_crash_kill9 import flood_with_kills  # noqa: E402
from test_smime_gateways import make_pki, run, sealed_deliveries, smime_conf  # noqa: E402

N = 300


def main():
    a = harness.args()
    c = harness.Checker("smime_crash_kill9")
    root = harness.tempdir(a.keep)
    ca_dir, [(da, env_a, pin_a), (db, _, _)] = make_pki(root, a.keygen, [("gw-a", "agency-a.test"),
                                                                          ("gw-b", "agency-b.test")])
    sink = harness.Sink(root)   # agency-b's gateway stands here: it only has to receive
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port, env=env_a, hostname="gw-a.test",
                           extra=smime_conf("gw-a", da, pin_a, ca_dir,
                                            f'partners {{ domain: "agency-b.test" dca_cert_file: "{db}/dca.crt" }}'))
    gw.start()
    harness.wait_for(lambda: "security module ready" in gw.read_log(), 15, "token opened")

    acked, kills = flood_with_kills(gw, N, to="agency-b.test")
    c.check(len(acked) == N, f"all {N} messages eventually got 250 ({len(acked)}) across {kills} kill -9s")
    c.check(kills >= 5, f"the daemon was killed while mail was sealed ({kills} times)")
    if gw.proc.poll() is not None:
        gw.start()

    harness.eventually(gw.drained, 180, "queue drained after the last restart")
    delivered, clear = sealed_deliveries(sink)
    lost = sorted(acked - set(delivered))
    c.check(not lost, f"no acknowledged message lost ({len(lost)} lost)", f"lost: {lost[:20]}")
    c.check(clear == 0, f"nothing left unsealed ({clear} messages in clear)")
    dups = sum(n - 1 for n in delivered.values())
    print(f"duplicates: {dups}")
    c.check(dups <= N // 5, f"duplicates stay within the crash windows ({dups})")
    c.check(not gw.queue_files("hold"), "nothing was held", str(gw.queue_files("hold")[:5]))
    c.check(not gw.queue_files("corrupt"), "kill -9 never produced a corrupt queue file")
    # A delivered copy is CMS encrypted to agency-b's DCA: its recipient info names that
    # certificate's serial number.
    with open(os.path.join(root, "sample.eml"), "wb") as f:
        f.write(sink.messages()[0].replace(b"\r\n", b"\n"))
    r = subprocess.run(["openssl", "cms", "-cmsout", "-print", "-in", os.path.join(root, "sample.eml")],
                       capture_output=True, text=True)
    serial = run(f"openssl x509 -noout -serial -in {db}/dca.crt", root).strip().split("=")[1].lower()
    printed = re.sub(r"[^0-9a-fx:\n]", "", r.stdout.lower()).replace(":", "")
    c.check(r.returncode == 0 and f"0x{serial}" in printed, "a delivered copy is encrypted to agency-b's DCA",
            r.stderr[-300:] or serial)
    c.check(gw.stop() == 0, "clean stop at the end")
    c.finish()


if __name__ == "__main__":
    main()
