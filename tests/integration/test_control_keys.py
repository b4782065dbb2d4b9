#!/usr/bin/env python3
"""Issue #5 (the rest of the API): keys and quorum ceremonies, queue show/delete/recall,
audit proofs, streaming and exported heads, error details, and a generic reflection client.

- A security officer lists the token's keys, generates a new DSA key in the token (its CSR is
  signed there and names the domain per RFC 3183), installs the CA's certificate for it; a
  certificate for another key is refused. An administrator may not generate keys (exit 3).
- Destroying a key takes a ceremony (which survives a restart of mailseald half approved): a key in use cannot be put up; one custodian is not
  enough, the same custodian twice is refused, a signature by the wrong key is refused; the
  second distinct custodian's approval destroys the pair in the token, and the transcript is
  signed by the HSM audit key and kept.
- Queue: show a held message and each recipient's status, delete it with a reason; recall by
  sender withdraws queued mail (no DSN, nothing delivered), audited.
- Audit: an inclusion proof verifies against the signed head; `audit tail -f` streams new
  records; a head exported before the log is truncated makes `audit verify --exported` fail.
- A bad request names the field (google.rpc.BadRequest detail printed by mailsealctl).
- A generic client that knows no mailseal .proto lists the services through reflection and
  calls QueueService/GetCounts; an auditor calling SetPolicy that way gets PERMISSION_DENIED.
- `mailsealctl completion bash` gives a script bash accepts; a config file replaces the flags.
"""
import json
import os
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_control_api import control_pki  # noqa: E402
from test_smime_gateways import make_pki, run, send, smime_conf  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    a = harness.args()
    c = harness.Checker("control_keys")
    root = harness.tempdir(a.keep)
    ca_dir, [(da, env_a, pin_a)] = make_pki(root, a.keygen, [("gw-a", "agency-a.test")])
    m = control_pki(root, a.keygen, da, env_a, pin_a, ca_dir, ("admin-1", "so-1", "auditor-1", "operator-1"))
    for i in (1, 2, 3):   # ceremony custodians: their own keys, not management certificates
        run(f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout custodian-{i}.key "
            f"-out custodian-{i}.crt -subj /CN=custodian-{i} -days 2", m)

    sink = harness.Sink(root)
    api_port = harness.free_port()
    roles = "".join(f'roles {{ common_name: "{n}" role: "{r}" }} ' for n, r in
                    (("admin-1", "administrator"), ("so-1", "security-officer"), ("auditor-1", "auditor"),
                     ("operator-1", "operator")))
    custodians = "".join(f'custodians {{ name: "custodian-{i}" cert_file: "{m}/custodian-{i}.crt" }} ' for i in (1, 2, 3))
    control = (f'control {{ listen: "127.0.0.1:{api_port}" cert_file: "{m}/server.crt" key_file: "{m}/server.key" '
               f'client_ca_file: "{m}/mgmt-ca.crt" {roles} audit {{ log_path: "{root}/audit.log" '
               f'heads_path: "{root}/audit.heads" head_every: 5 key_label: "audit" }} '
               f'ceremony {{ threshold: 2 {custodians} }} }}')
    conf_extra = smime_conf("gw-a", da, pin_a, ca_dir, 'partners { domain: "agency-c.test" }') + control
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port, env=env_a, hostname="gw-a.test", extra=conf_extra)
    gw.start()
    harness.wait_for(lambda: "management API listening" in gw.read_log(), 15, "API up")

    def ctl(who, *args, extra_env=None):
        env = dict(os.environ, **(extra_env or {}))
        r = subprocess.run([a.mailsealctl, "--server", f"127.0.0.1:{api_port}", "--cert", f"{m}/{who}.crt",
                            "--key", f"{m}/{who}.key", "--ca", f"{m}/mgmt-ca.crt", *args],
                           capture_output=True, text=True, timeout=60, env=env)
        return r.returncode, r.stdout, r.stderr

    # ---- keys
    rc, o, e = ctl("so-1", "-o", "json", "keys", "list")
    keys = {k["label"]: k for k in json.loads(o).get("keys", [])} if rc == 0 else {}
    c.check(set(keys) >= {"dsa", "dca", "audit"} and keys["dsa"].get("in_use") and keys["dsa"].get("purpose") == "dsa-sign"
            and keys["audit"].get("key_type") == "ec:P-256" and keys["dca"].get("key_type") == "rsa:2048"
            and "domain-signing-authority" in keys["dsa"].get("certificate_subject", ""), "a security officer lists the token's keys", o + e)
    rc, o, e = ctl("so-1", "keys", "rotate", "dsa-sign", "--label", "dsa-2027", "--domain", "agency-a.test",
                   "--csr-out", f"{m}/dsa-2027.csr")
    req = subprocess.run(["openssl", "req", "-in", f"{m}/dsa-2027.csr", "-noout", "-verify", "-subject", "-text"],
                         capture_output=True, text=True)
    c.check(rc == 0 and "verify OK" in (req.stdout + req.stderr) and "domain-signing-authority" in req.stdout
            and "domain-signing-authority@agency-a.test" in req.stdout,
            "keys rotate: a new DSA key in the token, its CSR signed there and named per RFC 3183", o + e + req.stderr)
    run(f"openssl x509 -req -in dsa-2027.csr -CA {ca_dir}/ca.crt -CAkey {ca_dir}/ca.key -CAcreateserial "
        f"-copy_extensions copy -days 30 -out dsa-2027.crt", m)
    rc, o, e = ctl("so-1", "keys", "install", "dsa-2027", f"{da}/dca.crt", "--domain", "agency-a.test")
    c.check(rc == 1 and "not for key 'dsa-2027'" in e, "a certificate for another key is refused", e)
    rc, o, e = ctl("so-1", "keys", "install", "dsa-2027", f"{m}/dsa-2027.crt", "--domain", "agency-a.test")
    c.check(rc == 0 and "domain-signing-authority" in o, "the CA's certificate is installed for the new key", o + e)
    rc, o, e = ctl("admin-1", "keys", "generate", "x", "--purpose", "dsa-sign", "--domain", "agency-a.test")
    c.check(rc == 3, "an administrator may not generate keys (security officers do): exit 3", e)
    rc, o, e = ctl("so-1", "keys", "generate", "bad-1", "--purpose", "signing", "--domain", "agency-a.test")
    c.check(rc == 1 and "field purpose" in e, "a bad request names the field (google.rpc.BadRequest detail)", e)

    # ---- ceremony: destroy dsa-2027 with 2 of 3 custodians
    rc, o, e = ctl("so-1", "ceremony", "start", "--key", "dsa", "--reason", "test")
    c.check(rc == 1 and "in use" in e, "a key the configuration uses cannot be put up for destruction", e)
    rc, o, e = ctl("so-1", "-o", "json", "ceremony", "start", "--key", "dsa-2027", "--reason", "superseded")
    cid = json.loads(o)["ceremony_id"] if rc == 0 else ""
    c.check(rc == 0 and cid and json.loads(o)["threshold"] == 2, "a security officer starts a destroy-key ceremony", o + e)
    rc, o, e = ctl("so-1", "ceremony", "approve", cid, "--custodian", "custodian-1", "--custodian-key", f"{m}/custodian-1.key")
    c.check(rc == 0 and "approvals 1; ceremony pending" in o, "one custodian's approval is not enough", o + e)
    rc, o, e = ctl("so-1", "ceremony", "approve", cid, "--custodian", "custodian-1", "--custodian-key", f"{m}/custodian-1.key")
    c.check(rc == 1 and "already approved" in e, "the same custodian cannot approve twice", e)
    rc, o, e = ctl("so-1", "ceremony", "approve", cid, "--custodian", "custodian-2", "--custodian-key", f"{m}/custodian-3.key")
    c.check(rc == 3 and "does not verify" in e, "a signature by another custodian's key is refused", o + e)
    rc, o, e = ctl("so-1", "-o", "json", "keys", "list")
    c.check("dsa-2027" in o, "the key still exists before the quorum", o)
    # Issue #20: a pending ceremony survives a restart, with the approval it had.
    gw.stop()
    gw.start()
    harness.wait_for(lambda: gw.read_log().count("management API listening") >= 2, 15, "API up again")
    c.check("pending ceremony resumed" in gw.read_log(), "the pending ceremony is read back at start")
    rc, o, e = ctl("so-1", "ceremony", "approve", cid, "--custodian", "custodian-1", "--custodian-key", f"{m}/custodian-1.key")
    c.check(rc == 1 and "already approved" in e, "after the restart the first approval still counts", o + e)
    rc, o, e = ctl("so-1", "ceremony", "approve", cid, "--custodian", "custodian-2", "--custodian-key", f"{m}/custodian-2.key")
    c.check(rc == 0 and "ceremony done" in o and "destroyed" in o, "the second custodian's approval destroys the key", o + e)
    rc, o, e = ctl("so-1", "-o", "json", "keys", "list")
    c.check(rc == 0 and "dsa-2027" not in o and '"dsa"' in o, "the key pair is gone from the token; the others stay", o)
    rc, o, e = ctl("auditor-1", "-o", "json", "ceremony", "status", cid)
    st = json.loads(o) if rc == 0 else {}
    tdir = os.path.join(gw.spool, "ceremonies")
    transcripts = os.listdir(tdir) if os.path.isdir(tdir) else []
    c.check(st.get("state") == "done" and "audit_public_key_der" in st.get("text", "")
            and "audit_signature" in st.get("text", "") and 'action: "result"' in st.get("text", "")
            and f"{cid}.transcript" in transcripts,
            "the transcript is signed by the audit key and kept; an auditor reads it", o[:300] + e + str(transcripts))

    # ---- queue show / delete
    out = send(gw.port, "alice@agency-a.test", ["carol@agency-c.test"],
               b"From: alice@agency-a.test\r\nTo: carol@agency-c.test\r\nSubject: s\r\n\r\nsecret text\r\n")
    held = harness.wait_for(lambda: gw.queue_files("hold"), 15, "held")
    rc, o, e = ctl("operator-1", "-o", "json", "queue", "show", held[0])
    shown = json.loads(o) if rc == 0 else {}
    c.check(shown.get("state") == "hold" and shown["message"].get("hold_reason")
            and shown["recipients"][0]["address"] == "carol@agency-c.test" and "secret text" not in o,
            "an operator sees a held message: state, reason, recipients — never the content", o + e)
    rc, o, e = ctl("operator-1", "queue", "delete", held[0])
    c.check(rc == 2, "delete without a reason is a usage error", e)
    rc, o, e = ctl("operator-1", "queue", "delete", held[0], "--reason", "sent to the wrong agency")
    c.check(rc == 0 and not gw.queue_files("hold"), "the operator deletes it with a reason", o + e)

    # ---- recall by sender: queued mail withdrawn, no DSN
    sink.stop()
    for i in range(3):
        send(gw.port, "mallory@agency-a.test", [f"bob{i}@elsewhere.test"], b"Subject: oops\r\n\r\nsent in error\r\n")
    harness.wait_for(lambda: len(gw.queue_files("deferred")) + len(gw.queue_files("active")) >= 3, 20, "queued")
    rc, o, e = ctl("operator-1", "-o", "json", "queue", "recall", "--from", "mallory@agency-a.test",
                   "--reason", "sent in error")
    res = json.loads(o).get("messages", []) if rc == 0 else []
    c.check(rc == 0 and len(res) == 3 and all(not r.get("error") for r in res),
            "recall by sender withdraws the 3 queued messages", o + e)
    time.sleep(1)
    left = gw.queue_files("deferred") + gw.queue_files("active")
    c.check(not left, "nothing is left queued: no message and no DSN to the sender", str(left))
    os.makedirs(os.path.join(root, "again"))
    sink2 = harness.Sink(os.path.join(root, "again"), port=sink.port)
    time.sleep(2)
    c.check(not [x for x in sink2.messages() if b"sent in error" in x or b"mallory" in x],
            "nothing recalled is delivered afterwards", str(len(sink2.messages())))

    # ---- audit: proofs, stream, exported head
    rc, o, e = ctl("auditor-1", "-o", "json", "audit", "records", "--limit", "1000")
    recs = json.loads(o).get("records", []) if rc == 0 else []
    actions = [(r.get("action"), r.get("outcome")) for r in recs]
    c.check(("mailseal.v1.QueueService.RecallMessages", "OUTCOME_DONE") in actions
            and ("mail.recalled", "OUTCOME_DONE") in actions
            and ("mailseal.v1.QueueService.DeleteMessage", "OUTCOME_ALLOWED") in actions
            and ("ceremony.destroy-key", "OUTCOME_DONE") in actions
            and ("mailseal.v1.KeyService.GenerateKey", "OUTCOME_DENIED") in actions,
            "generate, ceremony, delete and recall are in the audit trail", str(actions[-30:]))
    rc, o, e = ctl("auditor-1", "-o", "json", "audit", "records", "--outcome", "denied")
    denied = json.loads(o).get("records", []) if rc == 0 else []
    c.check(denied and all(r.get("outcome") == "OUTCOME_DENIED" for r in denied)
            and any(r.get("action") == "mailseal.v1.KeyService.GenerateKey" for r in denied),
            "audit query by outcome: only the refusals", o[-300:] + e)
    rc, o, e = ctl("auditor-1", "-o", "json", "audit", "records", "--action", "ceremony.", "--actor", "CN=so-1")
    cer_recs = json.loads(o).get("records", []) if rc == 0 else []
    c.check(len(cer_recs) == 1 and cer_recs[0].get("object") == "dsa-2027",
            "audit query by action prefix and actor: the one ceremony", o + e)
    rc, o, e = ctl("auditor-1", "audit", "proof", "3")
    c.check(rc == 0 and "included" in o, "an inclusion proof verifies against the signed head", o + e)
    tail = subprocess.Popen([a.mailsealctl, "--server", f"127.0.0.1:{api_port}", "--cert", f"{m}/auditor-1.crt",
                             "--key", f"{m}/auditor-1.key", "--ca", f"{m}/mgmt-ca.crt", "audit", "tail", "-f"],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    ctl("operator-1", "queue", "counts")
    ctl("auditor-1", "queue", "counts")   # denied: a record
    time.sleep(1.5)
    tail.terminate()
    streamed = tail.communicate(timeout=10)[0]
    c.check("QueueService.GetCounts" in streamed and "DENIED" in streamed,
            "audit tail -f streams records written after it started", streamed[-400:])
    rc, o, e = ctl("auditor-1", "audit", "export", f"{root}/exported-head.json")
    c.check(rc == 0, "an auditor exports a signed tree head", o + e)
    rc, o, e = ctl("auditor-1", "audit", "verify", "--exported", f"{root}/exported-head.json")
    c.check(rc == 0 and "consistent" in o, "the live log is consistent with the exported head", o + e)

    # ---- generic client through reflection
    gen = [sys.executable, os.path.join(HERE, "grpc_reflect.py"), "--server", f"127.0.0.1:{api_port}",
           "--ca", f"{m}/mgmt-ca.crt"]
    r = subprocess.run(gen + ["--cert", f"{m}/operator-1.crt", "--key", f"{m}/operator-1.key", "list"],
                       capture_output=True, text=True, timeout=60)
    c.check(r.returncode == 0 and "mailseal.v1.QueueService" in r.stdout and "mailseal.v1.KeyService" in r.stdout
            and "grpc.health.v1.Health" in r.stdout, "a generic client lists the services through reflection",
            r.stdout + r.stderr)
    r = subprocess.run(gen + ["--cert", f"{m}/operator-1.crt", "--key", f"{m}/operator-1.key", "call",
                              "mailseal.v1.QueueService/GetCounts", "{}"], capture_output=True, text=True, timeout=60)
    c.check(r.returncode == 0 and '"counts"' in r.stdout and '"active"' in r.stdout,
            "it calls QueueService/GetCounts knowing only what reflection told it", r.stdout + r.stderr)
    r = subprocess.run(gen + ["--cert", f"{m}/auditor-1.crt", "--key", f"{m}/auditor-1.key", "call",
                              "mailseal.v1.PolicyService/SetPolicy", '{"expected_version": "0"}'],
                       capture_output=True, text=True, timeout=60)
    c.check(r.returncode == 1 and "PERMISSION_DENIED" in r.stderr, "an auditor's SetPolicy through it: PERMISSION_DENIED",
            r.stdout + r.stderr)
    for method in ("mailseal.v1.AuditService/ListRecords", "mailseal.v1.QueueService/ListMessages"):
        body = '{"page_token": "garbage!", "state": "hold"}' if "Queue" in method else '{"page_token": "12abc"}'
        r = subprocess.run(gen + ["--cert", f"{m}/auditor-1.crt" if "Audit" in method else f"{m}/operator-1.crt",
                                  "--key", f"{m}/auditor-1.key" if "Audit" in method else f"{m}/operator-1.key",
                                  "call", method, body], capture_output=True, text=True, timeout=60)
        c.check(r.returncode == 1 and "INVALID_ARGUMENT" in r.stderr and "page_token" in r.stderr,
                f"issue #13: a garbage page token to {method.split('/')[1]} is an error, not page one",
                r.stdout + r.stderr)

    # ---- completion and config file
    r = subprocess.run([a.mailsealctl, "completion", "bash"], capture_output=True, text=True)
    b = subprocess.run(["bash", "-c", r.stdout + "\nCOMP_WORDS=(mailsealctl queue re); COMP_CWORD=2; _mailsealctl; "
                        "echo ${COMPREPLY[@]}"], capture_output=True, text=True)
    c.check(r.returncode == 0 and "recall" in b.stdout and "release" in b.stdout,
            "bash completion completes 'queue re' to release/recall", b.stdout + b.stderr)
    conf = os.path.join(root, "ctl.conf")
    with open(conf, "w") as f:
        f.write(f"server = \"127.0.0.1:{api_port}\"\ncert = \"{m}/operator-1.crt\"\nkey = \"{m}/operator-1.key\"\n"
                f"ca = \"{m}/mgmt-ca.crt\"\n")
    r = subprocess.run([a.mailsealctl, "queue", "counts"], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, MAILSEALCTL_CONFIG=conf))
    c.check(r.returncode == 0 and "hold" in r.stdout, "connection settings from a config file", r.stdout + r.stderr)

    # ---- truncation: the exported head catches it
    gw.stop()
    with open(f"{root}/audit.log", "rb") as f:
        data = f.read()
    pos, n = 9, 0
    while pos < len(data) and n < 10:
        pos += 8 + struct.unpack("<I", data[pos:pos + 4])[0]
        n += 1
    with open(f"{root}/audit.log", "r+b") as f:
        f.truncate(pos)   # keep the first 10 records, cut at a record boundary
    gw.start()
    harness.wait_for(lambda: gw.read_log().count("management API listening") >= 2, 15, "API up again")
    rc, o, e = ctl("auditor-1", "audit", "verify", "--exported", f"{root}/exported-head.json")
    c.check(rc == 1 and "truncated" in o + e, "after truncating the log, the check against the exported head fails", o + e)
    c.check("AUDIT TRAIL DAMAGED" in gw.read_log() and "the log is truncated" in gw.read_log(),
            "issue #13: the daemon itself finds the truncation against its signed heads at start and raises the alarm")
    gw.stop()
    c.finish()


if __name__ == "__main__":
    main()
