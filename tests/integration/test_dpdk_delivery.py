#!/usr/bin/env python3
"""Issue #17: suites of the kernel back end, run on the DPDK one — authenticated delivery
(issue #16's TLS levels) and the crash rule (issue #2: nothing that got 250 is lost) — over the
project's TCP, with real Linux peers in the namespace.

TLS levels (as test_delivery_tls_verify, the next hops Postfix instances in the namespace,
reached by active opens on the stack, the TLS core running over its streams):
- mx.agency-b.test presents a certificate the next-hop CA issued for that name: at level
  verify the mail is delivered, and the delivery log says by which name it was verified;
- mx.agency-c.test presents a self-signed one (a man in the middle): at level verify it gets
  nothing, the mail is deferred 4.7.5 with the reason;
- agency-e.test goes to the namespace's smtp-sink, which offers no STARTTLS: at level encrypt
  nothing is sent in clear, 4.7.5;
- agency-f.test goes through the man in the middle at level encrypt: delivered (TLS, not
  authenticated), the Received line of that Postfix says TLS.

Crash: senders in the namespace send 400 messages while mailseald on the DPDK back end is
killed with SIGKILL and started again four times (EAL, the port and the TAP each time); every
message that got 250 arrives at the next hop after the last start (duplicates counted, none
lost).
"""
import os
import random
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_dpdk_e2e import GW_IP, NS_IP, DpdkGateway  # noqa: E402
from tlspeers import issue, make_ca, self_signed  # noqa: E402

N = 400
SENDER = r'''
import sys, threading, time
sys.path.insert(0, sys.argv[6])
from test_crash_kill9 import send_one   # the same transaction as issue #2's kill -9 test
gw, port, n, out, senders = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
lock = threading.Lock()
todo = list(range(n))
def worker():
    while True:
        with lock:
            if not todo:
                return
            i = todo.pop(0)
        if send_one(port, i, "plain.test", gw):
            with open(out, "a") as f:
                f.write(f"{i}\n")
            time.sleep(0.1)   # spread the messages over the kills
        else:
            with lock:
                todo.append(i)
            time.sleep(0.2)
ts = [threading.Thread(target=worker) for _ in range(senders)]
for t in ts:
    t.start()
for t in ts:
    t.join()
print("done")
'''


def tls_levels(a, c, root, d):
    pki = os.path.join(root, "pki")
    make_ca(pki, "Next-Hop-CA")
    issue(pki, "b", ["mx.agency-b.test"])
    self_signed(pki, "mitm", ["mx.agency-c.test"])
    hops = {}
    for name in ("b", "mitm"):
        hops[name] = harness.Postfix(root, d.sink_port, host=NS_IP, relay_host=NS_IP, netns=d.ns, extra_main=(
            f"smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {pki}/{name}.crt\n"
            f"smtpd_tls_key_file = {pki}/{name}.key\nsmtpd_tls_received_header = yes\n"
            f"mynetworks = 127.0.0.0/8 {NS_IP}/32 {GW_IP}/32\n"))
    routes = (f'routes {{ domain: "agency-b.test" next_hop: "mx.agency-b.test:{hops["b"].port}" }} '
              f'routes {{ domain: "agency-c.test" next_hop: "mx.agency-c.test:{hops["mitm"].port}" }} '
              f'routes {{ domain: "agency-f.test" next_hop: "mx.agency-c.test:{hops["mitm"].port}" }} '
              f'routes {{ domain: "agency-e.test" next_hop: "{NS_IP}:{d.sink_port}" }} '
              f'dns_local_data: "mx.agency-b.test. A {NS_IP}" dns_local_data: "mx.agency-c.test. A {NS_IP}" '
              'tls_policies { domain: "agency-b.test" level: "verify" } '
              'tls_policies { domain: "agency-c.test" level: "verify" } '
              'tls_policies { domain: "agency-e.test" level: "encrypt" } '
              'tls_policies { domain: "agency-f.test" level: "encrypt" } '
              f'tls_ca_file: "{pki}/ca.crt"')
    # The routes name the Postfix instances in the namespace, which exists only with the
    # gateway: add them to its configuration and start it again.
    c.check(d.stop() == 0, "first start and clean stop")
    relay = f'relay_host: "{NS_IP}:{d.sink_port}"'
    with open(d.gw.config) as f:
        text = f.read()
    with open(d.gw.config, "w") as f:
        f.write(text.replace(relay, f"{relay} {routes}"))
    d.launch(a.mailseald)
    c.check(d.gw.proc.poll() is None, "mailseald runs with the TLS policies", d.gw.read_log()[-1500:])
    for dom in ("b", "c", "e", "f"):
        r = d.swaks(f"to-{dom}", to=f"user@agency-{dom}.test")
        c.check(r.returncode == 0 and "250 2.0.0" in r.stdout, f"accepted for agency-{dom}.test over the stack",
                r.stdout[-400:])

    def arrived(subject):
        return d.delivered().get(subject)
    got_b = harness.eventually(lambda: arrived("to-b"), 60, "b delivered")
    c.check(got_b is not None and re.search(rb"\(using TLSv1\.[23]", got_b) is not None,
            "verify: the hop with the CA's certificate for its name gets the mail, over TLS on the project's TCP",
            (got_b or b"")[:800])
    log = d.gw.read_log()
    c.check(re.search(r"delivered qid=\S+ to=user@agency-b.test .*verified as mx.agency-b.test", log) is not None,
            "the delivery log says the hop was verified and by which name",
            "\n".join(l for l in log.splitlines() if "agency-b" in l)[-400:])
    got_f = harness.eventually(lambda: arrived("to-f"), 60, "f delivered")
    c.check(got_f is not None and re.search(rb"\(using TLSv1\.[23]", got_f) is not None,
            "encrypt: TLS to an unauthenticated peer is enough at that level", (got_f or b"")[:600])
    c.check(harness.eventually(lambda: re.search(r"to=user@agency-c.test .*4\.7\.5 TLS level verify: mx.agency-c.test "
                                                 r".*not authenticated", d.gw.read_log()), 30, "c refused"),
            "verify: the self-signed man in the middle gets nothing (4.7.5, not authenticated)",
            "\n".join(l for l in d.gw.read_log().splitlines() if "agency-c" in l)[-600:])
    c.check(harness.eventually(lambda: re.search(r"to=user@agency-e.test .*4\.7\.5", d.gw.read_log()), 30, "e refused"),
            "encrypt: a next hop without STARTTLS gets nothing in clear (4.7.5)",
            "\n".join(l for l in d.gw.read_log().splitlines() if "agency-e" in l)[-600:])
    c.check(arrived("to-c") is None and arrived("to-e") is None, "neither refused message reached a next hop")
    for pf in hops.values():
        pf.stop()


def crash(a, c, root, d):
    out = os.path.join(root, "acked")
    sender = os.path.join(root, "sender.py")
    with open(sender, "w") as f:
        f.write(SENDER)
    proc = subprocess.Popen(["ip", "netns", "exec", d.ns, "python3", sender, GW_IP, str(d.gw.port), str(N), out, "4",
                             os.path.dirname(os.path.abspath(__file__))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    harness._cleanups.append(lambda: proc.poll() is None and proc.kill())

    def acked():
        try:
            with open(out) as f:
                return {int(x) for x in f.read().split()}
        except FileNotFoundError:
            return set()
    rnd = random.Random(17)
    kills = 0
    at_kill = []
    for _ in range(4):
        harness.wait_for(lambda: len(acked()) > 0 or proc.poll() is not None, 60, "mail flowing")
        time.sleep(rnd.uniform(0.8, 2.0))
        if proc.poll() is not None:
            break
        at_kill.append(len(acked()))
        d.gw.proc.kill()
        d.gw.proc.wait()
        kills += 1
        d.launch(a.mailseald)
        c.check(d.gw.proc.poll() is None, f"mailseald on DPDK starts again after kill -9 #{kills}",
                d.gw.read_log()[-1500:])
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    ok = acked()
    c.check(len(ok) == N, f"all {N} messages eventually got 250 across {kills} kill -9s ({len(ok)})",
            stdout[-300:] + stderr[-600:])
    c.check(kills >= 3 and at_kill[-1] < N, f"the daemon was killed while mail flowed ({kills} times, "
            f"after {at_kill} of {N} acknowledged)")

    def delivered():
        got = {}
        for name in os.listdir(d.sink_dir):
            with open(os.path.join(d.sink_dir, name), "rb") as f:
                m = re.search(rb"Message-ID: <kill-(\d+)@", f.read())
            if m:
                got[int(m.group(1))] = got.get(int(m.group(1)), 0) + 1
        return got
    harness.eventually(lambda: ok <= set(delivered()) or None, 180, "every acknowledged message delivered")
    got = delivered()
    lost = sorted(ok - set(got))
    c.check(not lost, "nothing that got 250 is lost across the crashes (DPDK back end)", lost[:20])
    dups = sum(n - 1 for n in got.values() if n > 1)
    print(f"duplicates (crash between a 250 and its record, the usual MTA window): {dups}")
    c.check(d.stop() == 0, "clean stop after the last start", d.gw.read_log()[-1000:])


def main():
    a = harness.args()
    c = harness.Checker("dpdk_delivery")
    root = harness.tempdir(a.keep)
    d = DpdkGateway(a, c, root)
    tls_levels(a, c, root, d)
    crash(a, c, root, d)
    c.finish()


if __name__ == "__main__":
    main()
