#!/usr/bin/env python3
"""Issue #13 fault matrix: DNS is dead, failing, then slow, then well. A resolver that drops
queries, answers SERVFAIL or answers seconds late on demand is a fault no real resolver gives
on demand, so the forwarder here is a small scripted DNS server (a fake for the fault only;
libunbound inside mailseald is the real client).

Asserted, for mail that needs an MX lookup (flaky.example.net MX 10 mx.flaky.example.net,
A 127.0.0.27, a real smtp-sink on port 25):
- while DNS drops queries or answers SERVFAIL the message is deferred with the DNS failure as
  the reason — never bounced, no DSN;
- while DNS is slow, mail that needs no lookup (a route) is still accepted and delivered at
  once: a lookup never blocks the SMTP server or the other deliveries;
- once DNS answers, every acknowledged message is delivered, exactly the acknowledged ones,
  and the queue is empty.
"""
import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


class FlakyDns:
    """A UDP DNS server with a mode the test sets: "drop" (no answer), "servfail", "slow"
    (the right answer after `delay` seconds) or "ok". It knows one MX and its A record."""

    def __init__(self, zone):
        self.zone = zone   # {(name, qtype): [rdata bytes]}
        self.mode = "drop"
        self.delay = 4.0
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def answer(self, q):
        qid, flags, qd = struct.unpack("!HHH", q[:6])
        i, labels = 12, []
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode().lower())
            i += 1 + q[i]
        qtype, _ = struct.unpack("!HH", q[i + 1:i + 5])
        question = q[12:i + 5]
        name = ".".join(labels)
        rd = flags & 0x0100
        if self.mode == "servfail":
            return struct.pack("!HHHHHH", qid, 0x8080 | rd | 2, 1, 0, 0, 0) + question
        rrs = self.zone.get((name, qtype), [])
        known = any(n == name for n, _ in self.zone)
        rcode = 0 if known else 3
        out = struct.pack("!HHHHHH", qid, 0x8480 | rd | rcode, 1, len(rrs), 0, 0) + question
        for rdata in rrs:
            out += b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 60, len(rdata)) + rdata
        return out

    def serve(self):
        while True:
            q, peer = self.sock.recvfrom(4096)
            self.queries += 1
            if len(q) < 17 or self.mode == "drop":
                continue
            reply = self.answer(q)
            if self.mode == "slow":
                threading.Timer(self.delay, lambda r=reply, p=peer: self.sock.sendto(r, p)).start()
            else:
                self.sock.sendto(reply, peer)



def main():
    a = harness.args()
    c = harness.Checker("faults_dns")
    root = harness.tempdir(a.keep)
    mx_sink = harness.Sink(root, port=25, host="127.0.0.27")
    route_sink = harness.Sink(root)
    dsn_sink = harness.Sink(root)
    dns = FlakyDns({
        ("flaky.example.net", 15): [struct.pack("!H", 10) + encode_name("mx.flaky.example.net")],
        ("mx.flaky.example.net", 1): [socket.inet_aton("127.0.0.27")],
    })
    gw = harness.Mailseald(a.mailseald, root, delivery_extra="\n".join([
        f'dns_forwarder: "127.0.0.1@{dns.port}"',
        f'routes {{ domain: "routed.example.net" next_hop: "127.0.0.1:{route_sink.port}" }}',
        f'routes {{ domain: "agency-a.test" next_hop: "127.0.0.1:{dsn_sink.port}" }}'])).start()
    c.check(b"250 2.0.0" in harness.send_classified(gw.port, "CLASSIFIED-DNS-PROBE"), "the classified probe is accepted")

    acked = set()
    # Phase 1: DNS drops every query.
    for i in range(3):
        if b"250 2.0.0" in harness.send_one(gw.port, f"r{i}@flaky.example.net", f"dns-{i}"):
            acked.add(f"dns-{i}")
    c.check(len(acked) == 3, "mail for a domain whose DNS is dead is accepted (the lookup is the queue's business)")
    harness.wait_for(lambda: dns.queries > 0, 20, "a lookup was tried")
    deferred = harness.eventually(lambda: len(gw.queue_files("deferred")) >= 3 or None, 60, "deferred on dead DNS")
    c.check(deferred is not None, "dead DNS: the messages are deferred", gw.read_log()[-800:])
    # Phase 2: SERVFAIL.
    dns.mode = "servfail"
    q0 = dns.queries
    harness.eventually(lambda: dns.queries > q0 + 2 or None, 30, "lookups retried on SERVFAIL")
    c.check(dns.queries > q0, "deferred mail is retried while DNS fails")
    log = gw.read_log()
    c.check("451 4.4.3 MX lookup for flaky.example.net: DNS failed temporarily" in log,
            "the deferral says DNS is why, in words (4.4.3)", log[-1200:])
    c.check(not [m for m in dsn_sink.messages() if b"dns-" in m],
            "a failing DNS never bounces mail (no DSN)", str(len(dsn_sink.messages())))
    c.check(not mx_sink.messages(), "nothing delivered while DNS fails")
    # Phase 3: slow DNS — mail that needs no lookup is not held up by the ones that wait.
    dns.mode = "slow"
    for i in range(3, 5):
        if b"250 2.0.0" in harness.send_one(gw.port, f"r{i}@flaky.example.net", f"dns-{i}"):
            acked.add(f"dns-{i}")
    t0 = time.time()
    out = harness.send_one(gw.port, "x@routed.example.net", "routed-while-slow")
    c.check(b"250 2.0.0" in out, "while DNS is slow, mail is accepted at once", out[-200:].decode(errors="replace"))
    got = harness.eventually(lambda: [m for m in route_sink.messages() if b"routed-while-slow" in m] or None, 20,
                             "routed mail delivered")
    c.check(got is not None and time.time() - t0 < dns.delay + 10,
            "a slow lookup blocks neither the SMTP server nor other deliveries", f"{time.time() - t0:.1f}s")
    # Phase 4: DNS well again: everything acknowledged arrives, once each.
    dns.mode = "ok"

    def delivered():
        subj = [line.strip()[len(b"Subject: "):].decode() for m in mx_sink.messages() for line in m.split(b"\n")
                if line.startswith(b"Subject: dns-")]
        return subj if set(subj) >= acked else None
    subj = harness.eventually(delivered, 90, "every acknowledged message delivered")
    c.check(subj is not None, "once DNS answers, every acknowledged message is delivered", f"{len(acked)} acknowledged")
    c.check(subj is not None and len(subj) == len(set(subj)), "none twice (the faults ended no session mid-DATA)",
            str(subj))
    c.check(harness.eventually(lambda: gw.drained() or None, 30, "queue empty") is not None, "the queue is empty")
    c.check(not [m for m in dsn_sink.messages() if b"dns-" in m], "and no DSN was ever sent for them")
    harness.never_in_clear(c, gw, [mx_sink, route_sink, dsn_sink], "CLASSIFIED-DNS-PROBE")
    gw.stop()
    c.finish()


if __name__ == "__main__":
    main()
