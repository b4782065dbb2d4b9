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
- The exception path keeps working after all of it: a kernel TCP service on the TAP's address
  is reached from the namespace, and mailseald's own DNS lookups (the kernel's UDP, out of the
  TAP and the port) get the MX of a domain from unbound in the namespace, so mail for it is
  delivered to that MX.
"""
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
