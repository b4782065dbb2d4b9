#!/usr/bin/env python3
"""Issue #17: mailseald on the DPDK back end, end to end against real Linux TCP.

A network namespace holds the outside world: swaks (the sending MTA) and smtp-sink (the next
hop) at 10.77.0.1 on one end of a veth pair. The other end belongs to DPDK (net_af_packet);
mailseald's own TCP serves SMTP at 10.77.0.2 and delivers over the same stack. A TAP
exception port gives the kernel everything else. mailseald runs two lcores on two queues of the
port (net_af_packet qpairs=2, filled by the kernel's flow hash), so frames are steered between
them in software (steer.h) throughout.

- Mail sent by swaks in the namespace is accepted over the project's TCP and delivered to the
  sink in the namespace over it (an active open): every message, byte-identical bodies,
  including a 2 MB one (windows, segmentation, reassembly).
- STARTTLS sessions (swaks --tls) over the project's TCP deliver their mail (ESMTPS).
- ICMP echo to 10.77.0.2 is answered by the stack.
- The exception path: a TCP service of the kernel's on 10.77.0.2 (the TAP's address) is
  reachable from the namespace through the DPDK port.
- With 5 % of the namespace's packets dropped (nftables netdev egress), 30 more messages all
  arrive intact (retransmission, fast retransmit, reassembly).
- Postfix in the namespace as the sending MTA: 20 messages relayed by it to mailseald over the
  project's TCP arrive at the next hop (a real MTA's pipelining, its connection reuse and QUIT).
"""
import json
import os
import pwd
import random
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

NS_IP, GW_IP = "10.77.0.1", "10.77.0.2"


def sh(cmd, check=True):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{cmd}: {r.stdout}{r.stderr}")
    return r


class DpdkGateway:
    """mailseald on the DPDK back end with its world: a namespace holding the outside at
    10.77.0.1 (and smtp-sink there as the next hop) on one end of a veth pair, DPDK owning the
    other end (net_af_packet) and a TAP exception port whose kernel side gets GW_IP. With
    kernel=True the same world with the kernel back end instead (GW_IP on the veth's root end),
    for comparisons (tools/bench/dpdk). With dns ("ip@port"), mailseald asks that resolver for
    MX records (through the exception path) and only plain.test is routed to the sink. With impair (mailseal-impair's options), the veth's root
    end goes to the seeded impairment forwarder, which bridges it to a second veth pair whose
    far end is mailseald's port: every frame both ways passes the impairments."""

    def __init__(self, a, c, root, dpdk_extra="", extra="", kernel=False, log_level="info", lcores=1, impair=None,
                 dns=None, env=None, hostname="gw.test", delivery_extra="", local_domain="agency-a.test"):
        tag = f"{os.getpid() % 100000:05d}"
        self.ns, veth_dp, self.veth_ns, tap = f"msdp{tag}", f"msd{tag}a", f"msd{tag}b", f"mst{tag}"
        ns = self.ns
        sh(f"ip netns add {ns}")
        harness._cleanups.append(lambda: sh(f"ip netns del {ns}", check=False))
        sh(f"ip link add {veth_dp} type veth peer name {self.veth_ns}")
        harness._cleanups.append(lambda: sh(f"ip link del {veth_dp}", check=False))
        sh(f"ip link set {self.veth_ns} netns {ns}")
        sh(f"ip link set {veth_dp} up")
        if kernel:
            sh(f"ip addr add {GW_IP}/24 dev {veth_dp}")
        else:
            # AF_PACKET reads the frames but does not take them from the kernel, which would
            # answer for GW_IP (the TAP's address) too: keep the kernel off the DPDK port. A
            # netdev ingress hook runs after packet sockets have their copy.
            sh(f"nft add table netdev {ns}")
            harness._cleanups.append(lambda: sh(f"nft delete table netdev {ns}", check=False))
            sh(f"nft 'add chain netdev {ns} in {{ type filter hook ingress device \"{veth_dp}\" priority 0; "
               f"policy drop; }}'")
        port_if = veth_dp
        self.impair_proc = None
        if impair is not None:
            fwd, port_if = f"msi{tag}a", f"msi{tag}b"
            sh(f"ip link add {fwd} type veth peer name {port_if}")
            harness._cleanups.append(lambda: sh(f"ip link del {fwd}", check=False))
            for i, dev in enumerate((fwd, port_if)):
                sh(f"ip link set {dev} up")
                sh(f"nft 'add chain netdev {ns} in{i} {{ type filter hook ingress device \"{dev}\" priority 0; "
                   f"policy drop; }}'")
            binary = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(a.mailseald))), "tools",
                                  "mailseal-impair")
            self.impair_log = os.path.join(root, "impair.log")
            with open(self.impair_log, "ab") as log:
                self.impair_proc = subprocess.Popen(
                    [binary] + impair + ["--", "--no-huge", "-m", "128", "--no-pci", "--no-shconf",
                                         f"--file-prefix=mi{tag}", "-l", "1", f"--vdev=net_af_packet0,iface={veth_dp}",
                                         f"--vdev=net_af_packet1,iface={fwd}"],
                    stdout=subprocess.PIPE, stderr=log, text=True)
            proc = self.impair_proc
            harness._cleanups.append(lambda: proc.poll() is None and proc.kill())
            harness.wait_for(lambda: proc.poll() is not None or "forwarding" in open(self.impair_log).read(), 30,
                             "the impairment forwarder")
            c.check(proc.poll() is None, "the impairment forwarder runs", open(self.impair_log).read()[-800:])
        sh(f"ip -n {ns} addr add {NS_IP}/24 dev {self.veth_ns}")
        sh(f"ip -n {ns} link set {self.veth_ns} up")
        sh(f"ip -n {ns} link set lo up")
        sh(f"ip netns exec {ns} ethtool -K {self.veth_ns} tx off")   # real checksums on what AF_PACKET reads
        # The next hop in the namespace.
        self.sink_dir = os.path.join(root, "sink")
        os.makedirs(self.sink_dir)
        sh(f"chown postfix {self.sink_dir}")
        self.sink_port = sink_port = 2600 + random.randrange(300)
        sink = subprocess.Popen(["ip", "netns", "exec", ns, "smtp-sink", "-u", "postfix", "-d", f"{self.sink_dir}/%M.",
                                 f"{NS_IP}:{sink_port}", "128"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        harness._cleanups.append(lambda: sink.poll() is None and sink.kill())
        eal = ["--no-huge", "-m", "256", "--no-pci", "--no-shconf", f"--file-prefix=ms{tag}", "-l", "0",
               f"--vdev=net_af_packet0,iface={port_if},qpairs={lcores}", f"--vdev=net_tap0,iface={tap}"]
        if lcores > 1:
            dpdk_extra += f" lcores: {lcores}"
        io = ('io { backend: DPDK dpdk { ' + " ".join(f'eal_args: "{x}"' for x in eal) +
              f' port: "net_af_packet0" exception_port: "net_tap0" address: "{GW_IP}/24" {dpdk_extra} }} }}\n')
        self.gw = gw = harness.Mailseald(a.mailseald, root, relay_port=None, trusted="10.77.0.0/24",
                                         local_domain=local_domain, env=env, hostname=hostname,
                                         delivery_extra=(f'relay_host: "{NS_IP}:{sink_port}"' if dns is None else
                                                         f'dns_forwarder: "{dns}" routes {{ domain: "plain.test" '
                                                         f'next_hop: "{NS_IP}:{sink_port}" }}') + " " + delivery_extra,
                                         extra=("" if kernel else io) + extra + f'log_level: "{log_level}"\n')
        if kernel:   # listen on the veth's address
            with open(gw.config) as f:
                text = f.read()
            with open(gw.config, "w") as f:
                f.write(text.replace(f'address: "127.0.0.1:{gw.port}"', f'address: "{GW_IP}:{gw.port}"'))
        self.tap, self.kernel, self.env = tap, kernel, env
        self.launch(a.mailseald)
        c.check(gw.proc.poll() is None, f"mailseald runs on the {'kernel' if kernel else 'DPDK'} back end",
                gw.read_log()[-2000:])
        if gw.user and gw.proc.poll() is None:   # issue #18: the drop holds on this back end too
            with open(f"/proc/{gw.proc.pid}/status") as f:
                st = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
            uid = str(pwd.getpwnam(gw.user).pw_uid)
            c.check(st["Uid"].split() == [uid] * 4 and st["CapEff"] == st["CapPrm"] == st["CapBnd"] == "0" * 16
                    and st["NoNewPrivs"] == "1" and st["Seccomp"] == "2",
                    f"on the {'kernel' if kernel else 'DPDK'} back end mailseald runs as {gw.user} with no capability, "
                    "no_new_privs and the seccomp filter (README: Privileges)",
                    " ".join(f"{k}={st.get(k)}" for k in ("Uid", "CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp")))

    def launch(self, binary):
        """Starts mailseald (again) and waits until it listens. The stack listens on the
        listener's port (on GW_IP); the harness's start() probes the loopback, which DPDK does
        not serve: started by hand."""
        gw, ns, tap = self.gw, self.ns, self.tap
        logf = open(gw.log, "ab")
        gw.prepare()
        gw.proc = subprocess.Popen([binary, "--config", gw.config], stdout=logf, stderr=logf, env=self.env)
        logf.close()
        if gw.kill not in harness._cleanups:
            harness._cleanups.append(gw.kill)
        probe = f"import socket; socket.create_connection(('{GW_IP}', {gw.port}), timeout=1).recv(10)"

        def listening():
            return gw.proc.poll() is not None or subprocess.run(
                ["ip", "netns", "exec", ns, "python3", "-c", probe], capture_output=True).returncode == 0
        if not self.kernel:
            # The kernel's side of the exception port gets the stack's address (as the
            # appliance's network configuration would); a new process makes a new TAP.
            harness.wait_for(lambda: gw.proc.poll() is not None or sh(f"ip link show {tap}", check=False).returncode == 0,
                             30, "TAP interface")
            if gw.proc.poll() is None:
                if GW_IP not in sh(f"ip -o addr show dev {tap}", check=False).stdout:
                    sh(f"ip addr add {GW_IP}/24 dev {tap}")
                sh(f"ip link set {tap} up")
        harness.wait_for(listening, 30, "listening")

    def swaks(self, subject, body_file=None, timeout=60, tls=False, to="bob@plain.test"):
        cmd = ["ip", "netns", "exec", self.ns, "swaks", "--server", f"{GW_IP}:{self.gw.port}", "--from",
               "alice@agency-a.test", "--to", to, "--h-Subject", subject, "--timeout", "30",
               "--body", body_file or f"body of {subject}"] + (["--tls"] if tls else [])
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def delivered(self):
        out = {}
        for name in os.listdir(self.sink_dir):
            with open(os.path.join(self.sink_dir, name), "rb") as f:
                data = f.read()
            for line in data.split(b"\n"):   # smtp-sink writes LF line ends
                if line.startswith(b"Subject: "):
                    out[line[9:].rstrip(b"\r").decode()] = data
        return out

    def stop_impair(self):
        """Stops the forwarder; its counters per direction (0to1: toward mailseald)."""
        self.impair_proc.terminate()
        out, _ = self.impair_proc.communicate(timeout=20)
        return json.loads(out.strip().splitlines()[-1]) if out.strip() else {}

    def stop(self):
        self.gw.proc.terminate()
        try:
            self.gw.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.gw.proc.kill()
        return self.gw.proc.returncode


def gw_log(d):
    return d.gw.read_log()


def main():
    a = harness.args()
    c = harness.Checker("dpdk_e2e")
    root = harness.tempdir(a.keep)
    tls_dir = os.path.join(root, "tls")
    os.makedirs(tls_dir)
    sh(f"cd {tls_dir} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem "
       f"-out cert.pem -subj /CN=gw.test -days 2 && chmod 600 key.pem")
    # Two lcores: net_af_packet's two queues are filled by the kernel's own flow hash, so frames
    # often arrive at the lcore that does not own their flow and are steered over its ring.
    d = DpdkGateway(a, c, root, extra=f'tls {{ cert_file: "{tls_dir}/cert.pem" key_file: "{tls_dir}/key.pem" }}\n',
                    lcores=2)
    c.check("lcores=2" in gw_log(d) and "steering=software" in gw_log(d), "two lcores with software steering",
            gw_log(d)[-800:])
    ns, gw, veth_ns, swaks, delivered = d.ns, d.gw, d.veth_ns, d.swaks, d.delivered

    r = sh(f"ip netns exec {ns} ping -c 3 -W 2 {GW_IP}", check=False)
    c.check(r.returncode == 0, "ICMP echo to the stack's address is answered", r.stdout[-300:] + r.stderr[-300:])

    ok, failures = 0, []
    for i in range(10):
        r = swaks(f"dpdk-{i}")
        if r.returncode == 0 and "250 2.0.0" in r.stdout:
            ok += 1
        else:
            failures.append(r.stdout[-600:] + r.stderr[-300:])
    c.check(ok == 10, "10 messages from the namespace accepted over the project's TCP", f"{ok} of 10 {failures}")
    c.check(harness.eventually(lambda: all(f"dpdk-{i}" in delivered() for i in range(10)), 60, "delivered"),
            "all 10 delivered to the next hop over the same stack (active opens)", sorted(delivered())[:12])
    got = delivered()
    c.check(all(f"body of dpdk-{i}".encode() in got.get(f"dpdk-{i}", b"") for i in range(10)),
            "each body arrives intact")

    # STARTTLS over the project's TCP: the TLS core runs above the seam unchanged.
    ok = 0
    for i in range(5):
        r = swaks(f"tls-{i}", tls=True)
        ok += r.returncode == 0 and "TLS started" in r.stdout
    c.check(ok == 5, "STARTTLS sessions over the project's TCP deliver their mail", f"{ok} of 5")
    c.check(harness.eventually(lambda: all(f"tls-{i}" in delivered() for i in range(5)), 60, "tls delivered"),
            "and it arrives", sorted(k for k in delivered() if k.startswith("tls-")))
    c.check(all(b"ESMTPS" in delivered().get(f"tls-{i}", b"") for i in range(5)), "Received says ESMTPS")

    big = os.path.join(root, "big.txt")
    rnd = random.Random(17)
    lines = ["".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(76)) for _ in range(26000)]
    with open(big, "w") as f:
        f.write("\r\n".join(lines) + "\r\n")
    r = swaks("dpdk-big", body_file=big, timeout=120)
    c.check(r.returncode == 0, "a 2 MB message is accepted", r.stdout[-500:])
    # smtp-sink writes the file as it receives: wait for the last line.
    c.check(harness.eventually(lambda: lines[-1].encode() in delivered().get("dpdk-big", b""), 60, "big delivered"),
            "and delivered")
    data = delivered().get("dpdk-big", b"")
    c.check(all(l.encode() in data for l in lines[::997]) and data.count(b"\n") >= 26000,
            "byte for byte (every line there, in order)")

    # The exception path: a kernel TCP service on the TAP's address, reached from the namespace
    # through the DPDK port (what gRPC management, SSH, LDAP answers get).
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((GW_IP, 7777))
    srv.listen(4)

    def serve():
        try:
            conn, _ = srv.accept()
            conn.sendall(b"kernel says hello\n")
            conn.close()
        except OSError:
            pass
    threading.Thread(target=serve, daemon=True).start()
    r = sh(f"ip netns exec {ns} python3 -c \"import socket; s=socket.create_connection(('{GW_IP}', 7777), timeout=10); "
           f"print(s.recv(100).decode())\"", check=False)
    c.check("kernel says hello" in r.stdout, "the kernel's own TCP service answers through the exception path",
            r.stdout + r.stderr[-300:])
    srv.close()

    # Loss: 5 % of what the namespace sends is dropped.
    sh(f"ip netns exec {ns} nft add table netdev chaos")
    sh(f"ip netns exec {ns} nft 'add chain netdev chaos eg {{ type filter hook egress device \"{veth_ns}\" priority 0; "
       f"policy accept; }}'")
    sh(f"ip netns exec {ns} nft add rule netdev chaos eg ip daddr {GW_IP} numgen random mod 100 '<' 5 counter drop")
    ok = 0
    for i in range(30):
        r = swaks(f"lossy-{i}", timeout=120)
        ok += r.returncode == 0
    c.check(ok == 30, "with 5 % loss, 30 messages are accepted", f"{ok} of 30")
    c.check(harness.eventually(lambda: all(f"lossy-{i}" in delivered() for i in range(30)), 90, "lossy delivered"),
            "and all delivered intact", len([k for k in delivered() if k.startswith("lossy-")]))
    counters = sh(f"ip netns exec {ns} nft list table netdev chaos").stdout
    c.check("counter packets 0 " not in counters, "packets were really dropped", counters[-300:])
    sh(f"ip netns exec {ns} nft delete table netdev chaos")

    # Postfix as the peer: it relays to mailseald over the project's TCP.
    pf = harness.Postfix(root, gw.port, host=NS_IP, relay_host=GW_IP, netns=ns)
    for i in range(20):
        r = subprocess.run(["ip", "netns", "exec", ns, "swaks", "--server", f"{NS_IP}:{pf.port}", "--from",
                            "alice@agency-a.test", "--to", "bob@plain.test", "--h-Subject", f"via-postfix-{i}",
                            "--body", f"body of via-postfix-{i}"], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            c.check(False, "Postfix in the namespace takes the message", r.stdout[-400:])
            break
    c.check(harness.eventually(lambda: all(f"via-postfix-{i}" in delivered() for i in range(20)), 90, "via Postfix"),
            "20 messages from Postfix in the namespace reach the next hop through mailseald's TCP",
            len([k for k in delivered() if k.startswith("via-postfix-")]))
    got = delivered()
    c.check(all(b"by peer.test (Postfix)" in got.get(f"via-postfix-{i}", b"") for i in range(20)),
            "they came through Postfix (its Received line)")
    pf.stop()
    c.check(d.stop() == 0, "clean stop", gw.read_log()[-1500:])
    stopped = [l for l in gw.read_log().splitlines() if "dpdk: stopped" in l]
    fields = dict(kv.split("=", 1) for kv in stopped[-1].split()[4:] if "=" in kv) if stopped else {}
    c.check(int(fields.get("steered", "0")) > 0, "frames were steered between the lcores", stopped[-1:])
    c.check(int(fields.get("tcp_sack_flows", "0")) > 0, "SACK agreed with Linux's TCP (RFC 2018)", stopped[-1:])
    c.finish()


if __name__ == "__main__":
    main()
