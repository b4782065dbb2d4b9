#!/usr/bin/env python3
"""Issue #18: mailseald under systemd — the notification protocol (sd_notify(3), Type=notify)
and journald-friendly logs, checked without systemd: the test is the notify socket and the
journal stream.

- READY=1 comes once the SMTP listener accepts connections (with a STATUS line);
- with WATCHDOG_USEC set, WATCHDOG=1 comes every half of it (never a whole one apart);
- SIGHUP: RELOADING=1, then READY=1 again (also when the new file is refused: the running
  configuration stays, and the STATUS says why);
- SIGTERM: STOPPING=1 before the daemon drains and exits 0;
- with JOURNAL_STREAM naming its stderr, every log line starts with its syslog priority
  ("<6>" info, "<4>" warning, "<3>" error) and carries no time of its own; without it, lines
  start with the time as before.
"""
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402


def main():
    a = harness.args()
    c = harness.Checker("service_notify")
    root = harness.tempdir(a.keep)
    sock_path = os.path.join(root, "notify.sock")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(sock_path)
    ns.settimeout(0.2)
    messages = []   # (time, text)

    def collect(until, want=None):
        """Reads notifications until `until` (a time) or until one contains `want`."""
        while time.time() < until:
            try:
                data = ns.recv(4096).decode()
            except socket.timeout:
                continue
            messages.append((time.time(), data))
            if want and want in data:
                return data
        return None

    sink = harness.Sink(root)
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port)
    log = open(gw.log, "ab")
    st = os.fstat(log.fileno())
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="2000000",
               JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    gw.prepare()
    gw.proc = subprocess.Popen([a.mailseald, "--config", gw.config], stdout=log, stderr=log, env=env)
    log.close()
    harness._cleanups.append(gw.kill)

    ready = collect(time.time() + 30, "READY=1")
    c.check(ready is not None and "STATUS=accepting mail" in ready, "READY=1 with a status line", str(messages))
    try:
        socket.create_connection(("127.0.0.1", gw.port), timeout=2).close()
        listening = True
    except OSError:
        listening = False
    c.check(listening, "when READY=1 comes, the SMTP listener already accepts connections")

    start = time.time()
    collect(start + 4.5)
    beats = [t for t, m in messages if "WATCHDOG=1" in m and t >= start]
    gaps = [b - a_ for a_, b in zip(beats, beats[1:])]
    c.check(len(beats) >= 3 and max(gaps, default=9) < 2.0,
            "WATCHDOG=1 every half of WATCHDOG_USEC (2 s), never a whole one apart", f"{len(beats)} beats, gaps {gaps}")

    del messages[:]
    gw.proc.send_signal(signal.SIGHUP)
    collect(time.time() + 10, "READY=1")
    texts = [m for _, m in messages]
    rel = next((i for i, m in enumerate(texts) if "RELOADING=1" in m), None)
    rdy = next((i for i, m in enumerate(texts) if "READY=1" in m), None)
    c.check(rel is not None and rdy is not None and rel < rdy and "policy version" in texts[rdy],
            "SIGHUP: RELOADING=1, then READY=1 with the new policy version", str(texts))

    # A refused reload: READY again, the status says why.
    with open(gw.config) as f:
        good = f.read()
    with open(gw.config, "w") as f:
        f.write(good + "\nnot_a_field: 1\n")
    del messages[:]
    gw.proc.send_signal(signal.SIGHUP)
    ready = collect(time.time() + 10, "READY=1")
    c.check(ready is not None and "reload refused" in ready, "a refused reload: READY=1 again, the status says why",
            str([m for _, m in messages]))
    with open(gw.config, "w") as f:
        f.write(good)
    c.check(b"250 2.0.0" in harness.send_one(gw.port, "a@partner.test", "after reload"),
            "mail is still accepted with the running configuration")

    del messages[:]
    gw.proc.send_signal(signal.SIGTERM)
    stopping = collect(time.time() + 10, "STOPPING=1")
    c.check(stopping is not None, "SIGTERM: STOPPING=1", str([m for _, m in messages]))
    c.check(gw.proc.wait(30) == 0, "and a clean exit")

    lines = [l for l in gw.read_log().splitlines() if l.strip()]
    c.check(lines and all(l[:3] in ("<3>", "<4>", "<6>", "<7>") for l in lines),
            "every log line starts with its syslog priority for the journal", "\n".join(lines[:5]))
    c.check(any(l.startswith("<3>error mailseald: reload refused") for l in lines),
            "errors carry <3>", "\n".join(l for l in lines if "reload" in l))
    c.check(not any(l[3:5] == "20" for l in lines), "and no time of their own (the journal keeps its own)")

    # Outside systemd (no JOURNAL_STREAM, no NOTIFY_SOCKET): the usual lines, with their time.
    gw2 = harness.Mailseald(a.mailseald, root, relay_port=sink.port, name="plain").start()
    first = next((l for l in gw2.read_log().splitlines() if l.strip()), "")
    c.check(first[:2] == "20" and "T" in first[:11], "without the journal, lines start with their time", first)
    c.check(gw2.stop() == 0, "clean stop")
    c.finish()


if __name__ == "__main__":
    main()
