#!/usr/bin/env python3
"""Issue #17: hostile load against mailseald on the DPDK back end (setup as test_dpdk_e2e).

- 100,000 SYNs from 240 spoofed addresses of the namespace's network (nobody answers for
  them: every SYN-ACK waits for ARP that never comes), with a SYN budget of 256: the stack
  answers beyond the budget with SYN cookies and keeps no state; mailseald's memory grows by
  less than 64 MiB; mail from a real client is accepted and delivered during the flood's
  aftermath.
- 300 idle connections (a slowloris that sends nothing after connecting) hold flows but not
  the service: a real client still gets its mail through.
- 40 clients that shrink their receive window to nothing (the smallest SO_RCVBUF, never
  reading) and pipeline 4 MB of NOOPs each inside a transaction, so that every reply must wait
  in mailseald: its memory grows by less than 2 MiB per client (the server stops reading a
  client whose replies do not leave; what a flow may hold is bounded), and a real client's
  mail is accepted beside them.
- 20 raw clients that offer a window of 4 bytes (no window scaling) and acknowledge each
  segment as it comes: the stack sends them the greeting and the EHLO reply in segments of at
  most 4 bytes (nothing beyond the offered window), their SMTP dialogue completes, and a real
  client's mail is accepted meanwhile.
- A raw client that sends bytes of its stream again, different this time: the flow is reset
  and the reset is logged with the peer (at most 10 such lines a second per lcore).
- The exception path keeps working after all of it: a kernel TCP service on the TAP's address
  is reached from the namespace, and mailseald's own DNS lookups (the kernel's UDP, out of the
  TAP and the port) get the MX of a domain from unbound in the namespace, so mail for it is
  delivered to that MX.
"""
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_dpdk_e2e import GW_IP, NS_IP, DpdkGateway, sh  # noqa: E402

FLOOD = 100000


def syn_flood(ns, target, port, count, sources):
    """`count` SYNs to target:port from spoofed source addresses, sent in the namespace."""
    code = f'''
import random, socket, struct
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
dst = socket.inet_aton("{target}")
rnd = random.Random(5)
srcs = [socket.inet_aton(a) for a in {sources!r}]
for i in range({count}):
    src = srcs[i % len(srcs)]
    tcp = struct.pack("!HHIIBBHHH", 1024 + rnd.randrange(60000), {port}, rnd.getrandbits(32), 0, 5 << 4, 0x02,
                      65535, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", csum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xffff, 0, 64, 6, 0, src, dst)
    s.sendto(ip + tcp, ("{target}", 0))
'''
    return subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", code], capture_output=True, text=True,
                          timeout=900)


# RAW_TCP: what the raw clients below share — argv (gateway, port, our address), the checksum,
# a sending and a receiving raw socket, and send(sport, seq, ack, flags, payload, opts, window).
RAW_TCP = r'''
import json, select, socket, struct, sys, time
gw, port, me = sys.argv[1], int(sys.argv[2]), socket.inet_aton(sys.argv[3])
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
dst = socket.inet_aton(gw)
def send_from(sport, seq, ack, flags, payload=b"", opts=b"", window=65535):
    off = (20 + len(opts)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, port, seq & 0xffffffff, ack & 0xffffffff, off << 4, flags, window, 0, 0)
    tcp += opts + payload
    c = csum(me + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
    tx.sendto(tcp[:16] + struct.pack("!H", c) + tcp[18:], (gw, 0))
'''

EVADE = RAW_TCP + r'''
sport = 40100
def send(seq, ack, flags, payload=b""):
    send_from(sport, seq, ack, flags, payload)
snd, rcv, got, phase = 5001, None, b"", "syn"
send(5000, 0, 0x02)
deadline = time.time() + 30
while time.time() < deadline:
    r, _, _ = select.select([rx], [], [], 0.5)
    if not r:
        continue
    pkt = rx.recv(65535)
    if pkt[12:16] != dst:
        continue
    t = pkt[(pkt[0] & 15) * 4:]
    sp, dp, seq, ack, offb, flags = struct.unpack("!HHIIBB", t[:14])
    if sp != port or dp != sport:
        continue
    if flags & 0x04:
        print("reset after", phase, flush=True)
        sys.exit(0)
    data = t[(offb >> 4) * 4:]
    if phase == "syn" and flags & 0x12 == 0x12:
        rcv, phase = seq + 1, "banner"
        send(snd, rcv, 0x10)
        continue
    if data and seq == rcv:
        got += data
        rcv += len(data)
        send(snd, rcv, 0x10)
    if phase == "banner" and got.endswith(b"\r\n"):
        phase = "overlap"
        send(snd, rcv, 0x18, b"EHLO aaaa")          # bytes 0..8 of our stream
        time.sleep(0.2)
        send(snd + 5, rcv, 0x18, b"bbbb.test\r\n")  # 5..8 again, but different
print("no reset after", phase, flush=True)
'''

TINY = RAW_TCP + r'''
n, wnd = int(sys.argv[4]), int(sys.argv[5])
def send(sport, seq, ack, flags, payload=b"", opts=b""):
    send_from(sport, seq, ack, flags, payload, opts, wnd)
clients = {}
for i in range(n):
    sport = 40000 + i
    clients[sport] = {"isn": 1000 * i, "snd": 1000 * i + 1, "rcv": None, "got": b"", "max": 0, "segs": 0,
                      "stage": "syn", "over": 0}
    send(sport, 1000 * i, 0, 0x02, opts=struct.pack("!BBH", 2, 4, 536))
deadline = time.time() + 60
while time.time() < deadline and any(c["stage"] != "done" for c in clients.values()):
    r, _, _ = select.select([rx], [], [], 0.5)
    if not r:
        for sport, c in clients.items():   # nudge: our last ACK may be lost
            if c["rcv"] is not None and c["stage"] != "done":
                send(sport, c["snd"], c["rcv"], 0x10)
        continue
    pkt = rx.recv(65535)
    ihl = (pkt[0] & 15) * 4
    if pkt[12:16] != dst:
        continue
    t = pkt[ihl:]
    sp, dp, seq, ack, offb, flags, win = struct.unpack("!HHIIBBH", t[:16])
    c = clients.get(dp)
    if c is None or sp != port:
        continue
    data = t[(offb >> 4) * 4:]
    if flags & 0x04:
        c["stage"] = "reset"
        continue
    if c["stage"] == "syn" and flags & 0x12 == 0x12:
        c["rcv"] = seq + 1
        c["stage"] = "banner"
        send(dp, c["snd"], c["rcv"], 0x10)
        continue
    if not data or c["rcv"] is None:
        continue
    c["segs"] += 1
    c["max"] = max(c["max"], len(data))
    if len(data) > wnd:
        c["over"] += 1
    if seq == c["rcv"] & 0xffffffff:
        c["got"] += data
        c["rcv"] += len(data)
    send(dp, c["snd"], c["rcv"], 0x10)
    if c["stage"] == "banner" and c["got"].endswith(b"\r\n") and c["got"].startswith(b"220"):
        c["stage"] = "ehlo"
        c["mark"] = len(c["got"])
        send(dp, c["snd"], c["rcv"], 0x18, b"EHLO tiny.test\r\n")
        c["snd"] += 16
    elif c["stage"] == "ehlo" and b"\r\n250 " in c["got"][c["mark"] - 2:] and c["got"].endswith(b"\r\n"):
        c["stage"] = "done"
print(json.dumps({"done": sum(c["stage"] == "done" for c in clients.values()),
                  "max_segment": max(c["max"] for c in clients.values()),
                  "over_window": sum(c["over"] for c in clients.values()),
                  "segments": sum(c["segs"] for c in clients.values()),
                  "bytes": sum(len(c["got"]) for c in clients.values()),
                  "stages": sorted({c["stage"] for c in clients.values()})}))
'''


def tiny_window(c, d, root):
    """Few-byte-window clients: raw TCP in the namespace (the namespace's kernel, which has no
    socket for these flows, is kept from answering them with RST)."""
    sh(f"ip netns exec {d.ns} nft add table ip tiny")
    sh(f"ip netns exec {d.ns} nft 'add chain ip tiny out {{ type filter hook output priority 0; }}'")
    sh(f"ip netns exec {d.ns} nft add rule ip tiny out tcp sport 40000-40199 tcp flags rst drop")
    tiny_script = os.path.join(root, "tiny.py")
    with open(tiny_script, "w") as f:
        f.write(TINY)
    few = subprocess.Popen(["ip", "netns", "exec", d.ns, "python3", tiny_script, GW_IP, str(d.gw.port), NS_IP, "20", "4"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    harness._cleanups.append(lambda: few.poll() is None and few.kill())
    r = d.swaks("beside-tiny-window", timeout=120)
    c.check(r.returncode == 0 and "250 2.0.0" in r.stdout, "a real client's mail is accepted beside 20 clients "
            "with a 4-byte window", r.stdout[-600:])
    out, err = few.communicate(timeout=120)
    res = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    print("tiny-window clients:", res)
    c.check(res.get("done") == 20, "all 20 four-byte-window clients get the greeting and the EHLO reply",
            str(res) + err[-600:])
    c.check(res.get("over_window") == 0 and 0 < res.get("max_segment", 0) <= 4,
            "the stack never sends beyond a 4-byte window (segments of at most 4 bytes)", res)
    c.check(res.get("segments", 0) * 4 >= res.get("bytes", 1), "every reply went 4 bytes at a time", res)
    c.check(harness.eventually(lambda: "beside-tiny-window" in d.delivered(), 60, "delivered"),
            "the message sent beside them is delivered", sorted(d.delivered()))
    # A client that sends bytes again, different this time (an IDS evasion: two readers of the
    # stream must never disagree): the flow is reset and the reset logged with the peer.
    evade = os.path.join(root, "evade.py")
    with open(evade, "w") as f:
        f.write(EVADE)
    r = subprocess.run(["ip", "netns", "exec", d.ns, "python3", evade, GW_IP, str(d.gw.port), NS_IP],
                       capture_output=True, text=True, timeout=60)
    c.check("reset after overlap" in r.stdout, "overlapping bytes that differ reset the flow", r.stdout + r.stderr[-400:])
    c.check(harness.eventually(lambda: re.search(rf"flow reset: an evasion attempt peer={NS_IP}:40100 "
                                                 r"reason=\"overlapping bytes differ", d.gw.read_log()), 20, "logged"),
            "the reset is logged with the peer and the reason",
            "\n".join(l for l in d.gw.read_log().splitlines() if "reset" in l)[-600:])


def main():
    a = harness.args()
    c = harness.Checker("dpdk_hostile")
    root = harness.tempdir(a.keep)
    dns_port = 5300 + random.randrange(500)
    d = DpdkGateway(a, c, root, dpdk_extra="syn_budget: 256", dns=f"{NS_IP}@{dns_port}")
    r = d.swaks("before")
    c.check(r.returncode == 0, "a message before the flood", r.stdout[-400:])
    before = harness.rss_kib(d.gw.proc.pid)

    sources = [f"10.77.0.{i}" for i in range(10, 250)]
    r = syn_flood(d.ns, GW_IP, d.gw.port, FLOOD, sources)
    c.check(r.returncode == 0, f"{FLOOD} spoofed SYNs sent", r.stderr[-400:])
    r = d.swaks("after-flood", timeout=120)
    c.check(r.returncode == 0 and "250 2.0.0" in r.stdout, "a real client's mail is accepted right after the flood",
            r.stdout[-600:])
    grown = (harness.rss_kib(d.gw.proc.pid) - before) // 1024
    c.check(grown < 64, "mailseald's memory grew by less than 64 MiB", f"{grown} MiB")

    # Slowloris: 300 connections that say nothing.
    code = (f"import socket, time\nsocks = []\nfor i in range(300):\n    s = socket.socket()\n"
            f"    s.settimeout(10)\n    s.connect(('{GW_IP}', {d.gw.port}))\n    socks.append(s)\n"
            f"print('held', len(socks), flush=True)\ntime.sleep(60)\n")
    slow = subprocess.Popen(["ip", "netns", "exec", d.ns, "python3", "-c", code], stdout=subprocess.PIPE, text=True)
    harness._cleanups.append(lambda: slow.poll() is None and slow.kill())
    held = slow.stdout.readline().strip()
    c.check(held == "held 300", "300 idle connections are held open", held)
    r = d.swaks("beside-slowloris", timeout=120)
    c.check(r.returncode == 0 and "250 2.0.0" in r.stdout, "a real client's mail is accepted beside them",
            r.stdout[-600:])
    slow.kill()
    c.check(harness.eventually(lambda: all(s in d.delivered() for s in ("before", "after-flood", "beside-slowloris")),
                               60, "delivered"), "every real message is delivered", sorted(d.delivered()))

    # Zero-window clients: inside a transaction (where NOOPs are not limited) they pipeline NOOPs,
    # each one a reply, and never read the replies.
    before = harness.rss_kib(d.gw.proc.pid)
    code = (f"import socket, threading, time\nsocks = []\nsent = [0]\n"
            f"def push(s):\n    try:\n        s.sendall(b'EHLO zero.test\\r\\nMAIL FROM:<z@zero.test>\\r\\n')\n"
            f"        for _ in range(128):\n            s.sendall(b'NOOP\\r\\n' * 5000)\n"
            f"            sent[0] += 30000\n    except OSError:\n        pass\n"
            f"for i in range(40):\n    s = socket.socket()\n"
            f"    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)\n    s.settimeout(20)\n"
            f"    s.connect(('{GW_IP}', {d.gw.port}))\n    socks.append(s)\n"
            f"    threading.Thread(target=push, args=(s,), daemon=True).start()\n"
            f"time.sleep(15)\nprint('pushed', sent[0], flush=True)\ntime.sleep(60)\n")
    tiny = subprocess.Popen(["ip", "netns", "exec", d.ns, "python3", "-c", code], stdout=subprocess.PIPE, text=True)
    harness._cleanups.append(lambda: tiny.poll() is None and tiny.kill())
    pushed = tiny.stdout.readline().strip()
    c.check(pushed.startswith("pushed ") and int(pushed.split()[1]) > 0, "40 zero-window clients pipeline commands",
            pushed)
    r = d.swaks("beside-zero-window", timeout=120)
    c.check(r.returncode == 0 and "250 2.0.0" in r.stdout, "a real client's mail is accepted beside them",
            r.stdout[-600:])
    grown = (harness.rss_kib(d.gw.proc.pid) - before) // 1024
    print(f"zero-window clients: {pushed} bytes in 15 s, mailseald grew {grown} MiB")
    # Each flow may hold its TCP receive and send buffers and the stream's two buffers (256 KiB
    # each), the SMTP server's reply backlog (64 KiB and a bite) and 64 KiB of history: 1.1 MiB.
    # Unbounded, 40 clients' 4 MB of NOOPs would be 380 MB of replies.
    c.check(grown < 40 * 2, "mailseald's memory grew by less than 2 MiB per zero-window client",
            f"{grown} MiB; pushed {pushed}")
    tiny.kill()
    c.check(harness.eventually(lambda: "beside-zero-window" in d.delivered(), 60, "delivered"),
            "the message sent beside them is delivered", sorted(d.delivered()))

    tiny_window(c, d, root)

    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((GW_IP, 7778))
    srv.listen(1)
    threading.Thread(target=lambda: (lambda s: (s[0].sendall(b"still here\n"), s[0].close()))(srv.accept()),
                     daemon=True).start()
    r = sh(f"ip netns exec {d.ns} python3 -c \"import socket; s=socket.create_connection(('{GW_IP}', 7778), timeout=10); "
           f"print(s.recv(100).decode())\"", check=False)
    c.check("still here" in r.stdout, "the exception path still works", r.stdout + r.stderr[-300:])
    srv.close()

    # DNS through the exception path: unbound and an MX host (smtp-sink on port 25) in the
    # namespace; mail for mx.example is delivered to the MX that mailseald's lookup found.
    udir = os.path.join(root, "unbound")
    os.makedirs(udir)
    with open(os.path.join(udir, "unbound.conf"), "w") as f:
        f.write(f"""server:
  interface: {NS_IP}
  port: {dns_port}
  do-ip6: no
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{udir}"
  pidfile: ""
  use-syslog: no
  verbosity: 1
  access-control: 0.0.0.0/0 allow
  module-config: "iterator"
  local-zone: "mx.example." static
  local-data: "mx.example. IN MX 10 mail.mx.example."
  local-data: "mail.mx.example. IN A {NS_IP}"
""")
    ulog = open(os.path.join(udir, "unbound.log"), "ab")
    unbound = subprocess.Popen(["ip", "netns", "exec", d.ns, "unbound", "-d", "-c", os.path.join(udir, "unbound.conf")],
                               stdout=ulog, stderr=ulog)
    harness._cleanups.append(lambda: unbound.poll() is None and unbound.kill())
    mx_dir = os.path.join(root, "mx-sink")
    os.makedirs(mx_dir)
    sh(f"chown postfix {mx_dir}")
    mx = subprocess.Popen(["ip", "netns", "exec", d.ns, "smtp-sink", "-u", "postfix", "-d", f"{mx_dir}/%M.",
                           f"{NS_IP}:25", "16"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    harness._cleanups.append(lambda: mx.poll() is None and mx.kill())
    harness.wait_for(lambda: "start of service" in open(os.path.join(udir, "unbound.log"), errors="replace").read(),
                     15, "unbound serving")
    r = d.swaks("by-mx", to="carol@mx.example")
    c.check(r.returncode == 0 and "250 2.0.0" in r.stdout, "mail for a domain reached by MX is accepted", r.stdout[-400:])

    def by_mx():
        for name in os.listdir(mx_dir):
            if b"Subject: by-mx" in open(os.path.join(mx_dir, name), "rb").read():
                return True
        return False
    c.check(harness.eventually(by_mx, 60, "delivered to the MX"),
            "mailseald's MX lookup went through the exception path and the mail reached the MX",
            d.gw.read_log()[-1200:])
    c.check(d.stop() == 0, "clean stop", d.gw.read_log()[-1500:])
    m = re.search(r"dpdk: stopped .*half_open=(\d+) syn_cookies_sent=(\d+)", d.gw.read_log())
    c.check(m is not None and int(m.group(1)) <= 256 and int(m.group(2)) >= FLOOD // 2,
            "the stack kept at most 256 half-open flows and answered the rest of the flood with SYN cookies",
            m.group(0) if m else d.gw.read_log()[-800:])
    c.finish()


if __name__ == "__main__":
    main()
