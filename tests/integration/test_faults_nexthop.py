#!/usr/bin/env python3
"""Issue #13 fault matrix: the next hop fails in the middle of DATA — it drops the connection
after part of the message, or stalls past the command timeout — before it works again. This
is a fault no real MTA produces on demand, so the next hop here is a small scripted SMTP
server (a fake for the fault only; everything else is the real mailseald).

Asserted: every acknowledged message is delivered, complete (byte-exact body), at least once;
mailseald defers (never bounces) on these faults and logs why; its queue is empty at the end.
"""
import os
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402


class FlakyHop:
    """An SMTP server whose first `faults` sessions fail mid-DATA: odd ones drop the connection
    after 200 bytes of the message, even ones stop answering (stall). Later sessions work and
    keep what they receive."""

    def __init__(self, faults):
        self.faults = faults
        self.sessions = 0
        self.messages = []
        self.lock = threading.Lock()
        self.stalled = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.sessions += 1
                n = self.sessions
            threading.Thread(target=self.serve, args=(c, n), daemon=True).start()

    def serve(self, c, n):
        fault = None if n > self.faults else ("drop" if n % 2 else "stall")
        f = c.makefile("rb")
        try:
            c.sendall(b"220 flaky.test ESMTP\r\n")
            while True:
                line = f.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    c.sendall(b"250-flaky.test\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    c.sendall(b"354 go ahead\r\n")
                    data = b""
                    while not data.endswith(b"\r\n.\r\n"):
                        chunk = f.readline()
                        if not chunk:
                            return
                        data += chunk
                        if fault == "drop" and len(data) > 200:
                            c.shutdown(socket.SHUT_RDWR)
                            return
                        if fault == "stall" and len(data) > 200:
                            self.stalled.append(c)   # keep it open, never answer
                            threading.Event().wait(60)
                            return
                    with self.lock:
                        self.messages.append(data)
                    c.sendall(b"250 2.0.0 kept\r\n")
                elif verb == b"QUIT":
                    c.sendall(b"221 bye\r\n")
                    return
                else:
                    c.sendall(b"250 ok\r\n")
        except OSError:
            return
        finally:
            try:
                c.close()
            except OSError:
                pass


def main():
    a = harness.args()
    c = harness.Checker("faults_nexthop")
    root = harness.tempdir(a.keep)
    hop = FlakyHop(faults=4)
    gw = harness.Mailseald(a.mailseald, root, relay_port=hop.port, name="gw")
    with open(gw.config) as f:
        text = f.read()
    with open(gw.config, "w") as f:   # a stall is noticed after 3 s, not the harness's 10
        f.write(text.replace("command_timeout_ms: 10000", "command_timeout_ms: 3000"))
    gw.start()
    c.check(b"250 2.0.0" in harness.send_classified(gw.port, "CLASSIFIED-NEXTHOP-PROBE"), "the classified probe is accepted")
    bodies = {}
    for i in range(3):
        body = (f"line {i} " * 300).encode() + b"\r\n"
        bodies[i] = body
        out = harness.smtp_exchange(gw.port, [
            f"EHLO client.test\r\nMAIL FROM:<a@agency-a.test>\r\nRCPT TO:<r{i}@remote.test>\r\nDATA\r\n".encode(),
            f"From: a@agency-a.test\r\nSubject: hop-{i}\r\n\r\n".encode() + body + b".\r\nQUIT\r\n"])
        c.check(b"250 2.0.0" in out, f"message {i} acknowledged")

    def all_there():
        with hop.lock:
            got = list(hop.messages)
        found = {i for i, b in bodies.items() for m in got if f"Subject: hop-{i}".encode() in m and m.endswith(b + b".\r\n")}
        return found if len(found) == len(bodies) else None
    ok = harness.eventually(all_there, 60, "all delivered after the faults") is not None
    c.check(ok, "every acknowledged message is delivered complete after drops and stalls mid-DATA",
            f"{len(hop.messages)} kept in {hop.sessions} sessions")
    c.check(hop.sessions > 4, "the faulty sessions really happened first", str(hop.sessions))
    log = gw.read_log()
    c.check(" deferred " in log and "bounced" not in log, "mid-DATA failures defer (temporary), never bounce")
    c.check(harness.eventually(gw.drained, 20, "queue empty") is not None, "the queue is empty at the end")
    harness.never_in_clear(c, gw, [hop], "CLASSIFIED-NEXTHOP-PROBE")
    gw.stop()
    c.finish()


if __name__ == "__main__":
    main()
