#!/usr/bin/env python3
"""Issue #4 with SEE-AG-4 (fail safe): the token disappears while mail for a partner is being
accepted and sealed, and comes back. Whatever the timing, every message that got 250 is
delivered sealed after the token returns; none leaves in clear; none is put on hold because of
the outage (a token failure defers, it is not a verdict on the message). The crypto workers
drop their sessions, and the token manager re-opens the module only after they let go.
"""
import os
import shutil
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_crash_kill9 import send_one  # noqa: E402
from test_smime_gateways import make_pki, sealed_deliveries, smime_conf  # noqa: E402

N = 120


def main():
    a = harness.args()
    c = harness.Checker("smime_token_outage")
    root = harness.tempdir(a.keep)
    ca_dir, [(da, env_a, pin_a), (db, _, _)] = make_pki(root, a.keygen, [("gw-a", "agency-a.test"),
                                                                          ("gw-b", "agency-b.test")])
    sink = harness.Sink(root)
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port, env=env_a, hostname="gw-a.test",
                           extra=smime_conf("gw-a", da, pin_a, ca_dir,
                                            f'partners {{ domain: "agency-b.test" dca_cert_file: "{db}/dca.crt" }}')
                           .replace("health_interval_ms: 500", "health_interval_ms: 100"))
    gw.start()
    harness.wait_for(lambda: "security module ready" in gw.read_log(), 15, "token opened")

    acked, refused = set(), 0
    lock = threading.Lock()
    todo = list(range(N))

    def sender():
        nonlocal refused
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            if send_one(gw.port, i, "agency-b.test"):
                with lock:
                    acked.add(i)
                time.sleep(0.05)
            else:
                with lock:
                    todo.append(i)
                    refused += 1
                time.sleep(0.1)

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for t in threads:
        t.start()
    tokens = os.path.join(da, "tokens")
    outages = 0
    for _ in range(3):   # three outages while mail flows
        time.sleep(0.8)
        shutil.move(tokens, tokens + ".gone")
        harness.wait_for(lambda: gw.read_log().count("security module unavailable") > outages, 10, "outage seen")
        outages += 1
        time.sleep(0.7)
        shutil.move(tokens + ".gone", tokens)
        harness.wait_for(lambda: gw.read_log().count("security module back") >= outages, 20, "token back")
    for t in threads:
        t.join(120)
    c.check(len(acked) == N, f"all {N} messages got 250 in the end ({len(acked)}; {refused} refusals with 4xx)")
    c.check(outages == 3 and refused > 0, f"{outages} outages while mail flowed; new mail got 4xx meanwhile")

    harness.eventually(gw.drained, 120, "queue drained")
    delivered, clear = sealed_deliveries(sink)
    lost = sorted(acked - set(delivered))
    c.check(not lost, f"every acknowledged message delivered after the outages ({len(lost)} missing)", str(lost[:20]))
    c.check(clear == 0, f"nothing delivered in clear ({clear})")
    c.check(not gw.queue_files("hold"), "nothing held because of the outage", str(gw.queue_files("hold")[:5]))
    c.check(gw.stop() == 0, "clean stop")
    c.finish()


if __name__ == "__main__":
    main()
