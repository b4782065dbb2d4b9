#!/usr/bin/env python3
"""Issue #2: delivery by MX from DNS (libunbound, fed local zone data), and thousands of
concurrent SMTP connections that do not block anyone.

DNS (delivery.dns_local_zones "test. static" + dns_local_data):
  partner.test   MX 10 mx1 (127.0.0.26, nothing listens) and MX 20 mx2 (127.0.0.25, a sink)
  implicit.test  no MX, A 127.0.0.25 (RFC 5321 §5.1 implicit MX)
  nullmx.test    MX 0 "." (RFC 7505): permanent failure 5.1.10
  nxdomain.test  does not exist: permanent failure 5.1.2
"""
import os
import resource
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402


def send(port, rcpt, subject):
    return harness.smtp_exchange(port, [
        f"EHLO c.test\r\nMAIL FROM:<alice@agency-a.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode(),
        f"Subject: {subject}\r\n\r\nbody\r\n.\r\nQUIT\r\n".encode()])


def main():
    a = harness.args()
    c = harness.Checker("mx_connections")
    root = harness.tempdir(a.keep)
    # MX delivery always uses port 25; any 127/8 address is local, so the "MX host" is a sink on
    # 127.0.0.25:25 (we run as root).
    mx_sink = harness.Sink(root, port=25, host="127.0.0.25")
    dsn_sink = harness.Sink(root)
    slow_sink = harness.Sink(root, extra=["-w", "1"])  # answers DATA after 1 s
    dns = "\n".join([
        'dns_local_zones: "test. static"',
        'dns_local_data: "partner.test. MX 10 mx1.partner.test."',
        'dns_local_data: "partner.test. MX 20 mx2.partner.test."',
        'dns_local_data: "mx1.partner.test. A 127.0.0.26"',
        'dns_local_data: "mx2.partner.test. A 127.0.0.25"',
        'dns_local_data: "implicit.test. A 127.0.0.25"',
        'dns_local_data: "nullmx.test. MX 0 ."',
        f'routes {{ domain: "agency-a.test" next_hop: "127.0.0.1:{dsn_sink.port}" }}',
        f'routes {{ domain: "slow.test" next_hop: "127.0.0.1:{slow_sink.port}" }}',
        "per_destination_concurrency: 2",
    ])
    gw = harness.Mailseald(a.mailseald, root, delivery_extra=dns).start()

    for rcpt, subj in [("bob@partner.test", "via-mx"), ("x@implicit.test", "implicit"),
                       ("y@nullmx.test", "nullmx"), ("z@nxdomain.test", "nxdomain")]:
        c.check(b"250 2.0.0 Ok: queued" in send(gw.port, rcpt, subj), f"accepted for {rcpt}")
    harness.wait_for(lambda: len(mx_sink.messages()) >= 2, 20, "MX deliveries")
    got = b"".join(mx_sink.messages())
    c.check(b"Subject: via-mx" in got, "MX: lowest preference unreachable -> next MX gets the message")
    c.check(b"Subject: implicit" in got, "no MX: the domain's A record is used (implicit MX)")

    def dsn(subject):
        for m in dsn_sink.messages():
            if f"Subject: {subject}".encode() in m:
                return m
        return None

    nm = harness.wait_for(lambda: dsn("nullmx"), 20, "null MX DSN")
    c.check(b"Status: 5.1.10" in nm, "null MX: bounced with 5.1.10")
    nx = harness.wait_for(lambda: dsn("nxdomain"), 20, "NXDOMAIN DSN")
    c.check(b"Status: 5.1.2" in nx, "non-existent domain: bounced with 5.1.2")

    # Per-destination concurrency: 8 messages to a slow next hop, never more than 2 connections.
    for i in range(8):
        assert b"250 2.0.0 Ok: queued" in send(gw.port, f"r{i}@slow.test", f"slow-{i}")
    peak = 0
    t0 = time.time()
    while len(slow_sink.messages()) < 8 and time.time() - t0 < 30:
        out = subprocess.run(["ss", "-Htn", "state", "established", f"( dport = :{slow_sink.port} )"],
                             capture_output=True, text=True).stdout
        peak = max(peak, len([l for l in out.splitlines() if l.strip()]))
        time.sleep(0.05)
    c.check(len(slow_sink.messages()) == 8, f"all 8 messages reached the slow next hop ({time.time()-t0:.1f}s)")
    c.check(1 <= peak <= 2, f"never more than 2 connections to one destination (peak {peak})")

    # Thousands of concurrent connections.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    want = min(3000, hard - 200)
    socks = []
    for _ in range(want):
        s = socket.socket()
        s.setblocking(True)
        s.settimeout(10)
        s.connect(("127.0.0.1", gw.port))
        socks.append(s)
    greeted = 0
    for s in socks:
        try:
            if s.recv(100).startswith(b"220 "):
                greeted += 1
        except OSError:
            pass
    c.check(greeted == want, f"{want} concurrent connections each got a 220 greeting ({greeted})")
    t0 = time.time()
    ok = b"250 2.0.0 Ok: queued" in send(gw.port, "bob@partner.test", "while-busy")
    c.check(ok and time.time() - t0 < 2.0, f"a transaction next to {want} idle connections takes {time.time()-t0:.2f}s")
    for s in socks:
        s.close()
    c.check(gw.proc.poll() is None, "mailseald still running")
    c.check(gw.stop() == 0, "clean stop")
    c.finish()


if __name__ == "__main__":
    main()
