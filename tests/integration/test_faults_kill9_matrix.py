#!/usr/bin/env python3
"""Issue #13 fault matrix: kill -9 at random points while mail is in every queue state.

The next hop flaps (up and down every 0.3-1 s), so messages move through incoming/, active/,
deferred/ and back while mailseald is killed and restarted at least 50 times (each kill lands
wherever the gateway happens to be: receiving, committing, delivering, appending a status,
moving a file between states). Asserted: every acknowledged message is delivered at least
once, nothing is in corrupt/, and duplicates stay within the crash windows (reported).

The test command runs 50 kills; the long run (tools/faults-long) sets MAILSEAL_KILL9_KILLS=1000
and MAILSEAL_KILL9_MESSAGES=4000.
"""
import os
import random
import re
import sys
import threading
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_crash_kill9 import flood_with_kills, kill_and_restart  # noqa: E402

N = int(os.environ.get("MAILSEAL_KILL9_MESSAGES", "200"))
MIN_KILLS = int(os.environ.get("MAILSEAL_KILL9_KILLS", "50"))


def main():
    a = harness.args()
    c = harness.Checker("faults_kill9_matrix")
    root = harness.tempdir(a.keep)
    port = harness.free_port()
    sinks = []
    sink_lock = threading.Lock()

    def sink_up():
        d = os.path.join(root, f"sink{len(sinks)}")
        os.makedirs(d)
        for _ in range(50):
            try:
                s = harness.Sink(d, port=port)
                break
            except (OSError, RuntimeError):
                time.sleep(0.1)
        sinks.append(s)
        return s

    current = [sink_up()]
    gw = harness.Mailseald(a.mailseald, root, relay_port=port).start()
    c.check(b"250 2.0.0" in harness.send_classified(gw.port, "CLASSIFIED-KILL9_MATRIX-PROBE"), "the classified probe is accepted")
    done = threading.Event()
    states_seen = defaultdict(int)

    def flapper():
        rnd = random.Random(13)
        while not done.is_set():
            time.sleep(rnd.uniform(0.3, 1.0))
            with sink_lock:
                if current[0] is not None:
                    current[0].stop()
                    current[0] = None
                else:
                    current[0] = sink_up()

    def sampler():   # which states hold mail while the kills happen
        while not done.is_set():
            for st in ("incoming", "active", "deferred"):
                try:
                    states_seen[st] += bool(gw.queue_files(st))
                except OSError:
                    pass
            time.sleep(0.01)

    f = threading.Thread(target=flapper)
    f.start()
    sm = threading.Thread(target=sampler)
    sm.start()
    acked, kills = flood_with_kills(gw, N, senders=4, to="partner.test")
    # More kills, with mail still queued and the next hop flapping, until there were enough.
    rnd = random.Random(5)
    while kills < MIN_KILLS:
        time.sleep(rnd.uniform(0.2, 0.7))
        kill_and_restart(gw)
        kills += 1
    done.set()
    f.join()
    sm.join()
    with sink_lock:
        if current[0] is None:
            current[0] = sink_up()
    if gw.proc.poll() is not None:
        gw.start()
    c.check(len(acked) == N, f"all {N} messages eventually got 250 ({len(acked)})")
    c.check(kills >= MIN_KILLS, f"mailseald was killed {kills} times (at least {MIN_KILLS})")
    c.check(states_seen["deferred"] > 0 and states_seen["active"] > 0,
            "kills landed while mail was in active/ and deferred/", str(dict(states_seen)))

    harness.eventually(gw.drained, 120, "queue drained")
    delivered = defaultdict(int)
    for s in sinks:
        for m in s.messages():
            mid = re.search(rb"Message-ID: <kill-(\d+)@", m)
            if mid:
                delivered[int(mid.group(1))] += 1
    lost = sorted(acked - set(delivered))
    dups = sum(n - 1 for n in delivered.values() if n > 1)
    print(f"delivered {len(delivered)} distinct, {dups} duplicates, {kills} kills, states {dict(states_seen)}")
    c.check(not lost, f"no acknowledged message lost ({len(lost)} lost)", str(lost[:20]))
    c.check(not gw.queue_files("corrupt"), "kill -9 in every state never produced a corrupt queue file",
            str(gw.queue_files("corrupt")))
    c.check(dups <= N // 2, f"duplicates stay within the crash windows ({dups})")
    harness.never_in_clear(c, gw, sinks, "CLASSIFIED-KILL9_MATRIX-PROBE")
    c.check(gw.stop() == 0, "clean stop at the end")
    c.finish()


if __name__ == "__main__":
    main()
