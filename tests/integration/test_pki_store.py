#!/usr/bin/env python3
"""Issue #15: the partner certificate store managed through the API and `mailsealctl certs`
(REQUIREMENTS.md §3: SEE-2.7 trust list, SEE-2.8 hold until a valid certificate is known,
SEE-2.8b/2.10 certificates obtained and kept; every management action authenticated,
authorised and audited).

1. Mail for partner agency-b (no certificate known) is held; an administrator adds agency-b's
   DCA certificate (`certs add`): validated, stored, and the held mail is released by itself
   and leaves sealed to it. `certs show` gives the certificate with its chain and status.
2. A certificate that does not qualify (another domain's; from a CA not on the trust list) is
   refused with the reason; an auditor may not add one.
3. The partner's renewal, valid from a few seconds ahead, is added: kept as "next"; when its
   time comes mail is sealed to it with nobody doing anything, and it becomes current (the
   previous one old).
4. A DCA pinned through the API survives a restart; one pinned in the configuration cannot be
   removed through the API; `certs remove` forgets a partner's certificates and its mail is
   held again.
5. Every mutating call is in the audit trail.
"""
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_control_api import control_pki, ctl_as  # noqa: E402
from test_pki_ldap import recipient_serials, sealed_for, serial_of  # noqa: E402
from test_smime_gateways import make_pki, run, send, smime_conf  # noqa: E402

CA_ISSUE = """[ca]
default_ca = test
[test]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/issued
serial = $dir/serial
certificate = $dir/ca.crt
private_key = $dir/ca.key
default_md = sha256
policy = anything
copy_extensions = copy
unique_subject = no
[anything]
commonName = supplied
"""


def message(i, rcpt):
    return (f"From: alice@agency-a.test\r\nTo: {rcpt}\r\nSubject: store {i}\r\n"
            f"Message-ID: <disc-{i}@agency-a.test>\r\n\r\nbody {i}\r\n").encode()


def main():
    a = harness.args()
    c = harness.Checker("pki_store")
    root = harness.tempdir(a.keep)
    ca_dir, [(da, env_a, pin_a), (db, _, _), (dc, _, _), (dd, _, _)] = make_pki(
        root, a.keygen, [("gw-a", "agency-a.test"), ("gw-b", "agency-b.test"), ("gw-c", "agency-c.test"),
                         ("gw-d", "agency-d.test")])
    m = control_pki(root, a.keygen, da, env_a, pin_a, ca_dir, ("admin-1", "auditor-1"))
    run("openssl req -x509 -newkey rsa:2048 -nodes -keyout evil.key -out evil.crt -subj /CN=Evil-CA -days 30", ca_dir)
    run(f"openssl x509 -req -in {db}/dca.csr -CA evil.crt -CAkey evil.key -CAcreateserial -copy_extensions copy "
        f"-days 30 -out {db}/dca-evil.crt", ca_dir)
    api_port = harness.free_port()
    audit_log = os.path.join(root, "audit.log")
    control = (f'control {{ listen: "127.0.0.1:{api_port}" cert_file: "{m}/server.crt" key_file: "{m}/server.key" '
               f'client_ca_file: "{m}/mgmt-ca.crt" roles {{ common_name: "admin-1" role: "administrator" }} '
               f'roles {{ common_name: "auditor-1" role: "auditor" }} audit {{ log_path: "{audit_log}" '
               f'heads_path: "{root}/audit.heads" head_every: 5 key_label: "audit" }} }}')
    sink = harness.Sink(root)
    partners = ('partners { domain: "agency-b.test" } partners { domain: "agency-d.test" } '
                f'partners {{ domain: "agency-c.test" dca_cert_file: "{dc}/dca.crt" }}')
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port, name="a", local_domain="agency-a.test",
                           env=env_a, hostname="gw-a.test", extra=smime_conf("gw-a", da, pin_a, ca_dir, partners) + control)
    gw.start()
    harness.wait_for(lambda: "management API listening" in gw.read_log(), 15, "API up")
    admin, auditor = ctl_as(a.mailsealctl, api_port, m, "admin-1"), ctl_as(a.mailsealctl, api_port, m, "auditor-1")

    # 1. Held, added by an administrator, released and sealed.
    send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(1, "bob@agency-b.test"))
    c.check(harness.eventually(lambda: gw.queue_files("hold"), 30, "held"), "no certificate known: held (SEE-2.8)")
    rc, o, e = admin("certs", "add", "agency-b.test", f"{db}/dca.crt")
    c.check(rc == 0 and "dca certificate" in o, "certs add: the partner's DCA certificate is validated and stored", o + e)
    got = harness.eventually(lambda: sealed_for(sink, "agency-b.test", 1) or None, 30, "released and sealed")
    serial1 = serial_of(f"{db}/dca.crt")
    c.check(got is not None and recipient_serials(got[0], root) == [serial1],
            "the held mail is released by itself and sealed to the added certificate", gw.read_log()[-800:])
    rc, o, e = admin("certs", "show", "agency-b.test")
    c.check(rc == 0 and "dca current (learnt)" in o and "status:    valid" in o and "CN=Test-Root-CA" in o
            and "BEGIN CERTIFICATE" in o, "certs show: the certificate, its slot, chain and status", o + e)

    # 2. Refusals.
    rc, o, e = admin("certs", "add", "agency-d.test", f"{db}/dca.crt")
    c.check(rc != 0 and "does not name domain-confidentiality-authority@agency-d.test" in e,
            "a certificate naming another domain is refused with the reason", o + e)
    rc, o, e = admin("certs", "add", "agency-b.test", f"{db}/dca-evil.crt")
    c.check(rc != 0 and "no path to a trust anchor" in e, "a certificate from a CA not on the trust list is refused", o + e)
    rc, o, e = auditor("certs", "add", "agency-d.test", f"{dd}/dca.crt")
    c.check(rc == 3, "an auditor may not add a certificate", o + e)

    # 3. The renewal, valid from a few seconds ahead: next, then used, then current.
    with open(os.path.join(ca_dir, "issue.cnf"), "w") as f:
        f.write(CA_ISSUE.format(dir=ca_dir))
    os.makedirs(os.path.join(ca_dir, "issued"), exist_ok=True)
    if not os.path.exists(os.path.join(ca_dir, "index.txt")):
        open(os.path.join(ca_dir, "index.txt"), "w").close()
    with open(os.path.join(ca_dir, "serial"), "w") as f:
        f.write("7001\n")
    start = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=12)
    run(f"openssl ca -batch -config issue.cnf -in {db}/dca.csr -startdate {start.strftime('%Y%m%d%H%M%SZ')} "
        f"-enddate {(start + datetime.timedelta(days=30)).strftime('%Y%m%d%H%M%SZ')} -out {db}/dca-next.crt", ca_dir)
    rc, o, e = admin("certs", "add", "agency-b.test", f"{db}/dca-next.crt")
    c.check(rc == 0 and "next dca certificate" in o, "a renewal valid from a future date is kept as the next one", o + e)
    rc, o, e = admin("-o", "json", "certs", "list")
    slots = {(x.get("domain"), x.get("slot")) for x in json.loads(o).get("certificates", [])} if rc == 0 else set()
    c.check(("agency-b.test", "next") in slots and ("agency-b.test", "current") in slots,
            "certs list shows the current and the next certificate", o[:400] + e)
    send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(2, "bob@agency-b.test"))
    got = harness.eventually(lambda: sealed_for(sink, "agency-b.test", 2) or None, 30, "sealed before the renewal")
    c.check(got is not None and recipient_serials(got[0], root) == [serial1], "before its time the current one is used")
    time.sleep(max(0, (start - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) + 2)
    send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(3, "bob@agency-b.test"))
    got = harness.eventually(lambda: sealed_for(sink, "agency-b.test", 3) or None, 30, "sealed after the renewal")
    c.check(got is not None and recipient_serials(got[0], root) == [0x7001],
            "when its time comes the renewal is used, with nobody doing anything", got and recipient_serials(got[0], root))

    def promoted():
        rc, o, e = admin("-o", "json", "certs", "show", "agency-b.test")
        if rc != 0:
            return None
        cur = [x for x in json.loads(o).get("certificates", []) if x.get("kind") == "dca"]
        by_slot = {x.get("slot"): x.get("serial") for x in cur}
        return by_slot if by_slot.get("current", "").upper() == "7001" and "old" in by_slot else None
    c.check(harness.eventually(promoted, 60, "renewal promoted"), "the renewal becomes current and the previous one old")

    # 4. Pins and removal.
    rc, o, e = admin("certs", "pin", "agency-d.test", f"{dd}/dca.crt")
    c.check(rc == 0, "certs pin: a DCA pinned through the API", o + e)
    rc, o, e = admin("certs", "remove", "agency-c.test")
    c.check(rc != 0 and "pinned in the configuration" in e, "a DCA pinned in the configuration is not removed through the API",
            o + e)
    c.check(gw.stop() == 0, "clean stop")
    gw.start()
    harness.wait_for(lambda: "management API listening" in gw.read_log(), 15, "API up again")
    rc, o, e = admin("certs", "show", "agency-d.test")
    c.check(rc == 0 and "dca current (pinned)" in o, "an API pin survives a restart", o + e)
    rc, o, e = admin("certs", "remove", "agency-b.test")
    c.check(rc == 0, "certs remove forgets a partner's DCA certificates", o + e)
    n_hold = len(gw.queue_files("hold"))
    send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(4, "bob@agency-b.test"))
    c.check(harness.eventually(lambda: len(gw.queue_files("hold")) > n_hold, 30, "held again"),
            "after removal mail for the partner is held again, never sent in clear")
    c.check(not sealed_for(sink, "agency-b.test", 4), "nothing sealed to the removed certificate")

    # 5. Audited.
    with open(audit_log, errors="replace") as f:
        trail = f.read()
    for method in ("CertService.AddCertificate", "CertService.RemoveCertificate"):
        c.check(method in trail, f"{method} is in the audit trail")
    c.check(gw.stop() == 0, "clean stop")
    c.finish()


if __name__ == "__main__":
    main()
