#!/usr/bin/env python3
"""Issue #17: the S/MIME gateway and its management API on the DPDK back end.

The world of test_dpdk_e2e (a namespace behind a veth whose far end DPDK owns), with gateway
a (agency-a.test) on the DPDK back end, its keys in a SoftHSM token, and gateway b
(agency-b.test) on the kernel back end on the loopback as the independent peer that must read
what a seals (REQUIREMENTS.md §4; SM-8.2):

- Outbound: swaks in the namespace sends a secret to agency-b over the project's TCP; what
  leaves a for the next hop (smtp-sink in the namespace, again over the project's TCP) is
  enveloped, the secret nowhere in it; gateway b takes that copy, decrypts it with its token,
  verifies a's signature and delivers the secret marked smime=pass.
- Inbound: b seals a reply for agency-a; that copy is sent from the namespace to a over the
  project's TCP; a decrypts, verifies and delivers it in clear, marked smime=pass.
- Management: mailsealctl in the namespace reaches a's gRPC API (mutual TLS) through the
  exception path (the kernel's TCP on the TAP), and a wrong client certificate is refused.
"""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_control_api import control_pki, issue  # noqa: E402
from test_dpdk_e2e import GW_IP, DpdkGateway  # noqa: E402
from test_smime_gateways import make_pki, send, smime_conf  # noqa: E402


def as_smtp_data(dump):
    """A message as smtp-sink dumped it (its X- envelope lines first, LF line ends), as DATA."""
    lines = dump.split(b"\n")
    while lines and re.match(rb"X-(Client-Addr|Client-Proto|Helo-Args|Mail-Args|Rcpt-Args|Rcpt-Rejected):", lines[0]):
        lines.pop(0)
    while lines and lines[-1] == b"":
        lines.pop()
    return b"\r\n".join(lines)


def main():
    a = harness.args()
    c = harness.Checker("dpdk_smime")
    root = harness.tempdir(a.keep)
    ca_dir, [(da, env_a, pin_a), (db, env_b, pin_b)] = make_pki(
        root, a.keygen, [("gw-a", "agency-a.test"), ("gw-b", "agency-b.test")])
    m = control_pki(root, a.keygen, da, env_a, pin_a, ca_dir, ("admin-1",))
    issue(m, "server", "mgmt-ca", f"IP:{GW_IP}")   # the API is reached at the TAP's address
    os.makedirs(os.path.join(m, "rogue"))
    subprocess.run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout rogue-ca.key "
                   "-out rogue-ca.crt -subj /CN=rogue-ca -days 2", shell=True, cwd=m, check=True, capture_output=True)
    issue(os.path.join(m, "rogue"), "admin-1", "../rogue-ca")

    # Gateway b on the loopback: seals agency-a's mail to the sealed sink, delivers its own.
    sink_b = harness.Sink(root)
    sealed_for_a = harness.Sink(root)
    gb = harness.Mailseald(a.mailseald, root, relay_port=sink_b.port, name="b", local_domain="agency-b.test",
                           env=env_b, hostname="gw-b.test",
                           delivery_extra=f'routes {{ domain: "agency-a.test" next_hop: "127.0.0.1:{sealed_for_a.port}" }}',
                           extra=smime_conf("gw-b", db, pin_b, ca_dir,
                                            f'partners {{ domain: "agency-a.test" dca_cert_file: "{da}/dca.crt" }}'))
    gb.start()

    api_port = harness.free_port()
    control = (f'control {{ listen: "0.0.0.0:{api_port}" cert_file: "{m}/server.crt" key_file: "{m}/server.key" '
               f'client_ca_file: "{m}/mgmt-ca.crt" roles {{ common_name: "admin-1" role: "administrator" }} '
               f'audit {{ log_path: "{root}/audit.log" heads_path: "{root}/audit.heads" head_every: 5 '
               f'key_label: "audit" }} }}\n')
    # The appliance's pinning: poll lcore on the first CPU the machine allows, crypto workers on
    # the last (the same one when there is only one).
    cpus = sorted(os.sched_getaffinity(0))
    d = DpdkGateway(a, c, root, env=env_a, hostname="gw-a.test", dpdk_extra=f"cpus: {cpus[0]}",
                    extra=smime_conf("gw-a", da, pin_a, ca_dir,
                                     f'partners {{ domain: "agency-b.test" dca_cert_file: "{db}/dca.crt" }}') + control
                    + f"crypto_cpus: {cpus[-1]}\n")

    def threads_named(prefix):
        out = {}
        for tid in os.listdir(f"/proc/{d.gw.proc.pid}/task"):
            try:
                comm = open(f"/proc/{d.gw.proc.pid}/task/{tid}/comm").read().strip()
                status = open(f"/proc/{d.gw.proc.pid}/task/{tid}/status").read()
            except OSError:
                continue
            if comm.startswith(prefix):
                out[comm] = re.search(r"Cpus_allowed_list:\s*(\S+)", status).group(1)
        return out
    crypto_threads = harness.eventually(lambda: threads_named("crypto") or None, 20, "crypto workers")
    c.check(bool(crypto_threads) and all(v == str(cpus[-1]) for v in crypto_threads.values()),
            f"every crypto worker runs only on CPU {cpus[-1]} (crypto_cpus)", crypto_threads)
    poll_threads = threads_named("dpdk-poll")
    c.check(poll_threads == {"dpdk-poll0": str(cpus[0])}, f"the poll lcore runs only on CPU {cpus[0]} (io.dpdk.cpus)",
            poll_threads)
    for g, what in ((d.gw, "a"), (gb, "b")):
        harness.wait_for(lambda: "security module ready" in g.read_log() or (g.proc.poll() is not None), 20,
                         f"token of {what} opened")

    # ---- outbound: a seals on the DPDK back end, b reads it ------------------------------------
    secret = "The budget figure is 4,217,000 and must not leak."
    r = subprocess.run(["ip", "netns", "exec", d.ns, "swaks", "--server", f"{GW_IP}:{d.gw.port}", "--from",
                        "alice@agency-a.test", "--to", "bob@agency-b.test", "--h-Subject", "[IN-CONFIDENCE] out",
                        "--body", secret, "--timeout", "30"], capture_output=True, text=True, timeout=60)
    c.check(r.returncode == 0 and "250 2.0.0" in r.stdout, "a's DPDK listener accepts mail for the partner",
            r.stdout[-500:])

    def sealed_out():
        for name in os.listdir(d.sink_dir):
            data = open(os.path.join(d.sink_dir, name), "rb").read()
            if b"bob@agency-b.test" in data:
                return data
        return None
    out = harness.eventually(sealed_out, 60, "a's sealed copy at the next hop")
    c.check(out is not None and re.search(rb"smime-type=(auth)?[eE]nveloped-data", out) is not None
            and secret.encode() not in out,
            "what a sends over the project's TCP is enveloped, the secret nowhere in it",
            (out or b"")[:600] + d.gw.read_log()[-800:].encode())
    if out:
        reply = send(gb.port, "alice@agency-a.test", ["bob@agency-b.test"], as_smtp_data(out))
        c.check(b"250 2.0.0" in reply, "gateway b accepts a's sealed copy", reply[-300:])
    got = harness.eventually(lambda: next((mm for mm in sink_b.messages() if secret.encode() in mm), None), 60,
                             "b delivers the opened message")
    c.check(got is not None and b"Authentication-Results: gw-b.test; smime=pass" in got,
            "b decrypts it with its token, verifies a's signature and delivers the secret marked smime=pass",
            (got or b"")[:800] + gb.read_log()[-800:].encode())

    # ---- inbound: b seals, a opens on the DPDK back end -------------------------------------
    secret2 = b"Reply: the figure is confirmed, 4,217,000."
    reply = send(gb.port, "carol@agency-b.test", ["alice@agency-a.test"],
                 b"From: carol@agency-b.test\r\nTo: alice@agency-a.test\r\nSubject: [IN-CONFIDENCE] back\r\n\r\n"
                 + secret2 + b"\r\n")
    c.check(b"250 2.0.0" in reply, "b accepts the reply for agency-a", reply[-300:])
    sealed = harness.eventually(lambda: next(iter(sealed_for_a.messages()), None), 60, "b's sealed reply")
    c.check(sealed is not None and secret2 not in sealed, "b sealed the reply", (sealed or b"")[:400])
    if sealed:
        path = os.path.join(root, "sealed-for-a.eml")
        with open(path, "wb") as f:
            f.write(as_smtp_data(sealed) + b"\r\n")
        r = subprocess.run(["ip", "netns", "exec", d.ns, "swaks", "--server", f"{GW_IP}:{d.gw.port}", "--from",
                            "carol@agency-b.test", "--to", "alice@agency-a.test", "--data", f"@{path}",
                            "--timeout", "30"], capture_output=True, text=True, timeout=60)
        c.check(r.returncode == 0 and "250 2.0.0" in r.stdout, "a's DPDK listener accepts the sealed reply",
                r.stdout[-500:])

    def opened_in():
        for name in os.listdir(d.sink_dir):
            data = open(os.path.join(d.sink_dir, name), "rb").read()
            if secret2 in data:
                return data
        return None
    got = harness.eventually(opened_in, 60, "a delivers the opened reply")
    c.check(got is not None and b"Authentication-Results: gw-a.test; smime=pass" in got,
            "a decrypts it with its token, verifies b's signature and delivers it marked smime=pass",
            (got or b"")[:800] + d.gw.read_log()[-800:].encode())

    # ---- the management API through the exception path --------------------------------------
    harness.wait_for(lambda: "management API listening" in d.gw.read_log(), 15, "API up")

    def ctl(*args, base=m):
        return subprocess.run(["ip", "netns", "exec", d.ns, a.mailsealctl, "--server", f"{GW_IP}:{api_port}",
                               "--cert", f"{base}/admin-1.crt", "--key", f"{base}/admin-1.key", "--ca",
                               f"{m}/mgmt-ca.crt", *args], capture_output=True, text=True, timeout=60)
    r = ctl("queue", "counts")
    c.check(r.returncode == 0, "mailsealctl in the namespace reaches a's gRPC API through the exception path",
            r.stdout[-400:] + r.stderr[-400:])
    r = ctl("queue", "counts", base=os.path.join(m, "rogue"))
    c.check(r.returncode != 0, "a client certificate from another CA is refused there", r.stdout[-300:])

    c.check(d.stop() == 0, "clean stop", d.gw.read_log()[-1500:])
    gb.stop()

    # ---- the crypto jobs: rte_rings, and the message carried (ARCHITECTURE "crypto workers") ----
    log_a = d.gw.read_log()
    c.check(re.search(r"crypto: workers started workers=\d+ rings=rte_ring", log_a) is not None,
            "on the DPDK back end the crypto workers are fed by rte_rings", log_a[-1500:])
    c.check(re.search(r"crypto: workers started workers=\d+ rings=spsc", gb.read_log()) is not None,
            "on the kernel back end by the process's own rings (no EAL there)", gb.read_log()[-800:])
    jobs = re.findall(r"qmgr: stats .*crypto_jobs=(\d+) crypto_jobs_in_memory=(\d+)", log_a)
    c.check(bool(jobs) and int(jobs[-1][1]) >= 2 and int(jobs[-1][1]) <= int(jobs[-1][0]),
            "the seal and the open took their messages from memory, not from a second spool read",
            str(jobs))
    c.finish()


if __name__ == "__main__":
    main()
