#!/usr/bin/env python3
"""Issue #15 ("beyond the seeds"): partner DCA certificates discovered from DNSSEC-validated
SMIMEA records (RFC 8162) through libunbound, and our own published as zone-file lines.
REQUIREMENTS.md §3 (SEE-2.8b: certificates looked up before mail is held; SEE-2.8: held, never
sent in clear, while no valid certificate is known).

A real unbound on a free loopback port serves the zone "example." signed here with
ldns-signzone (ECDSA P-256 KSK + ZSK); gateway A validates from the KSK's DS record.
1. agency-d.example publishes its DCA certificate in an SMIMEA record: mail for it is held
   for want of a certificate, the record is found and validated, the certificate used — the
   mail leaves sealed to it.
2. agency-e.example's record was changed after signing (another certificate, valid and from
   the trusted CA, so only DNSSEC can tell): the answer is bogus, ignored with the validator's
   reason, and the mail stays held — never sealed to the forged certificate.
3. Management: `mailsealctl certs smimea` prints our own DSA and DCA certificates as SMIMEA
   zone lines (owner name and certificate checked here independently: Python's hashlib and
   `openssl x509 -outform DER`); `certs lookups` shows the domain still looked for and why;
   `certs refresh` asks again now (an auditor may not).
4. Approval (SEE-2.8b: "discovery can be automatic or need an administrator's approval"):
   restarted with discovery_approval MANUAL, mail for agency-f.example is held; its
   certificate is found in SMIMEA but waits ("pending" in `certs show`, the lookup state says
   so) and nothing is sealed until `certs approve` — then the held mail leaves sealed to it.
"""
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_pki_ldap import recipient_serials, sealed_for, serial_of  # noqa: E402
from test_control_api import control_pki, ctl_as  # noqa: E402
from test_smime_gateways import make_pki, run, send, smime_conf  # noqa: E402

UNBOUND_CONF = """server:
  interface: 127.0.0.1
  port: {port}
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "{d}"
  pidfile: "{d}/unbound.pid"
  use-syslog: no
  logfile: ""
  verbosity: 1
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  do-not-query-localhost: no
auth-zone:
  name: "example."
  zonefile: "{zone}"
  for-downstream: yes
  for-upstream: no
"""


def owner(address):
    """RFC 8162 §3.1: SHA-256 of the local part, first 28 octets, hex."""
    import hashlib
    local, domain = address.rsplit("@", 1)
    return f"{hashlib.sha256(local.encode()).hexdigest()[:56]}._smimecert.{domain}."


def der_hex(pem, cwd):
    out = subprocess.run(["openssl", "x509", "-in", pem, "-outform", "DER"], capture_output=True, check=True, cwd=cwd).stdout
    return out.hex()


class Unbound:
    def __init__(self, root, zonefile):
        self.dir = os.path.join(root, "dns")
        os.makedirs(self.dir, exist_ok=True)
        self.port = harness.free_port()
        self.conf = os.path.join(self.dir, "unbound.conf")
        with open(self.conf, "w") as f:
            f.write(UNBOUND_CONF.format(port=self.port, d=self.dir, zone=zonefile))
        self.proc = None
        harness._cleanups.append(self.stop)

    def start(self):
        log = open(os.path.join(self.dir, "unbound.log"), "ab")
        self.proc = subprocess.Popen(["unbound", "-d", "-c", self.conf], stdout=log, stderr=log)
        harness.wait_for(lambda: "start of service" in open(os.path.join(self.dir, "unbound.log"), errors="replace").read(),
                         15, "unbound serving")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
        self.proc = None


def sign_zone(d, records):
    """The zone "example." with `records` (zone-file lines), signed; returns (signed file, DS file)."""
    ksk = run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", "example"], d).strip()
    zsk = run(["ldns-keygen", "-a", "ECDSAP256SHA256", "example"], d).strip()
    zone = os.path.join(d, "example.zone")
    with open(zone, "w") as f:
        f.write("$ORIGIN example.\n$TTL 3600\n@ IN SOA ns.example. hostmaster.example. 1 3600 900 604800 300\n"
                "@ IN NS ns.example.\nns IN A 127.0.0.1\n" + "".join(r + "\n" for r in records))
    run(["ldns-signzone", zone, ksk, zsk], d)
    return zone + ".signed", os.path.join(d, ksk + ".ds")


def main():
    a = harness.args()
    c = harness.Checker("pki_smimea")
    root = harness.tempdir(a.keep)
    ca_dir, [(da, env_a, pin_a), (dd, _, _), (de, _, _), (df, _, _)] = make_pki(
        root, a.keygen, [("gw-a", "agency-a.test"), ("gw-d", "agency-d.example"), ("gw-e", "agency-e.example"),
                         ("gw-f", "agency-f.example")])
    # agency-e's certificate issued again: the forgery put in place of the signed record.
    run(f"openssl x509 -req -in dca.csr -CA {ca_dir}/ca.crt -CAkey {ca_dir}/ca.key -CAcreateserial "
        f"-copy_extensions copy -days 30 -out forged.crt", de)
    zdir = os.path.join(root, "zone")
    os.makedirs(zdir)
    dca_d = "domain-confidentiality-authority@agency-d.example"
    dca_e = "domain-confidentiality-authority@agency-e.example"
    dca_f = "domain-confidentiality-authority@agency-f.example"
    signed, ds = sign_zone(zdir, [f"{owner(dca_d)} IN SMIMEA 1 0 0 {der_hex(f'{dd}/dca.crt', dd)}",
                                  f"{owner(dca_f)} IN SMIMEA 1 0 0 {der_hex(f'{df}/dca.crt', df)}",
                                  f"{owner(dca_e)} IN SMIMEA 1 0 0 {der_hex(f'{de}/dca.crt', de)}"])
    # Forge agency-e's record after signing: its RRSIG no longer matches.
    lines, forged = [], 0
    for line in open(signed):
        if line.startswith(owner(dca_e)) and "\tSMIMEA\t" in line:
            line = re.sub(r"SMIMEA\t.*$", f"SMIMEA\t1 0 0 {der_hex(f'{de}/forged.crt', de)}", line)
            forged += 1
        lines.append(line)
    with open(signed, "w") as f:
        f.writelines(lines)
    assert forged == 1, "the record to forge was not found in the signed zone"
    dns = Unbound(root, signed)
    dns.start()

    m = control_pki(root, a.keygen, da, env_a, pin_a, ca_dir, ("admin-1", "auditor-1"))
    api_port = harness.free_port()
    control = (f'control {{ listen: "127.0.0.1:{api_port}" cert_file: "{m}/server.crt" key_file: "{m}/server.key" '
               f'client_ca_file: "{m}/mgmt-ca.crt" roles {{ common_name: "admin-1" role: "administrator" }} '
               f'roles {{ common_name: "auditor-1" role: "auditor" }} audit {{ log_path: "{root}/audit.log" '
               f'heads_path: "{root}/audit.heads" head_every: 5 key_label: "audit" }} }}')
    sink = harness.Sink(root)
    smimea = f'smimea {{ resolver: "127.0.0.1@{dns.port}" trust_anchor_file: "{ds}" timeout_ms: 5000 }} directory_retry_s: 2 '
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port, name="a", local_domain="agency-a.test",
                           env=env_a, hostname="gw-a.test",
                           extra=smime_conf("gw-a", da, pin_a, ca_dir,
                                            'partners { domain: "agency-d.example" } partners { domain: "agency-e.example" } '
                                            + smimea) + control)
    gw.start()
    harness.wait_for(lambda: "security module ready" in gw.read_log(), 15, "token opened")

    # 1. Found only in DNS, validated, used.
    send(gw.port, "alice@agency-a.test", ["dan@agency-d.example"],
         b"From: alice@agency-a.test\r\nTo: dan@agency-d.example\r\nSubject: smimea\r\n"
         b"Message-ID: <disc-1@agency-a.test>\r\n\r\nbody 1\r\n")
    got = harness.eventually(lambda: sealed_for(sink, "agency-d.example") or None, 30, "sealed for agency-d")
    c.check(got is not None and recipient_serials(got[0], root) == [serial_of(f"{dd}/dca.crt")],
            "a partner certificate found only in a DNSSEC-signed SMIMEA record is used (RFC 8162)",
            gw.read_log()[-1500:])
    log = gw.read_log()
    c.check(re.search(r"SMIMEA lookup domain=agency-d.example answer=\"SMIMEA \(DNSSEC secure\): 1 certificate\" learnt=\"dca certificate\"", log), "the log says where the certificate came from",
            "\n".join(l for l in log.splitlines() if "certdisc" in l)[-600:])

    # 2. A record failing validation is ignored: held, never sealed to the forged certificate.
    send(gw.port, "alice@agency-a.test", ["erin@agency-e.example"],
         b"From: alice@agency-a.test\r\nTo: erin@agency-e.example\r\nSubject: smimea forged\r\n"
         b"Message-ID: <disc-2@agency-a.test>\r\n\r\nbody 2\r\n")
    c.check(harness.eventually(lambda: "failed DNSSEC validation" in gw.read_log(), 30, "bogus answer"),
            "the forged record fails DNSSEC validation and is refused with the validator's reason",
            "\n".join(l for l in gw.read_log().splitlines() if "certdisc" in l)[-800:])
    time.sleep(5)   # two more retries (directory_retry_s: 2) come to the same
    c.check(len(gw.queue_files("hold")) == 1 and not sealed_for(sink, "agency-e.example"),
            "mail for agency-e stays held: nothing sealed to a certificate DNSSEC did not vouch for")
    c.check(not os.path.exists(os.path.join(gw.spool, "certs", "agency-e.example.dca.pem")),
            "the forged certificate is not stored")

    # 3. Management.
    harness.wait_for(lambda: "management API listening" in gw.read_log(), 15, "API up")
    admin, auditor = ctl_as(a.mailsealctl, api_port, m, "admin-1"), ctl_as(a.mailsealctl, api_port, m, "auditor-1")
    rc, o, e = admin("certs", "smimea", "--ttl", "600")
    want = {f"{owner('domain-signing-authority@agency-a.test')} 600 IN SMIMEA 1 0 0 {der_hex(f'{da}/dsa.crt', da)}",
            f"{owner('domain-confidentiality-authority@agency-a.test')} 600 IN SMIMEA 1 0 0 {der_hex(f'{da}/dca.crt', da)}"}
    got_lines = {l.split(" ;")[0] for l in o.splitlines() if l.strip()}
    c.check(rc == 0 and got_lines == want, "certs smimea: our DSA and DCA certificates as RFC 8162 zone lines",
            (o + e)[:400])
    rc, o, e = admin("certs", "lookups")
    c.check(rc == 0 and "agency-e.example" in o and "DNSSEC" in o, "certs lookups: the domain still looked for, and why",
            o + e)
    rc, o, e = auditor("certs", "refresh", "agency-e.example")
    c.check(rc != 0, "an auditor may not start a lookup", o + e)
    rc, o, e = admin("certs", "refresh", "agency-e.example")
    c.check(rc == 0 and "failed DNSSEC validation" in o, "certs refresh asks now and says what came of it", o + e)
    c.check(gw.stop() == 0, "clean stop")

    # 4. Approval required.
    with open(gw.config) as f:
        conf = f.read().replace("directory_retry_s: 2", "directory_retry_s: 2 discovery_approval: DISCOVERY_APPROVAL_MANUAL "
                                'partners { domain: "agency-f.example" }')
    with open(gw.config, "w") as f:
        f.write(conf)
    gw.start()
    harness.wait_for(lambda: "management API listening" in gw.read_log(), 15, "API up again")
    send(gw.port, "alice@agency-a.test", ["fay@agency-f.example"],
         b"From: alice@agency-a.test\r\nTo: fay@agency-f.example\r\nSubject: approval\r\n"
         b"Message-ID: <disc-3@agency-a.test>\r\n\r\nbody 3\r\n")
    c.check(harness.eventually(lambda: "awaits an administrator's approval" in gw.read_log(), 30, "pending"),
            "the certificate found for agency-f waits for an administrator's approval", gw.read_log()[-800:])
    rc, o, e = admin("certs", "show", "agency-f.example")
    c.check(rc == 0 and "dca pending" in o, "certs show lists it as pending", o + e)
    rc, o, e = admin("certs", "lookups")
    c.check(rc == 0 and "certs approve agency-f.example" in o, "the lookup state says what to do", o + e)
    time.sleep(3)
    c.check(not sealed_for(sink, "agency-f.example") and gw.queue_files("hold"), "nothing is sealed to it before approval")
    rc, o, e = auditor("certs", "approve", "agency-f.example")
    c.check(rc != 0, "an auditor may not approve", o + e)
    rc, o, e = admin("certs", "approve", "agency-f.example")
    c.check(rc == 0 and "dca certificate" in o, "certs approve takes it", o + e)
    got = harness.eventually(lambda: sealed_for(sink, "agency-f.example", 3) or None, 30, "sealed after approval")
    c.check(got is not None and recipient_serials(got[0], root) == [serial_of(f"{df}/dca.crt")],
            "after approval the held mail leaves sealed to the approved certificate")
    c.check(gw.stop() == 0, "clean stop")
    dns.stop()
    c.finish()


if __name__ == "__main__":
    main()
