#!/usr/bin/env python3
"""Issue #13 fault matrix: the system clock is stepped while mail waits in the queue. The
clock of the mailseald process is moved with libfaketime (Debian's libfaketime, preloaded;
the monotonic clock is left alone, as a real step leaves it), the one way to step one
process's clock without touching the machine's.

- Stepped back a day while messages are deferred: they are retried on their schedule and
  delivered as soon as the next hop is back — not a day later.
- Stepped forward eleven days with a one-hour message lifetime: nothing bounces as expired;
  every message is delivered when the next hop is back, and no DSN is sent.
- Each step is logged once with its size.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"



def main():
    a = harness.args()
    c = harness.Checker("faults_clock")
    root = harness.tempdir(a.keep)
    c.check(os.path.exists(FAKETIME), "libfaketime is installed (tools/setup)", FAKETIME)
    offset = os.path.join(root, "faketime")

    def step(spec):
        with open(offset, "w") as f:
            f.write(spec + "\n")
    step("+0")
    hop_port = harness.free_port()
    env = dict(os.environ, LD_PRELOAD=FAKETIME, FAKETIME_TIMESTAMP_FILE=offset, FAKETIME_CACHE_DURATION="1",
               FAKETIME_DONT_FAKE_MONOTONIC="1", FAKETIME_DONT_RESET="1")
    gw = harness.Mailseald(a.mailseald, root, relay_port=hop_port, env=env,
                           delivery_extra="max_lifetime_s: 3600").start()
    c.check(b"250 2.0.0" in harness.send_classified(gw.port, "CLASSIFIED-CLOCK-PROBE"), "the classified probe is accepted")

    def delivered(sink, want):
        got = {line.strip()[len(b"Subject: "):].decode() for m in sink.messages() for line in m.split(b"\n")
               if line.startswith(b"Subject: clock-")}
        return got if want <= got else None

    # 1. Back a day.
    first = {f"clock-{i}" for i in range(5) if b"250 2.0.0" in harness.send_one(gw.port, f"r{i}@remote.test", f"clock-{i}")}
    c.check(len(first) == 5, "5 messages acknowledged while the next hop is down")
    harness.wait_for(lambda: len(gw.queue_files("deferred")) >= 5, 30, "deferred")
    step("-1d")
    harness.wait_for(lambda: "system clock stepped" in gw.read_log(), 20, "the step noticed")
    c.check('step_s="-86' in gw.read_log() or "step_s=-86" in gw.read_log(),
            "the step back is logged with its size", gw.read_log()[-600:])
    sink = harness.Sink(root, port=hop_port)
    sinks = [sink]
    got = harness.eventually(lambda: delivered(sink, first), 30, "delivered after the step back")
    c.check(got is not None, "after the clock was set back a day, deferred mail is still delivered within seconds",
            gw.read_log()[-800:])
    sink.stop()

    # 2. Forward eleven days (from -1d to +10d) with a one-hour lifetime.
    second = {f"clock-{i}" for i in range(5, 10) if b"250 2.0.0" in harness.send_one(gw.port, f"r{i}@remote.test", f"clock-{i}")}
    c.check(len(second) == 5, "5 more acknowledged while the next hop is down again")
    harness.wait_for(lambda: len(gw.queue_files("deferred")) >= 5, 30, "deferred again")
    before = gw.read_log().count("system clock stepped")
    step("+10d")
    harness.wait_for(lambda: gw.read_log().count("system clock stepped") > before, 20, "the second step noticed")
    # Retries in the new time (each would have expired the message if ages jumped with the clock).
    harness.wait_for(lambda: gw.read_log().split("system clock stepped")[-1].count("qmgr: deferred") >= 10, 30,
                     "two retry rounds after the step")
    log = gw.read_log()
    c.check("expired" not in log and "bounced" not in log,
            "a step forward of eleven days expires nothing (lifetime one hour)", log[-800:])
    os.makedirs(os.path.join(root, "second"))
    sink = harness.Sink(os.path.join(root, "second"), port=hop_port)
    sinks.append(sink)
    got = harness.eventually(lambda: delivered(sink, second), 30, "delivered after the step forward")
    c.check(got is not None, "every message is delivered when the next hop is back", gw.read_log()[-800:])
    c.check(not [m for m in sink.messages() if b"Delivery Status Notification" in m or b"multipart/report" in m],
            "no DSN was sent")
    c.check(harness.eventually(lambda: gw.drained() or None, 20, "drained") is not None, "the queue is empty")
    harness.never_in_clear(c, gw, sinks, "CLASSIFIED-CLOCK-PROBE")
    gw.stop()
    c.finish()


if __name__ == "__main__":
    main()
