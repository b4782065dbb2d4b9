#!/usr/bin/env python3
"""Issue #15: partner certificates discovered in the CA's LDAP directory (REQUIREMENTS.md §3,
SEE-2.8b: "gateways MUST look up the certificate in the LDAP directory of the CA ... base C=NZ,
filter domain-confidentiality-authority@<domain>, attribute userCertificate;binary"; SEE-2.8:
held, never sent in clear, while no valid certificate is known).

A real OpenLDAP slapd on a free loopback port holds the partners' DCA certificates; gateway A
has agency-b.test and agency-c.test as partners but no certificate of either.
1. Discovery: mail for agency-b is held for want of a certificate, the directory is asked in
   the background, the certificate found is validated, stored (cert store on disk) and used —
   the held copy is released by itself and leaves sealed to that certificate. The
   administrator hears nothing of a hold that ended at once.
2. Renewal: the CA revokes agency-b's DCA (CRL reloaded by SIGHUP) and the directory now holds
   the revoked and the renewed certificate: mail is held as revoked, the renewed one is
   discovered and the mail leaves sealed to it, never to the revoked one.
3. Directory down: mail for agency-c holds, each hold says the directory could not be reached,
   and the administrator gets one notice for all of it, not one per message.
4. Directory back (agency-c's certificate now published): asked again after the retry time,
   found, and every held message released and sealed — none left in hold/.
5. Hostile answers: a second directory answers with a value that is no certificate and with a
   certificate of a CA not on the trust list for agency-b: reported, ignored, mail flows.
6. The SEEMAIL list read from the directory (associatedDomain values; a value that is no
   domain is skipped): agency-x.test, on that list only, is treated as a scheme member —
   unclassified mail for it is held for want of its certificate, never sent in clear.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_pki_revocation import CA_CNF  # noqa: E402
from test_smime_gateways import make_pki, run, send, smime_conf  # noqa: E402

SLAPD_CONF = """include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {d}/slapd.pid
sizelimit 500
database mdb
maxsize 104857600
suffix "c=NZ"
rootdn "cn=admin,c=NZ"
rootpw fixture-ldap-secret
directory {d}/db
"""


class Slapd:
    """A private slapd (foreground, stopped by PID) on a free loopback port: c=NZ by default, or
    `conf` (a template with {d} for its directory) administered as `admin_dn`."""

    def __init__(self, root, port, conf=SLAPD_CONF, admin_dn="cn=admin,c=NZ", name="ldap"):
        self.dir = os.path.join(root, name)
        os.makedirs(os.path.join(self.dir, "db"), exist_ok=True)
        self.conf = os.path.join(self.dir, "slapd.conf")
        with open(self.conf, "w") as f:
            f.write(conf.format(d=self.dir))
        self.admin_dn = admin_dn
        self.port = port
        self.url = f"ldap://127.0.0.1:{port}"
        self.proc = None
        harness._cleanups.append(self.stop)

    def start(self):
        self.log = open(os.path.join(self.dir, "slapd.log"), "ab")
        self.proc = subprocess.Popen(["slapd", "-d", "0", "-f", self.conf, "-h", self.url + "/"],
                                     stdout=self.log, stderr=self.log)
        harness.wait_port(self.port, 15)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
        self.proc = None

    def ldif(self, tool, text):
        with tempfile.NamedTemporaryFile("w", suffix=".ldif", delete=False, dir=self.dir) as f:
            f.write(text)
        r = subprocess.run([tool, "-x", "-H", self.url, "-D", self.admin_dn, "-y", self.secret(), "-f", f.name],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{tool}: {r.stdout}{r.stderr}"

    def secret(self):
        p = os.path.join(self.dir, "admin.secret")
        if not os.path.exists(p):
            with open(p, "w") as f:
                f.write("fixture-ldap-secret")   # -y reads the whole file: no newline
            os.chmod(p, 0o600)
        return p


def der(pem, out):
    run(["openssl", "x509", "-in", pem, "-outform", "DER", "-out", out], os.path.dirname(out))
    return out


def entry(cn, domain, der_files, attribute="userCertificate;binary"):
    lines = [f"dn: cn={cn},c=NZ", "objectClass: inetOrgPerson", f"cn: {cn}", "sn: DCA",
             f"mail: domain-confidentiality-authority@{domain}"]
    lines += [f"{attribute}:< file://{p}" for p in der_files]
    return "\n".join(lines) + "\n\n"


def serial_of(pem):
    out = run(["openssl", "x509", "-in", pem, "-noout", "-serial"], os.path.dirname(pem))
    return int(out.strip().split("=")[1], 16)


def recipient_serials(msg, tmp):
    """The serial numbers of the certificates a sealed message was encrypted to."""
    p = os.path.join(tmp, "sealed.eml")
    with open(p, "wb") as f:
        f.write(msg)
    out = subprocess.run(["openssl", "cms", "-cmsout", "-print", "-in", p], capture_output=True, text=True).stdout
    return [int(s, 16) if s.lower().startswith("0x") else int(s) for s in re.findall(r"serialNumber: (\S+)", out)]


def sealed_for(sink, domain, number=None):
    """Sealed messages for `domain` (message `number` only, when given: Message-ID disc-N)."""
    return [m for m in sink.messages() if b"application/pkcs7-mime" in m and f"@{domain}".encode() in m
            and (number is None or f"<disc-{number}@".encode() in m)]


def admin_notices(sink):
    return [m for m in sink.messages() if b"Auto-Submitted" in m and b"To: <postmaster@agency-a.test>" in m]


def message(i, rcpt):
    return (f"From: alice@agency-a.test\r\nTo: {rcpt}\r\nSubject: discovery {i}\r\n"
            f"Message-ID: <disc-{i}@agency-a.test>\r\n\r\nbody {i}\r\n").encode()


def main():
    a = harness.args()
    c = harness.Checker("pki_ldap")
    root = harness.tempdir(a.keep)
    ca_dir, [(da, env_a, pin_a), (db, _, _), (dc, _, _)] = make_pki(
        root, a.keygen, [("gw-a", "agency-a.test"), ("gw-b", "agency-b.test"), ("gw-c", "agency-c.test")])
    # A CA with a CRL (every certificate's status is known: crl_files).
    with open(os.path.join(ca_dir, "ca.cnf"), "w") as f:
        f.write(CA_CNF.format(dir=ca_dir))
    open(os.path.join(ca_dir, "index.txt"), "w").close()
    with open(os.path.join(ca_dir, "crlnumber"), "w") as f:
        f.write("10\n")
    run("openssl ca -config ca.cnf -gencrl -out crl.pem", ca_dir)
    # A CA nobody trusts, for the hostile directory.
    run("openssl req -x509 -newkey rsa:2048 -nodes -keyout evil.key -out evil.crt -subj /CN=Evil-CA -days 30", ca_dir)
    run(f"openssl x509 -req -in {db}/dca.csr -CA evil.crt -CAkey evil.key -CAcreateserial -copy_extensions copy "
        f"-days 30 -out {db}/dca-evil.crt", ca_dir)

    ldap = Slapd(root, harness.free_port())
    ldap.start()
    ldap.ldif("ldapadd", "dn: c=NZ\nobjectClass: country\nc: NZ\n\n"
              + entry("agency-b DCA", "agency-b.test", [der(f"{db}/dca.crt", f"{db}/dca.der")])
              + "dn: ou=hostile,c=NZ\nobjectClass: organizationalUnit\nou: hostile\n\n"
              + "dn: cn=junk,ou=hostile,c=NZ\nobjectClass: inetOrgPerson\ncn: junk\nsn: junk\n"
              + "mail: domain-confidentiality-authority@agency-b.test\n"
              + f"userCertificate;binary:< file://{der(f'{db}/dca-evil.crt', f'{db}/dca-evil.der')}\n"
              + "jpegPhoto:: bm90IGEgY2VydGlmaWNhdGUgYXQgYWxs\n\n"
              + "dn: o=agency-x,c=NZ\nobjectClass: organization\nobjectClass: domainRelatedObject\no: agency-x\n"
              + "associatedDomain: agency-x.test\n\n"
              + "dn: o=junk-list,c=NZ\nobjectClass: organization\nobjectClass: domainRelatedObject\no: junk-list\n"
              + "associatedDomain: not a domain (at all)\n\n")

    sink = harness.Sink(root)
    directories = (f'directories {{ url: "{ldap.url}" ca_file: "{ca_dir}/ca.crt" timeout_ms: 3000 }} '
                   f'directories {{ url: "{ldap.url}" base: "ou=hostile,c=NZ" attribute: "jpegPhoto" }} '
                   f'directories {{ url: "{ldap.url}" base: "ou=hostile,c=NZ" }} '
                   f'directory_retry_s: 2 crl_files: "{ca_dir}/crl.pem" '
                   f'seemail_directory {{ url: "{ldap.url}" refresh_s: 2 }} ')
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port, name="a", local_domain="agency-a.test",
                           env=env_a, hostname="gw-a.test",
                           extra=smime_conf("gw-a", da, pin_a, ca_dir,
                                            'partners { domain: "agency-b.test" } partners { domain: "agency-c.test" } '
                                            + directories))
    gw.start()
    harness.wait_for(lambda: "security module ready" in gw.read_log(), 15, "token opened")

    # 1. Discovery: held, looked up, stored, released, sealed to the directory's certificate.
    r = send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(1, "bob@agency-b.test"))
    c.check(b"250 2.0.0" in r, "accepted")
    got = harness.eventually(lambda: sealed_for(sink, "agency-b.test") or None, 30, "sealed for agency-b")
    c.check(got is not None, "the certificate is discovered in LDAP and the held mail leaves sealed (SEE-2.8b)",
            gw.read_log()[-1500:])
    serial1 = serial_of(f"{db}/dca.crt")
    c.check(got is not None and recipient_serials(got[0], root) == [serial1],
            "sealed to the certificate the directory published", got and recipient_serials(got[0], root))
    log = gw.read_log()
    c.check("held" in log and "released from hold: the certificate it waited for is known" in log,
            "the copy was held and then released by itself", log[-1500:])
    c.check(os.path.exists(os.path.join(gw.spool, "certs", "agency-b.test.dca.pem")),
            "the discovered certificate is stored (survives a restart)")
    c.check(not gw.queue_files("hold"), "nothing left in hold/")
    c.check("not a certificate" in log or "1 value" in log, "the directory answering junk is reported in the lookup",
            "\n".join(l for l in log.splitlines() if "certdisc" in l)[-800:])
    # Hostile answers (a value that is no certificate; a certificate from an untrusted CA) did not
    # displace the real one.
    stored = gw.stored_file("certs/agency-b.test.dca.pem").decode()   # sealed at rest (issue #19)
    with open(f"{db}/dca.crt") as f:
        c.check(f.read().strip() == stored.strip(), "the stored certificate is the trusted CA's, not the hostile one")

    # 2. Revoked, and the directory holds the renewal: held as revoked, renewed one discovered.
    run(f"openssl x509 -req -in dca.csr -CA {ca_dir}/ca.crt -CAkey {ca_dir}/ca.key -CAcreateserial "
        f"-copy_extensions copy -days 30 -out dca2.crt", db)
    serial2 = serial_of(f"{db}/dca2.crt")
    run(f"openssl ca -config ca.cnf -revoke {db}/dca.crt -crl_reason superseded", ca_dir)
    run("openssl ca -config ca.cnf -gencrl -out crl.pem", ca_dir)
    ldap.ldif("ldapmodify", "dn: cn=agency-b DCA,c=NZ\nchangetype: modify\nreplace: userCertificate;binary\n"
              f"userCertificate;binary:< file://{db}/dca.der\n"
              f"userCertificate;binary:< file://{der(f'{db}/dca2.crt', f'{db}/dca2.der')}\n\n")
    gw.proc.send_signal(signal.SIGHUP)
    harness.wait_for(lambda: "pinned partner certificates reloaded" in gw.read_log(), 15, "certificates reloaded")
    send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message(2, "bob@agency-b.test"))
    got = harness.eventually(lambda: sealed_for(sink, "agency-b.test", 2) or None, 40, "second sealed for agency-b")
    c.check(got is not None and recipient_serials(got[0], root) == [serial2],
            "after revocation the renewed certificate is discovered and used (never the revoked one)",
            (got and recipient_serials(got[0], root), serial2, gw.read_log()[-1500:]))
    log = gw.read_log()
    c.check(re.search(r"DCA certificate for agency-b.test is revoked", log) is not None, "the mail was held as revoked first",
            log[-1500:])
    c.check(all(recipient_serials(m, root) != [serial1] for m in sealed_for(sink, "agency-b.test", 2)),
            "nothing sealed to the revoked certificate after the revocation")

    # 3. Directory down: held, the reason says why, one notice to the administrator.
    ldap.stop()
    for i in range(3, 6):
        send(gw.port, "alice@agency-a.test", ["carol@agency-c.test"], message(i, "carol@agency-c.test"))
    c.check(harness.eventually(lambda: len(gw.queue_files("hold")) >= 3, 30, "three held"), "with LDAP down, mail holds")
    log = gw.read_log()
    c.check("Can't contact LDAP server" in log, "the lookup failure is named (directory unreachable)",
            "\n".join(l for l in log.splitlines() if "agency-c" in l)[-800:])
    got = harness.eventually(lambda: admin_notices(sink) or None, 40, "notice to the administrator")
    time.sleep(3)
    n = admin_notices(sink)
    c.check(got is not None and len(n) == 1 and n[0].count(b"agency-c.test") >= 3,
            "the administrator gets one notice for all held messages, not one per message",
            [m[:800] for m in n])
    c.check(not any(b"bob@agency-b.test" in m for m in n),
            "holds that ended when the certificate was found are not reported")

    # 4. Directory back with agency-c's certificate: found on the next retry, all released. That
    # certificate names an ldap:// CRL distribution point (RFC 4516 URL): its CRL is fetched from
    # the directory too (through libldap) and cached.
    ldap.start()
    crl_url = f"{ldap.url}/cn=Test-Root-CA%2Cc=NZ?certificateRevocationList;binary"   # RFC 4516: the comma escaped
    with open(os.path.join(dc, "dp.ext"), "w") as f:
        f.write(f"crlDistributionPoints = dp_sect\n[dp_sect]\nfullname = URI:{crl_url}\n")
    run(f"openssl x509 -req -in dca.csr -CA {ca_dir}/ca.crt -CAkey {ca_dir}/ca.key -CAcreateserial "
        f"-copy_extensions copy -extfile dp.ext -days 30 -out dca.crt", dc)
    run("openssl crl -in crl.pem -outform DER -out crl.der", ca_dir)
    ldap.ldif("ldapadd", entry("agency-c DCA", "agency-c.test", [der(f"{dc}/dca.crt", f"{dc}/dca.der")])
              + "dn: cn=Test-Root-CA,c=NZ\nobjectClass: organizationalRole\nobjectClass: certificationAuthority\n"
              + f"cn: Test-Root-CA\ncACertificate;binary:< file://{der(f'{ca_dir}/ca.crt', f'{ca_dir}/ca.der')}\n"
              + f"certificateRevocationList;binary:< file://{ca_dir}/crl.der\n"
              + f"authorityRevocationList;binary:< file://{ca_dir}/crl.der\n\n")
    got = harness.eventually(lambda: len(sealed_for(sink, "agency-c.test")) >= 3 or None, 60, "agency-c released")
    c.check(got is not None, "once the directory answers, every held message is released and sealed",
            gw.read_log()[-1500:])
    c.check(harness.eventually(lambda: not gw.queue_files("hold"), 15, "hold empty"), "hold/ is empty")
    c.check(all(recipient_serials(m, root) == [serial_of(f"{dc}/dca.crt")] for m in sealed_for(sink, "agency-c.test")),
            "sealed to agency-c's certificate")
    crl_dir = os.path.join(gw.spool, "certs", "crls")

    def ldap_crl_cached():
        for f in os.listdir(crl_dir) if os.path.isdir(crl_dir) else []:
            with open(os.path.join(crl_dir, f), errors="replace") as fh:
                if fh.readline().strip() == f"# {crl_url}":
                    return True
        return None
    c.check(harness.eventually(ldap_crl_cached, 30, "CRL from LDAP cached"),
            "the CRL named by an ldap:// distribution point is fetched from the directory and cached",
            os.listdir(crl_dir) if os.path.isdir(crl_dir) else "no crls/")
    # 6. The SEEMAIL list from the directory.
    c.check(harness.eventually(lambda: re.search(r"SEEMAIL list read from the directory .*entries=1 skipped=1",
                                                 gw.read_log()), 30, "SEEMAIL list read"),
            "the SEEMAIL list is read from the directory (a value that is no domain skipped)",
            "\n".join(l for l in gw.read_log().splitlines() if "SEEMAIL" in l)[-400:])
    n_hold = len(gw.queue_files("hold"))
    send(gw.port, "alice@agency-a.test", ["xavier@agency-x.test"], message(20, "xavier@agency-x.test"))
    c.check(harness.eventually(lambda: len(gw.queue_files("hold")) > n_hold, 30, "held for agency-x"),
            "a domain on the directory's SEEMAIL list is a scheme member: held for want of its certificate",
            "\n".join(l for l in gw.read_log().splitlines() if "agency-x" in l)[-600:])
    c.check(not any(b"body 20" in m for m in sink.messages()), "nothing for it left in clear")
    clear = [m for m in sink.messages() if b"body " in m and b"application/pkcs7-mime" not in m
             and b"Auto-Submitted" not in m]
    c.check(not clear, "nothing for a partner ever left in clear", [m[:300] for m in clear])
    c.check(gw.stop() == 0, "clean stop")
    ldap.stop()
    c.finish()


if __name__ == "__main__":
    main()
