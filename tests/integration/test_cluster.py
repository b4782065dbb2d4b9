#!/usr/bin/env python3
"""Issue #20: a cluster of appliances on etcd (label `cluster`).

A real 3-member etcd cluster (Debian's etcd-server) and three mailseald nodes on loopback, each
with its own SoftHSM token and audit trail; node 3 reaches etcd through a TCP relay the test
can cut (a partition: a real peer cannot be told to drop one client).

- Membership: every node is in `mailsealctl cluster members` (asked of any node); a node killed
  with SIGKILL leaves within the lease TTL and comes back when restarted.
- Policy: a change on node 1 is in force on nodes 2 and 3 within 1 s (their logs say the
  version is installed); two concurrent updates from the same version: one wins, the other gets
  FAILED_PRECONDITION naming the version that won.
- etcd: killing the member every node talks to first changes nothing (members stay, a policy
  change still reaches every node).
- Singleton job: the node holding `key-expiry-notices` is killed; another takes it within the TTL.
- Partition: node 3 cut off from etcd keeps relaying mail with its last policy, says degraded
  in health and `cluster status`, and catches up with the change it missed once reconnected.
- Audit anchors: node 2's audit log and heads file cut back to an earlier signed head (a
  rewrite its own checks cannot see) — node 1 raises the alarm against the head anchored in
  etcd: `cluster status` names node 2 and exits 1, and node 1's audit trail records it.
"""
import os
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_control_api import issue  # noqa: E402
from test_smime_gateways import MODULE, Capture, make_gateway, run, send, smime_conf  # noqa: E402

TTL = 3


class Etcd:
    """A 3-member etcd cluster on loopback, each member stopped by PID."""

    def __init__(self, root, n=3):
        self.root = os.path.join(root, "etcd")
        os.makedirs(self.root)
        self.client = [harness.free_port() for _ in range(n)]
        self.peer = [harness.free_port() for _ in range(n)]
        self.names = [f"e{i + 1}" for i in range(n)]
        self.initial = ",".join(f"{nm}=http://127.0.0.1:{p}" for nm, p in zip(self.names, self.peer))
        self.procs = [None] * n
        for i in range(n):
            self.start(i)
        for i in range(n):
            harness.wait_for(lambda i=i: self.healthy(i), 30, f"etcd member {self.names[i]} healthy")

    def start(self, i):
        d = os.path.join(self.root, self.names[i])
        log = open(os.path.join(self.root, f"{self.names[i]}.log"), "ab")
        self.procs[i] = subprocess.Popen(
            ["etcd", "--name", self.names[i], "--data-dir", d,
             "--listen-client-urls", f"http://127.0.0.1:{self.client[i]}",
             "--advertise-client-urls", f"http://127.0.0.1:{self.client[i]}",
             "--listen-peer-urls", f"http://127.0.0.1:{self.peer[i]}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer[i]}",
             "--initial-cluster", self.initial, "--initial-cluster-state", "new",
             "--initial-cluster-token", "mailseal-test", "--heartbeat-interval", "50", "--election-timeout", "500"],
            stdout=log, stderr=log)
        log.close()
        harness._cleanups.append(lambda p=self.procs[i]: p.poll() is None and (p.kill(), p.wait()))

    def healthy(self, i):
        r = subprocess.run(["etcdctl", "--endpoints", f"127.0.0.1:{self.client[i]}", "--command-timeout=2s",
                            "endpoint", "health"], capture_output=True, text=True,
                           env=dict(os.environ, ETCDCTL_API="3"))
        return r.returncode == 0

    def kill(self, i):
        self.procs[i].kill()
        self.procs[i].wait()

    def get(self, key, prefix=False):
        r = subprocess.run(["etcdctl", "--endpoints", ",".join(f"127.0.0.1:{p}" for p in self.client),
                            "get", key, *(["--prefix"] if prefix else []), "--print-value-only=false", "--keys-only"],
                           capture_output=True, text=True, env=dict(os.environ, ETCDCTL_API="3"))
        return [ln for ln in r.stdout.splitlines() if ln]


def frames(path, magic):
    """(offset after each frame, payload) of an audit file (u32le length, u32le CRC, payload)."""
    data = open(path, "rb").read()
    assert data.startswith(magic), path
    at, out = len(magic), []
    while at + 8 <= len(data):
        n = struct.unpack_from("<I", data, at)[0]
        if at + 8 + n > len(data):
            break
        out.append((at + 8 + n, data[at + 8: at + 8 + n]))
        at += 8 + n
    return out


def tree_size(head_payload):
    """TreeHead.tree_size (field 1, varint) of a serialized head."""
    if not head_payload or head_payload[0] != 0x08:
        return 0
    v, shift, i = 0, 0, 1
    while True:
        b = head_payload[i]
        v |= (b & 0x7F) << shift
        i += 1
        shift += 7
        if not b & 0x80:
            return v


def main():
    a = harness.args()
    c = harness.Checker("cluster")
    root = harness.tempdir(a.keep)
    ca_dir = os.path.join(root, "ca")
    os.makedirs(ca_dir)
    run("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -subj /CN=Test-Root-CA -days 30", ca_dir)
    m = os.path.join(root, "mgmt")
    os.makedirs(m)
    run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout mgmt-ca.key -out mgmt-ca.crt "
        "-subj /CN=mgmt-ca -days 2", m)
    issue(m, "server", "mgmt-ca", "IP:127.0.0.1")
    issue(m, "admin-1", "mgmt-ca")

    etcd = Etcd(root)
    relay = Capture(etcd.client[2], record=False)   # node 3's only way to etcd (member e3); cut for a partition
    sink = harness.Sink(root)

    nodes = []
    for i in (1, 2, 3):
        name = f"n{i}"
        d, env, pin = make_gateway(root, name, "agency-a.test", a.keygen, ca_dir)
        run([a.keygen, MODULE, name, pin, "audit", "audit", "p256", "agency-a.test", f"{d}/audit.csr"], d, env)
        # The signing key's certificate ends in 5 days (SEE-2.3: the 7-day notice is due), the
        # decryption key's in 30 (the 30-day notice).
        run(f"openssl x509 -req -in dsa.csr -CA {ca_dir}/ca.crt -CAkey {ca_dir}/ca.key -CAcreateserial "
            f"-copy_extensions copy -days 5 -out dsa.crt", d)
        api = harness.free_port()
        endpoints = (f'endpoints: "127.0.0.1:{relay.port}"' if i == 3 else
                     " ".join(f'endpoints: "127.0.0.1:{p}"' for p in etcd.client))
        ndir = os.path.join(root, name)
        control = (f'control {{ listen: "127.0.0.1:{api}" cert_file: "{m}/server.crt" key_file: "{m}/server.key" '
                   f'client_ca_file: "{m}/mgmt-ca.crt" roles {{ common_name: "admin-1" role: "administrator" }} '
                   f'audit {{ log_path: "{ndir}/audit.log" heads_path: "{ndir}/audit.heads" head_every: 5 '
                   f'key_label: "audit" }} security_officer_address: "security@agency-a.test" }}\n')
        cluster = (f'cluster {{ name: "agency-a" node_id: "{name}" {endpoints} lease_ttl_s: {TTL} '
                   f'anchor_interval_s: 1 }}\n')
        gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port, env=env, name=name, hostname=f"{name}.test",
                               extra=smime_conf(name, d, pin, ca_dir, "") + control + cluster)
        gw.api = api
        nodes.append(gw)
    for gw in nodes:
        gw.start()
    n1, n2, n3 = nodes

    def ctl(gw, *args, timeout=30):
        r = subprocess.run([a.mailsealctl, "--server", f"127.0.0.1:{gw.api}", "--cert", f"{m}/admin-1.crt",
                            "--key", f"{m}/admin-1.key", "--ca", f"{m}/mgmt-ca.crt", *args],
                           capture_output=True, text=True, timeout=timeout)
        return r.returncode, r.stdout, r.stderr

    def members(gw):
        rc, out, _ = ctl(gw, "cluster", "members")
        return {ln.split()[0] for ln in out.splitlines()[1:] if ln.strip() and not ln.startswith("(")} if rc == 0 else set()

    def leader(gw, job="key-expiry-notices"):
        rc, out, _ = ctl(gw, "cluster", "status")
        for ln in out.splitlines():
            if ln.startswith("job") and job in ln:
                who = ln.split(" on ")[-1].strip()
                return "" if who.startswith("(") else who
        return ""

    for gw in nodes:
        harness.wait_for(lambda gw=gw: "management API listening" in gw.read_log(), 20, f"{gw.root} API up")
    harness.wait_for(lambda: all(members(gw) == {"n1", "n2", "n3"} for gw in nodes), 20,
                     "every node sees three members")
    c.check(True, "three nodes joined; each one's `cluster members` lists n1, n2, n3")
    rc, out, _ = ctl(n2, "cluster", "status")
    c.check(rc == 0 and "connected yes" in out and "job       key-expiry-notices on n" in out,
            "cluster status: connected, the singleton job held by a node", out)

    # ---- key expiry notices: one node sends them, once ----
    def notices(label):
        return [msg for msg in sink.messages() if f"key '{label}'".encode() in msg and b"Subject: mailseal:" in msg]

    harness.wait_for(lambda: notices("dsa") and notices("dca"), 20, "key expiry notices")
    time.sleep(2)   # had another node sent them too, they would be here now
    dsa, dca = notices("dsa"), notices("dca")
    c.check(len(dsa) == 1 and len(dca) == 1, "each key's expiry notice is sent once by the cluster, not by every node",
            f"dsa {len(dsa)}, dca {len(dca)}")
    first_leader = leader(n1)
    c.check(f"Reported by {first_leader}.test".encode() in dsa[0], "the notice comes from the node elected for the job",
            first_leader)
    c.check(b"expires in 4 day" in dsa[0] and b"in use:      yes" in dsa[0] and b"security@agency-a.test" in dsa[0],
            "the signing key's notice: days left, in use, to the security officers", dsa[0][:600].decode(errors="replace"))
    c.check(b"expires in 29 day" in dca[0], "the decryption key's 30-day notice")

    def keys_health(gw):
        out = ctl(gw, "health")[1]
        return out.split("mailseal.keys")[-1].split()[0] if "mailseal.keys" in out else ""

    c.check(all(harness.eventually(lambda gw=gw: keys_health(gw) == "NOT_SERVING", 10, "keys health") for gw in nodes),
            "every node's health warns: an in-use key's certificate ends within 7 days (mailseal.keys NOT_SERVING)")
    rc, out, _ = ctl(n2, "health")
    c.check(rc == 0 and out.startswith("SERVING"), "the warning leaves the gateway SERVING as a whole", out)

    # ---- policy: set on node 1, in force on 2 and 3 within a second ----
    def policy_file(words, name):
        p = os.path.join(root, name)
        with open(p, "w") as f:
            f.write("".join(f'trigger_words: "{w}"\n' for w in words) + f'comment: "{name}"\n')
        return p

    rc, out, err = ctl(n1, "policy", "set", policy_file(["SECRET"], "p1"), "--expect-version", "0")
    t_set = time.monotonic()
    c.check(rc == 0, "policy version 1 set on node 1", out + err)

    def in_force(gw, v):
        log = gw.read_log()
        return any("policy document in force" in ln and f"version={v}" in ln for ln in log.splitlines())

    harness.wait_for(lambda: in_force(n2, 1) and in_force(n3, 1), 10, "version 1 in force on nodes 2 and 3")
    took = time.monotonic() - t_set
    c.check(took <= 1.0, f"a policy change on node 1 is in force on nodes 2 and 3 within 1 s ({took:.2f} s)")
    rc, out, _ = ctl(n3, "policy", "get")
    c.check(rc == 0 and "SECRET" in out, "node 3 serves the policy set on node 1", out[:300])

    # ---- two concurrent updates from the same version ----
    results = {}

    def set_on(gw, key, path):
        results[key] = ctl(gw, "policy", "set", path, "--expect-version", "1")

    ts = [threading.Thread(target=set_on, args=(n1, "n1", policy_file(["ALPHA"], "p2a"))),
          threading.Thread(target=set_on, args=(n2, "n2", policy_file(["BRAVO"], "p2b")))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wins = [k for k, (rc, _, _) in results.items() if rc == 0]
    loser = [k for k in results if k not in wins]
    c.check(len(wins) == 1, "two concurrent updates from version 1: exactly one wins", str(results))
    if loser:
        rc, out, err = results[loser[0]]
        c.check(rc == 1 and "policy is at version 2" in err and "get it again" in err,
                "the other gets a clear conflict error naming the version that won", (out + err)[-400:])
    harness.wait_for(lambda: all(in_force(gw, 2) for gw in nodes), 10, "version 2 everywhere")

    # ---- kill the etcd member nodes 1 and 2 talk to first ----
    etcd.kill(0)
    rc, out, err = ctl(n2, "policy", "set", policy_file(["CHARLIE"], "p3"), "--expect-version", "2")
    c.check(rc == 0, "with one etcd member killed a policy change is still accepted", out + err)
    harness.wait_for(lambda: all(in_force(gw, 3) for gw in nodes), 10, "version 3 everywhere with e1 down")
    time.sleep(TTL + 1)   # longer than a lease: had a node lost its lease it would be gone now
    c.check(all(members(gw) == {"n1", "n2", "n3"} for gw in nodes),
            "killing one etcd member changes nothing: every node still a member, seen from every node")

    # ---- the singleton job moves within the TTL ----
    held_by = leader(n1)
    victim = {"n1": n1, "n2": n2, "n3": n3}[held_by] if held_by else None
    c.check(victim is not None, f"a node holds the singleton job ({held_by})")
    watcher = n2 if victim is not n2 else n1
    victim.kill()
    t_kill = time.monotonic()
    moved = gone = None
    end = time.monotonic() + 4 * TTL
    while time.monotonic() < end and (moved is None or gone is None):
        if moved is None and leader(watcher) not in ("", held_by):
            moved = time.monotonic() - t_kill
        if gone is None and held_by not in members(watcher):
            gone = time.monotonic() - t_kill
        time.sleep(0.05)
    c.check(moved is not None and moved <= TTL + 1.0,
            f"killing the job's node moves it within the lease TTL ({moved:.1f} s, TTL {TTL} s)" if moved is not None else f"killing the job's node moves it within the lease TTL (not moved)")
    c.check(gone is not None and gone <= TTL + 1.0, f"the killed node left `cluster members` within the TTL ({gone} s)")
    time.sleep(2)   # the new holder has scanned the keys on taking the job
    c.check(len(notices("dsa")) == 1 and len(notices("dca")) == 1,
            "the node that took the job over does not send the notices again (what was sent is kept in etcd)",
            f"dsa {len(notices('dsa'))}, dca {len(notices('dca'))}")
    victim.start()
    harness.wait_for(lambda: members(watcher) == {"n1", "n2", "n3"}, 20, "restarted node back")
    c.check(True, "the restarted node is a member again")

    # ---- partition node 3 from etcd ----
    relay.set_cut(True)
    harness.wait_for(lambda: "degraded" in ctl(n3, "cluster", "status")[1], 3 * TTL, "node 3 degraded")
    def cluster_health(gw):
        out = ctl(gw, "health")[1]
        return out.split("mailseal.cluster")[-1].split()[0] if "mailseal.cluster" in out else ""

    harness.wait_for(lambda: cluster_health(n3) == "NOT_SERVING", 5, "cluster part of health NOT_SERVING")
    rc, out, _ = ctl(n3, "health")
    c.check(rc == 0 and out.startswith("SERVING"),
            "health on the cut-off node: the cluster part NOT_SERVING, the gateway as a whole still SERVING", out)
    rc, out, err = ctl(n1, "policy", "set", policy_file(["DELTA"], "p4"), "--expect-version", "3")
    c.check(rc == 0, "policy version 4 set on node 1 while node 3 is cut off", out + err)
    before = len(sink.messages())
    reply = send(n3.port, "alice@agency-a.test", ["bob@plain.test"],
                 b"From: alice@agency-a.test\r\nTo: bob@plain.test\r\nSubject: partitioned\r\n\r\nhello\r\n")
    c.check(b"250 2.0.0" in reply, "the cut-off node accepts mail")
    harness.wait_for(lambda: any(b"Subject: partitioned" in msg for msg in sink.messages()), 20,
                     "mail relayed by the cut-off node")
    c.check(len(sink.messages()) > before, "the cut-off node keeps relaying")
    c.check(not in_force(n3, 4), "the cut-off node keeps its last policy (version 3)")
    relay.set_cut(False)
    harness.wait_for(lambda: in_force(n3, 4), 5 * TTL, "node 3 catches up")
    c.check(True, "reconnected, node 3 catches up with the version it missed")
    harness.wait_for(lambda: "degraded" not in ctl(n3, "cluster", "status")[1], 5 * TTL, "node 3 no longer degraded")
    harness.wait_for(lambda: cluster_health(n3) == "SERVING", 5, "cluster part of health SERVING again")

    # ---- a rewritten audit log is found by another node ----
    rc, out, _ = ctl(n1, "cluster", "status")
    c.check(rc == 0 and "ALARM" not in out, "no audit alarm before the rewrite", out)
    audit_log, audit_heads = os.path.join(n2.root, "audit.log"), os.path.join(n2.root, "audit.heads")
    # More audited changes on node 2, anchored (every second), so there is an earlier signed
    # head to cut back to.
    for v in (5, 6):
        ctl(n2, "policy", "set", policy_file([f"E{v}"], f"p{v}"), "--expect-version", str(v - 1))
    anchored_size = lambda: max((tree_size(p) for _, p in frames(audit_heads, b"MSAHEAD1\n")), default=0)  # noqa: E731
    time.sleep(2.5)   # anchors every second
    n2.stop()
    heads = frames(audit_heads, b"MSAHEAD1\n")
    total = anchored_size()
    cut_head = next(((off, p) for off, p in heads if 0 < tree_size(p) < total), None)   # the earliest
    c.check(cut_head is not None, f"node 2 has an earlier signed head to cut back to (last covers {total})")
    if cut_head:
        keep = tree_size(cut_head[1])
        recs = frames(audit_log, b"MSAUDIT1\n")
        with open(audit_log, "r+b") as f:
            f.truncate(recs[keep - 1][0])
        with open(audit_heads, "r+b") as f:
            f.truncate(cut_head[0])
        n2.start()
        harness.wait_for(lambda: ctl(n1, "cluster", "status")[0] == 1, 20, "alarm on node 1")
        rc, out, _ = ctl(n1, "cluster", "status")
        c.check(rc == 1 and "ALARM" in out and "audit trail of n2" in out,
                "node 1 finds node 2's rewritten audit log against the head anchored in etcd", out)
        rc, out, _ = ctl(n1, "audit", "records", "--start", "0", "--limit", "100000")
        c.check("cluster.audit-anchor-mismatch" in out and "n2" in out, "node 1's audit trail records the alarm")
        c.check("does not extend its anchored head" in n2.read_log(), "node 2 itself logs that its log does not extend")

    for gw in nodes:
        gw.stop()
    c.finish()


if __name__ == "__main__":
    main()
