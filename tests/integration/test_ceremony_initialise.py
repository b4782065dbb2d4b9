#!/usr/bin/env python3
"""Issue #18, first boot: the domain's keys are made only in an M-of-N ceremony driven through
mailsealctl (REQUIREMENTS.md §6 CARD ceremonies, §8 CARD image: "no key made without a
ceremony on an appliance").

A fresh gateway A, set up the way the appliance is: its token holds only the audit key; the
configuration has the management API with three custodians, a 2-of-3 threshold and
keys_only_in_ceremony, and an smime section that names the domain keys by label only (their
certificates are the ones installed on the token) — keys that do not exist yet.
0. Mail for the partner is accepted and waits (deferred: "domain keys not ready on the token"),
   never sent in clear.
1. A security officer cannot generate a key alone (refused, the reason named).
2. `mailsealctl ceremony start --kind initialise --domain agency-a.test` gives the statement
   custodians sign (it names both labels, the key type and the domain); one custodian's
   approval makes nothing; a label already on the token is refused at start.
3. The second custodian's approval makes the DSA and DCA pairs inside the token and writes
   their CSRs (`--csr-out`): each verifies and names its RFC 3183 authority address.
4. The CA's certificates are installed through `mailsealctl keys install`; the transcript is
   signed by the audit key; the audit trail has `ceremony.initialise`.
5. Without a restart, the waiting message is sealed with the new keys and partner gateway B
   opens and verifies it (smime=pass); so is a new one.
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_control_api import control_pki  # noqa: E402
from test_smime_gateways import MODULE, make_pki, make_token, run, send, smime_conf  # noqa: E402


def main():
    a = harness.args()
    c = harness.Checker("ceremony_initialise")
    root = harness.tempdir(a.keep)
    ca_dir, [(db, env_b, pin_b)] = make_pki(root, a.keygen, [("gw-b", "agency-b.test")])
    da, env_a, pin_a = make_token(root, "gw-a")   # no key yet: the audit key comes next (control_pki)
    m = control_pki(root, a.keygen, da, env_a, pin_a, ca_dir, ("so-1", "auditor-1"))
    for i in (1, 2, 3):
        run(f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout custodian-{i}.key "
            f"-out custodian-{i}.crt -subj /CN=custodian-{i} -days 2", m)
    custodians = "".join(f'custodians {{ name: "custodian-{i}" cert_file: "{m}/custodian-{i}.crt" }} ' for i in (1, 2, 3))
    api_port = harness.free_port()
    control = (f'control {{ listen: "127.0.0.1:{api_port}" cert_file: "{m}/server.crt" key_file: "{m}/server.key" '
               f'client_ca_file: "{m}/mgmt-ca.crt" roles {{ common_name: "so-1" role: "security-officer" }} '
               f'roles {{ common_name: "auditor-1" role: "auditor" }} '
               f'audit {{ log_path: "{root}/audit.log" heads_path: "{root}/audit.heads" key_label: "audit" }} '
               f'ceremony {{ threshold: 2 keys_only_in_ceremony: true {custodians} }} '
               f'domain_trust_anchors_file: "{ca_dir}/ca.crt" }}\n')
    hsm = f'hsm {{ module_path: "{MODULE}" token_label: "gw-a" pin_file: "{pin_a}" health_interval_ms: 500 }}\n'
    smime = (f'smime {{ dsa_key_label: "dsa" dca_key_label: "dca" trust_anchors_file: "{ca_dir}/ca.crt" '
             f'partners {{ domain: "agency-b.test" dca_cert_file: "{db}/dca.crt" }} }}\n')

    sink_b = harness.Sink(root)
    gb = harness.Mailseald(a.mailseald, root, relay_port=sink_b.port, name="b", local_domain="agency-b.test",
                           env=env_b, hostname="gw-b.test",
                           extra=smime_conf("gw-b", db, pin_b, ca_dir, 'partners { domain: "agency-a.test" }'))
    gb.start()
    route = f'routes {{ domain: "agency-b.test" next_hop: "127.0.0.1:{gb.port}" }}'
    ga = harness.Mailseald(a.mailseald, root, name="a", env=env_a, hostname="gw-a.test", delivery_extra=route,
                           extra=hsm + smime + control)
    ga.start()
    harness.wait_for(lambda: "management API listening" in ga.read_log(), 20, "API up")

    # 0. Before the keys exist: accepted, waiting, never in clear.
    early = b"Written before the ceremony."
    r = send(ga.port, "alice@agency-a.test", ["bob@agency-b.test"],
             b"From: alice@agency-a.test\r\nTo: bob@agency-b.test\r\nSubject: early\r\n\r\n" + early + b"\r\n")
    c.check(b"250 2.0.0" in r, "before the ceremony, mail for the partner is accepted", r[-200:])
    waiting = harness.eventually(
        lambda: "domain keys not ready on the token (dsa 'dsa': " in ga.read_log() or None, 20, "deferred for the keys")
    c.check(waiting and not sink_b.messages(), "and waits for the domain keys (deferred, the reason named), "
            "nothing reaches the partner", ga.read_log()[-600:])

    def ctl(who, *args):
        r = subprocess.run([a.mailsealctl, "--server", f"127.0.0.1:{api_port}", "--cert", f"{m}/{who}.crt",
                            "--key", f"{m}/{who}.key", "--ca", f"{m}/mgmt-ca.crt", *args],
                           capture_output=True, text=True, timeout=60)
        return r.returncode, r.stdout, r.stderr

    def labels():
        rc, o, _ = ctl("so-1", "-o", "json", "keys", "list")
        return {k["label"] for k in json.loads(o).get("keys", [])} if rc == 0 else None

    def sealing_health():
        rc, o, _ = ctl("so-1", "health")
        m = __import__("re").search(r"mailseal\.sealing\s+(\w+)", o)
        return rc, m.group(1) if m else None
    rc, part = harness.wait_for(lambda: (lambda r: r if r[1] in ("SERVING", "NOT_SERVING") else None)(sealing_health()),
                                20, "health")
    c.check(rc != 0 and part == "NOT_SERVING", "health before the ceremony: sealing not serving, overall not healthy",
            str((rc, part)))

    # 1. No key alone.
    rc, o, e = ctl("so-1", "keys", "generate", "dsa", "--purpose", "dsa-sign", "--domain", "agency-a.test")
    c.check(rc != 0 and "only in a ceremony" in e, "a security officer cannot make a key alone (keys_only_in_ceremony)", o + e)
    c.check(labels() == {"audit"}, "the token holds only the audit key before the ceremony", str(labels()))

    # 2. Start; one approval is not enough; a taken label is refused.
    rc, o, e = ctl("so-1", "ceremony", "start", "--kind", "initialise", "--key", "audit", "--domain", "agency-a.test",
                   "--reason", "first boot")
    c.check(rc != 0 and "already" in e, "an initialise ceremony never replaces a key: a label on the token is refused", o + e)
    rc, o, e = ctl("so-1", "-o", "json", "ceremony", "start", "--kind", "initialise", "--domain", "agency-a.test",
                   "--org", "Agency A", "--country", "NZ", "--reason", "first boot of gw-a")
    started = json.loads(o) if rc == 0 else {}
    cid, statement = started.get("ceremony_id", ""), started.get("statement", "")
    rc, o2, e2 = ctl("auditor-1", "-o", "json", "ceremony", "status", cid)
    proposed = json.loads(o2).get("text", "") if rc == 0 else ""
    c.check(cid and started.get("threshold") == 2 and statement and statement in json.loads(o2).get("statement", "")
            and 'action: "initialise"' in proposed
            and "dsa=dsa dca=dca key_type=rsa:2048 domains=agency-a.test O=Agency A C=NZ" in proposed,
            "the step custodians approve names the action, both labels, the key type and the domain "
            "(the statement they sign binds it)", o + e + proposed[-600:] + e2)
    csr_dir = os.path.join(root, "csrs")
    os.makedirs(csr_dir)
    rc, o, e = ctl("so-1", "ceremony", "approve", cid, "--custodian", "custodian-1", "--custodian-key",
                   f"{m}/custodian-1.key", "--csr-out", csr_dir)
    c.check(rc == 0 and "approvals 1; ceremony pending" in o, "one custodian's approval is not enough", o + e)
    c.check(labels() == {"audit"} and not os.listdir(csr_dir), "and nothing was made", str(labels()))

    # 3. The quorum: keys made inside, CSRs out.
    rc, o, e = ctl("so-1", "ceremony", "approve", cid, "--custodian", "custodian-3", "--custodian-key",
                   f"{m}/custodian-3.key", "--csr-out", csr_dir)
    c.check(rc == 0 and "ceremony done" in o and "made in the token" in o,
            "the second custodian's approval makes the key pairs in the token", o + e)
    c.check(labels() == {"audit", "dsa", "dca"}, "the token now holds dsa and dca", str(labels()))
    for label, who in (("dsa", "domain-signing-authority"), ("dca", "domain-confidentiality-authority")):
        path = os.path.join(csr_dir, f"{label}.csr")
        r = subprocess.run(["openssl", "req", "-in", path, "-noout", "-verify", "-text"], capture_output=True, text=True) \
            if os.path.exists(path) else None
        c.check(r is not None and "verify OK" in r.stdout + r.stderr and f"{who}@agency-a.test" in r.stdout
                and "O = Agency A" in r.stdout,
                f"{label}.csr is signed by the new key and names {who}@agency-a.test (RFC 3183)",
                (r.stdout[-400:] + r.stderr[-200:]) if r else "missing")

    # 4. Certificates installed; transcript and audit trail.
    for label in ("dsa", "dca"):
        run(f"openssl x509 -req -in {csr_dir}/{label}.csr -CA {ca_dir}/ca.crt -CAkey {ca_dir}/ca.key -CAcreateserial "
            f"-copy_extensions copy -days 30 -out {csr_dir}/{label}.crt", csr_dir)
        rc, o, e = ctl("so-1", "keys", "install", label, f"{csr_dir}/{label}.crt", "--domain", "agency-a.test")
        c.check(rc == 0, f"the CA's certificate for {label} is installed in the token", o + e)
    rc, o, e = ctl("auditor-1", "-o", "json", "ceremony", "status", cid)
    st = json.loads(o) if rc == 0 else {}
    c.check(st.get("state") == "done" and st.get("kind") == "initialise" and len(st.get("csrs", [])) == 2
            and "audit_signature" in st.get("text", ""),
            "an auditor reads the transcript: done, signed by the audit key, with the CSRs", o[:400] + e)
    rc, o, e = ctl("auditor-1", "-o", "json", "audit", "records", "--action", "ceremony.")
    recs = [(r.get("action"), r.get("outcome"), r.get("object")) for r in json.loads(o).get("records", [])] if rc == 0 else []
    c.check(("ceremony.initialise", "OUTCOME_DONE", "dsa,dca") in recs, "the audit trail has ceremony.initialise, done",
            str(recs) + e)

    got = harness.eventually(lambda: sealing_health() == (0, "SERVING") or None, 20, "sealing serving")
    c.check(got, "with the certificates installed: sealing serving, overall healthy (within 5 s)", str(sealing_health()))
    c.check("domain keys ready: sealing serving" in ga.read_log(), "the log says when sealing became ready")
    rc, o, e = ctl("so-1", "certs", "smimea")
    c.check(rc == 0 and "SMIMEA" in o and o.count("SMIMEA") == 2
            and "._smimecert.agency-a.test" in o,
            "the SMIMEA export takes both certificates from the token (no certificate file configured)", o + e)

    # 5. No restart: the waiting message goes out sealed with the new keys, and so does a new one.
    secret = b"The first sealed words of gw-a."
    r = send(ga.port, "alice@agency-a.test", ["bob@agency-b.test"],
             b"From: alice@agency-a.test\r\nTo: bob@agency-b.test\r\nSubject: hello\r\n\r\n" + secret + b"\r\n")
    c.check(b"250 2.0.0" in r, "A accepts mail for the partner", r[-200:])
    for text, what in ((early, "the message that waited"), (secret, "a new message")):
        got = harness.eventually(lambda: [x for x in sink_b.messages() if text in x] or None, 30, "opened at B")
        c.check(got is not None and b"smime=pass" in got[0]
                and b"body.smime-identifier=domain-signing-authority@agency-a.test" in got[0],
                f"{what}: sealed with the ceremony's keys (from the token, no restart); B opens it and the "
                "signature verifies (smime=pass)", (got or [b""])[0][:500] + ga.read_log()[-800:].encode())
    c.check("domain keys and certificates found on the token: sealing/opening resumed" in ga.read_log(),
            "A's log says when sealing resumed")

    # 6. A renewal: a new DSA certificate for the same key, installed over the API, is used for
    # the next message within seconds (no restart); B still verifies it.
    run(f"openssl x509 -req -in {csr_dir}/dsa.csr -CA {ca_dir}/ca.crt -CAkey {ca_dir}/ca.key -CAcreateserial "
        f"-copy_extensions copy -days 60 -out {csr_dir}/dsa-renewed.crt", csr_dir)
    serial = subprocess.run(["openssl", "x509", "-in", f"{csr_dir}/dsa-renewed.crt", "-noout", "-serial"],
                            capture_output=True, text=True).stdout.strip().split("=")[-1].upper().lstrip("0")
    rc, o, e = ctl("so-1", "keys", "install", "dsa", f"{csr_dir}/dsa-renewed.crt", "--domain", "agency-a.test")
    c.check(rc == 0, "a renewed DSA certificate (same key) is installed over the API", o + e)

    def renewed_in_use():
        text = f"After the renewal {time.time()}".encode()
        send(ga.port, "alice@agency-a.test", ["bob@agency-b.test"],
             b"From: alice@agency-a.test\r\nTo: bob@agency-b.test\r\nSubject: renewed\r\n\r\n" + text + b"\r\n")
        got = harness.eventually(lambda: [x for x in sink_b.messages() if text in x] or None, 30, "opened at B")
        return "certificate on the token replaced" in ga.read_log() and got and b"smime=pass" in got[0] or None
    c.check(harness.eventually(renewed_in_use, 40, "the renewed certificate in use", interval=3),
            "the renewed certificate is in use within seconds, no restart (A's log names it; B verifies: smime=pass)",
            ga.read_log()[-600:])
    c.check(f"serial={serial}" in ga.read_log(), "A's log names the new certificate's serial", serial)
    for g in (ga, gb):
        c.check(g.stop() == 0, "clean stop")
    c.finish()


if __name__ == "__main__":
    main()
