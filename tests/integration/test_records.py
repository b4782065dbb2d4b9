#!/usr/bin/env python3
"""Issue #19 (records): mail at rest, content scanning and the recipient directory, with real
servers (REQUIREMENTS.md DE-11, DE-15, DE-22).

Two gateways, agency-a.test (A) and agency-b.test (B), each with its own SoftHSM token, seal
and open mail between them. B checks its local recipients in a real slapd (DE-11) and scans
with a real clamd loaded with a signature database written here (no signature download is
possible); A scans outbound mail, before sealing, with a milter the test runs (pymilter over
Sendmail's libmilter).

1. Directory: a known user 250, an unknown one 550 5.1.1 at RCPT (nothing accepted, so no
   bounce), postmaster always 250, a bound search (the bind DN and password file) over StartTLS
   works; with slapd stopped an address not yet cached gets 451 4.4.3, never 5xx; with a CA the
   directory's certificate does not chain to, 451 too (checked at the end).
2. At rest (DE-22): 100 messages, 50 each way, then 10 more that wait in B's queue (B's
   internal server down) and one held on A: no file under either spool holds a fragment of any
   body or subject, nor an envelope address; the files name their data key; after a restart
   (a new data key) the waiting mail is read with the old one and delivered byte for byte.
3. Scanning: the EICAR test string inside a zip inside an S/MIME-encrypted message from A is
   caught by clamd after B decrypts it and quarantined (held, with the signature in the
   reason), never delivered; the milter on A rejects one message (the sender gets a DSN) and
   quarantines another; with clamd stopped B holds mail with "scanner unavailable".
4. A data key file removed: the files sealed under it are set aside in corrupt/ with the
   reason at the next start, never deleted and never delivered.
5. The e-records archive (DE-21) on A: every message that went on is archived (the grep of
   step 2 covers the archive files too); an export through an open-archive ceremony needs 2
   of 3 custodians each bringing their share — with one it stays pending, the same custodian
   twice is refused — and gives the messages byte for byte, as mbox (by sender) and as
   Maildir (by recipient); the export is in the audit trail, and the ceremony's transcript
   names the query, both approvals and the result.
"""
import json
import base64
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_control_api import control_pki  # noqa: E402
from test_pki_ldap import Slapd  # noqa: E402
from test_smime_gateways import make_pki, run, send, smime_conf  # noqa: E402

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

SLAPD_CONF = """include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {d}/slapd.pid
TLSCACertificateFile {d}/tls-ca.crt
TLSCertificateFile {d}/tls.crt
TLSCertificateKeyFile {d}/tls.key
database mdb
maxsize 104857600
suffix "dc=agency-b,dc=test"
rootdn "cn=admin,dc=agency-b,dc=test"
rootpw fixture-ldap-secret
directory {d}/db
access to attrs=userPassword by anonymous auth by * none
access to * by dn.exact="cn=gateway,ou=services,dc=agency-b,dc=test" read by * none
"""

MILTER = r'''
import os, sys, Milter
class Filter(Milter.Base):
    def __init__(self):
        self.data = b""
    def body(self, chunk):
        self.data += chunk
        return Milter.CONTINUE
    def eom(self):
        if b"MILTER-REJECT" in self.data:
            self.setreply("550", "5.7.1", "policy word found by the test milter")
            return Milter.REJECT
        if b"MILTER-QUARANTINE" in self.data:
            self.quarantine("the test milter wants a human to look")
        return Milter.ACCEPT
os.umask(0)
Milter.factory = Filter
Milter.runmilter("testmilter", "unix:" + sys.argv[1], 60)
'''


class Clamd:
    def __init__(self, root):
        self.dir = os.path.join(root, "clamd")
        os.makedirs(os.path.join(self.dir, "db"))
        os.makedirs(os.path.join(self.dir, "tmp"))
        # A body signature for the EICAR string (ClamAV's .ndb format: name:target:offset:hex).
        with open(os.path.join(self.dir, "db", "mailseal-test.ndb"), "w") as f:
            f.write(f"Eicar-Test-Signature:0:*:{EICAR.hex()}\n")
        self.socket = os.path.join(self.dir, "clamd.sock")
        self.conf = os.path.join(self.dir, "clamd.conf")
        with open(self.conf, "w") as f:
            f.write(f"LocalSocket {self.socket}\nLocalSocketMode 666\nDatabaseDirectory {self.dir}/db\n"
                    f"TemporaryDirectory {self.dir}/tmp\nForeground yes\nBytecode no\nLogFile {self.dir}/clamd.log\n"
                    f"PidFile {self.dir}/clamd.pid\nScanArchive yes\nScanMail yes\n")
        self.proc = None
        harness._cleanups.append(self.stop)

    def start(self):
        log = open(os.path.join(self.dir, "clamd.out"), "ab")
        self.proc = subprocess.Popen(["clamd", "-c", self.conf], stdout=log, stderr=log)
        harness.wait_for(lambda: os.path.exists(self.socket) and self.ping(), 60, "clamd answers PING")

    def ping(self):
        import socket as s
        try:
            with s.socket(s.AF_UNIX) as c:
                c.settimeout(2)
                c.connect(self.socket)
                c.sendall(b"zPING\0")
                return c.recv(16).startswith(b"PONG")
        except OSError:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.proc = None


def files_under(top):
    for d, _, names in os.walk(top):
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p):
                yield p


def leaks(tops, needles):
    """(file, needle) for every needle found in a file under the tops."""
    found = []
    for top in tops:
        for p in files_under(top):
            with open(p, "rb") as f:
                data = f.read()
            found += [(p, n) for n in needles if n in data]
    return found


def letter(frm, to, i, subject, extra=b""):
    return (f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <rec-{i}@test>\r\n\r\n".encode()
            + f"Body line NIGHTJAR-{i:04d}-{os.urandom(6).hex()} for the record.\r\n".encode() + extra)


def main():
    a = harness.args()
    c = harness.Checker("records")
    root = harness.tempdir(a.keep)
    ca_dir, [(da, env_a, pin_a), (db, env_b, pin_b)] = make_pki(
        root, a.keygen, [("gw-a", "agency-a.test"), ("gw-b", "agency-b.test")])

    # The directory: users of agency-b, and a service account the gateway binds as.
    ldap = Slapd(root, harness.free_port(), conf=SLAPD_CONF, admin_dn="cn=admin,dc=agency-b,dc=test")
    # StartTLS with a certificate from the test CA for 127.0.0.1 (the gateway checks chain and name).
    run("openssl req -newkey rsa:2048 -nodes -keyout tls.key -out tls.csr -subj /CN=127.0.0.1 "
        "-addext subjectAltName=IP:127.0.0.1", ldap.dir)
    run(f"openssl x509 -req -in tls.csr -CA {ca_dir}/ca.crt -CAkey {ca_dir}/ca.key -CAcreateserial -copy_extensions copy "
        f"-days 2 -out tls.crt && cp {ca_dir}/ca.crt tls-ca.crt", ldap.dir)
    ldap.start()
    users = ["bob", "carol"] + [f"user{i}" for i in range(10)]
    ldif = ("dn: dc=agency-b,dc=test\nobjectClass: dcObject\nobjectClass: organization\no: agency-b\ndc: agency-b\n\n"
            "dn: ou=people,dc=agency-b,dc=test\nobjectClass: organizationalUnit\nou: people\n\n"
            "dn: ou=services,dc=agency-b,dc=test\nobjectClass: organizationalUnit\nou: services\n\n"
            "dn: cn=gateway,ou=services,dc=agency-b,dc=test\nobjectClass: person\ncn: gateway\nsn: gw\n"
            "userPassword: fixture-bind-secret\n\n")
    for u in users:
        ldif += (f"dn: uid={u},ou=people,dc=agency-b,dc=test\nobjectClass: inetOrgPerson\nuid: {u}\ncn: {u}\nsn: {u}\n"
                 f"mail: {u.capitalize()}@Agency-B.test\n\n")
    ldap.ldif("ldapadd", ldif)
    bind_pw = os.path.join(root, "ldap-bind.secret")
    with open(bind_pw, "w") as f:
        f.write("fixture-bind-secret\n")
    os.chmod(bind_pw, 0o600)

    clamd = Clamd(root)
    clamd.start()
    milter_sock = os.path.join(root, "milter.sock")
    milter_py = os.path.join(root, "testfilter.py")
    with open(milter_py, "w") as f:
        f.write(MILTER)
    milter = subprocess.Popen([sys.executable, milter_py, milter_sock], stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(root, "milter.log"), "ab"))
    harness._cleanups.append(lambda: (milter.poll() is None and milter.kill(), milter.wait()))
    harness.wait_for(lambda: os.path.exists(milter_sock), 20, "the milter listens")

    # A is managed: the API, an audit trail, 3 ceremony custodians — who hold the archive key.
    m = control_pki(root, a.keygen, da, env_a, pin_a, ca_dir, ("so-1", "auditor-1"))
    for i in (1, 2, 3):
        run(f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout custodian-{i}.key "
            f"-out custodian-{i}.crt -subj /CN=custodian-{i} -days 2", m)
    api_port = harness.free_port()
    custodians = "".join(f'custodians {{ name: "custodian-{i}" cert_file: "{m}/custodian-{i}.crt" }} ' for i in (1, 2, 3))
    control = (f'control {{ listen: "127.0.0.1:{api_port}" cert_file: "{m}/server.crt" key_file: "{m}/server.key" '
               f'client_ca_file: "{m}/mgmt-ca.crt" roles {{ common_name: "so-1" role: "security-officer" }} '
               f'roles {{ common_name: "auditor-1" role: "auditor" }} audit {{ log_path: "{root}/audit.log" '
               f'heads_path: "{root}/audit.heads" head_every: 5 key_label: "audit" }} '
               f'ceremony {{ threshold: 2 {custodians} }} }}\narchive {{ }}\n')

    def ctl(who, *args):
        r = subprocess.run([a.mailsealctl, "--server", f"127.0.0.1:{api_port}", "--cert", f"{m}/{who}.crt",
                            "--key", f"{m}/{who}.key", "--ca", f"{m}/mgmt-ca.crt", *args],
                           capture_output=True, text=True, timeout=120)
        return r.returncode, r.stdout, r.stderr

    sink_a = harness.Sink(root)
    sink_b = harness.Sink(root)
    # Each knows the other's DCA certificate and route; B's port is only known once B is made,
    # so A's route names a placeholder filled in before either starts.
    ga = harness.Mailseald(a.mailseald, root, relay_port=sink_a.port, name="a", local_domain="agency-a.test",
                           env=env_a, hostname="gw-a.test",
                           delivery_extra='routes { domain: "agency-b.test" next_hop: "127.0.0.1:PORT_OF_B" }',
                           extra=smime_conf("gw-a", da, pin_a, ca_dir,
                                            f'partners {{ domain: "agency-b.test" dca_cert_file: "{db}/dca.crt" }} '
                                            'partners { domain: "agency-c.test" }')
                           + f'scanning {{ scanners {{ name: "testmilter" milter: "unix:{milter_sock}" }} }}\n' + control)
    gb = harness.Mailseald(a.mailseald, root, relay_port=sink_b.port, name="b", local_domain="agency-b.test",
                           env=env_b, hostname="gw-b.test",
                           delivery_extra=f'routes {{ domain: "agency-a.test" next_hop: "127.0.0.1:{ga.port}" }}',
                           extra=smime_conf("gw-b", db, pin_b, ca_dir,
                                            f'partners {{ domain: "agency-a.test" dca_cert_file: "{da}/dca.crt" }}')
                           + f'scanning {{ scanners {{ clamd: "{clamd.socket}" }} timeout_ms: 20000 }}\n'
                           f'recipient_directory {{ url: "{ldap.url}" base: "ou=people,dc=agency-b,dc=test" '
                           f'filter: "(mail=%s)" bind_dn: "cn=gateway,ou=services,dc=agency-b,dc=test" '
                           f'bind_password_file: "{bind_pw}" starttls: true ca_file: "{ca_dir}/ca.crt" '
                           f'timeout_ms: 2000 unknown_ttl_s: 1 }}\n')
    with open(ga.config) as f:
        text = f.read()
    with open(ga.config, "w") as f:
        f.write(text.replace("PORT_OF_B", str(gb.port)))
    ga.start()
    gb.start()
    for g in (ga, gb):
        harness.wait_for(lambda: "spool encrypted at rest" in g.read_log(), 20, "the spool keys are open")

    # ---- 1. the recipient directory (DE-11) ----
    out = send(gb.port, "alice@agency-a.test", ["bob@agency-b.test", "nobody@agency-b.test", "postmaster@agency-b.test",
                                               "CAROL@agency-b.test"],
               letter("alice@agency-a.test", "bob@agency-b.test", 9000, "directory check")).decode(errors="replace")
    c.check("550 5.1.1 <nobody@agency-b.test>: Recipient address rejected: user unknown" in out,
            "an unknown local recipient is refused at RCPT with 550 5.1.1 (no backscatter)", out)
    c.check(out.count("250 2.1.5") == 3, "bob, postmaster and CAROL (case-insensitive) are accepted", out)
    c.check("250 2.0.0 Ok: queued" in out, "the message goes on for the known recipients")
    harness.wait_for(lambda: [m for m in sink_b.messages() if b"rec-9000@" in m], 30, "the directory check mail arrives")
    ldap.stop()
    out = send(gb.port, "alice@agency-a.test", ["user7@agency-b.test", "ghost@agency-b.test"],
               b"Subject: while the directory is down\r\n\r\nx\r\n").decode(errors="replace")
    rcpt_replies = [l for l in out.splitlines() if l[:3] in ("451", "550", "250") and ("4.4.3" in l or "5.1.1" in l)]
    c.check(len(rcpt_replies) == 2 and all(l.startswith("451 4.4.3") for l in rcpt_replies),
            "with slapd down an address not cached gets 451 4.4.3, never 5xx (known or not)", out)
    c.check("recipient directory unavailable: 451" in gb.read_log(), "the outage is logged")
    out = send(gb.port, "alice@agency-a.test", ["bob@agency-b.test"], letter("alice@agency-a.test", "bob", 9001, "cached"))
    c.check(b"250 2.0.0 Ok: queued" in out, "a recipient known a moment ago is accepted from the cache while slapd is down")
    ldap.start()

    # ---- 2. 100 messages both ways; then mail waiting in the queues (DE-22) ----
    needles = []
    sent_by_alice = {}
    for i in range(100):
        a_to_b = i % 2 == 0
        frm, to = ("alice@agency-a.test", f"user{i % 10}@agency-b.test") if a_to_b else \
                  (f"user{i % 10}@agency-b.test", "alice@agency-a.test")
        subject = f"Operation KESTREL-{i:03d} budget"
        msg = letter(frm, to, i, subject)
        needles += [subject.encode(), re.search(rb"NIGHTJAR-\d{4}-[0-9a-f]+", msg).group(0)]
        if a_to_b:
            sent_by_alice[i] = msg
        out = send(ga.port if a_to_b else gb.port, frm, [to], msg)
        if b"250 2.0.0 Ok: queued" not in out:
            c.check(False, f"message {i} accepted", out.decode(errors="replace"))
    harness.wait_for(lambda: sum(b"KESTREL-" in m for m in sink_a.messages() + sink_b.messages()) >= 100, 120,
                     "100 messages delivered")
    delivered = [m for m in sink_a.messages() + sink_b.messages() if b"KESTREL-" in m]
    c.check(len(delivered) == 100 and all(b"smime=pass" in m for m in delivered),
            "all 100 arrive once, opened and verified", str(len(delivered)))
    sink_b.stop()   # B's internal server is down: opened mail waits in B's queue
    waiting = {}
    for i in range(100, 110):
        subject = f"Operation KESTREL-{i:03d} waiting"
        msg = letter("alice@agency-a.test", f"user{i % 10}@agency-b.test", i, subject)
        needles += [subject.encode(), re.search(rb"NIGHTJAR-\d{4}-[0-9a-f]+", msg).group(0)]
        waiting[i] = msg
        sent_by_alice[i] = msg
        send(ga.port, "alice@agency-a.test", [f"user{i % 10}@agency-b.test"], msg)
    held_msg = letter("alice@agency-a.test", "dan@agency-c.test", 200, "Operation KESTREL-200 held")
    needles += [b"KESTREL-200", re.search(rb"NIGHTJAR-\d{4}-[0-9a-f]+", held_msg).group(0)]
    send(ga.port, "alice@agency-a.test", ["dan@agency-c.test"], held_msg)
    harness.wait_for(lambda: len(gb.queue_files("deferred")) + len(gb.queue_files("active")) >= 10, 60,
                     "the 10 messages wait in B's queue")
    harness.wait_for(lambda: ga.queue_files("hold"), 30, "the message for agency-c is held on A")
    spools = [ga.spool, gb.spool]
    found = leaks(spools, needles + [b"NIGHTJAR", b"KESTREL", b"alice@agency-a.test", b"user3@agency-b.test"])
    c.check(not found, "no spool, key or store file holds a fragment of any body, subject or address (DE-22)",
            str(found[:5]))
    caps = os.path.join(gb.spool, "certs", "agency-a.test.caps")
    c.check(os.path.exists(caps) and open(caps, "rb").read(8) == b"MSSEAL1\n"
            and gb.stored_file("certs/agency-a.test.caps").strip() != b"",
            "the certificate store's files are sealed at rest too (B learnt A's capabilities)")
    queued = [os.path.join(gb.spool, s, f) for s in ("active", "deferred") for f in gb.queue_files(s)]
    c.check(queued and all(open(p, "rb").read(8) == b"MSPOOL2\n" for p in queued),
            "the waiting files are in the encrypted format (version 2)", str(len(queued)))
    keys_b = sorted(os.listdir(os.path.join(gb.spool, "keys")))
    c.check(len(keys_b) == 1 and all(k.endswith(".key") for k in keys_b)
            and open(queued[0], "rb").read(64).find(keys_b[0][:16].encode()) > 0,
            "each file names its data key, whose wrapped form is in keys/", str(keys_b))
    wrapped = open(os.path.join(gb.spool, "keys", keys_b[0])).read()
    c.check(wrapped.startswith("mailseal data key v1\nkek spool-kek\nwrapped "), "the key file holds the wrapped key only")

    # Restart B: a new data key; the waiting mail is read with the old one and delivered.
    gb.stop()
    gb.start()
    harness.wait_for(lambda: "spool encrypted at rest" in gb.read_log(), 20, "B's keys reopened")
    c.check(len(os.listdir(os.path.join(gb.spool, "keys"))) == 2, "a restart starts a new data key")
    sink_b = harness.Sink(root, port=sink_b.port)
    got = harness.wait_for(lambda: [m for m in sink_b.messages() if b"waiting" in m and b"KESTREL-1" in m]
                           if len([m for m in sink_b.messages() if b"waiting" in m]) >= 10 else None, 60,
                           "the waiting mail is delivered after the restart")
    ok = True
    for i, msg in waiting.items():
        body = msg.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")   # smtp-sink stores LF lines
        ok = ok and sum(body in m for m in got) == 1
    c.check(ok, "each waiting message arrives once with its body intact (read under the old data key)")

    # ---- 3. scanning (DE-15) ----
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("invoice.com", EICAR)
    att = base64.encodebytes(buf.getvalue()).replace(b"\n", b"\r\n")
    virus = (b"From: alice@agency-a.test\r\nTo: bob@agency-b.test\r\nSubject: invoice\r\nMessage-ID: <virus-1@test>\r\n"
             b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"zz\"\r\n\r\n--zz\r\n"
             b"Content-Type: text/plain\r\n\r\nplease see the attachment\r\n--zz\r\n"
             b"Content-Type: application/zip; name=\"invoice.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
             + att + b"--zz--\r\n")
    held_before = len(gb.queue_files("hold"))
    send(ga.port, "alice@agency-a.test", ["bob@agency-b.test"], virus)
    harness.wait_for(lambda: len(gb.queue_files("hold")) > held_before, 60, "the EICAR message is held on B")
    log_b = gb.read_log()
    c.check("quarantined by the content scanner clamd: virus found: Eicar-Test-Signature" in log_b,
            "clamd found EICAR in the zip after B decrypted the message: quarantined with the signature as reason")
    c.check("application/pkcs7-mime" not in log_b and "sealed for agency-b.test" in ga.read_log(),
            "it crossed sealed (A sealed it; only B's decrypted copy was scanned)")
    time.sleep(1)
    c.check(not [m for m in sink_b.messages() if b"virus-1@" in m], "the infected message is never delivered")

    out = send(ga.port, "alice@agency-a.test", ["bob@agency-b.test"],
               letter("alice@agency-a.test", "bob@agency-b.test", 301, "milter reject", b"MILTER-REJECT\r\n"))
    bounce = harness.wait_for(lambda: [m for m in sink_a.messages() if b"rec-301@" in m and b"delivery-status" in m],
                              60, "the sender gets a DSN for the rejected message")
    c.check(b"policy word found by the test milter" in bounce[0] or b"rejected by the content scanner testmilter" in bounce[0],
            "the milter's reject becomes a DSN with its reason")
    c.check(b"MILTER-REJECT" not in bounce[0], "the DSN quotes the header only, never the refused content")
    held_a = len(ga.queue_files("hold"))
    send(ga.port, "alice@agency-a.test", ["bob@agency-b.test"],
         letter("alice@agency-a.test", "bob@agency-b.test", 302, "milter quarantine", b"MILTER-QUARANTINE\r\n"))
    harness.wait_for(lambda: len(ga.queue_files("hold")) > held_a, 60, "the milter's quarantine holds the message on A")
    c.check("quarantined by the content scanner testmilter: quarantined: the test milter wants a human to look"
            in ga.read_log(), "the hold gives the milter's reason")
    c.check(not [m for m in sink_b.messages() if b"rec-301@" in m or b"rec-302@" in m],
            "neither the rejected nor the quarantined message reaches B")

    clamd.stop()
    held_before = len(gb.queue_files("hold"))
    send(ga.port, "alice@agency-a.test", ["bob@agency-b.test"],
         letter("alice@agency-a.test", "bob@agency-b.test", 303, "while clamd is down"))
    harness.wait_for(lambda: len(gb.queue_files("hold")) > held_before, 60, "mail is held while clamd is down")
    c.check("scanner unavailable (clamd:" in gb.read_log(), "held with the reason \"scanner unavailable\"")
    c.check(not [m for m in sink_b.messages() if b"rec-303@" in m], "never passed unscanned")

    # ---- 4. a lost data key: set aside, never deleted, never delivered ----
    clamd.start()
    sink_b.stop()
    send(ga.port, "alice@agency-a.test", ["bob@agency-b.test"], letter("alice@agency-a.test", "bob", 400, "lost key"))
    harness.wait_for(lambda: gb.queue_files("deferred") or None, 60, "a message waits on B")
    gb.stop()
    current = [k for k in os.listdir(os.path.join(gb.spool, "keys"))
               if open(os.path.join(gb.spool, "deferred", gb.queue_files("deferred")[0]), "rb").read(60).find(k[:16].encode()) > 0]
    for k in current:
        os.unlink(os.path.join(gb.spool, "keys", k))
    gb.start()
    harness.wait_for(lambda: gb.queue_files("corrupt") or None, 20, "the file without its key is set aside")
    c.check("is not in the key ring" in gb.read_log(), "the log says the data key is missing")
    c.check(not gb.queue_files("deferred") and gb.queue_files("corrupt"), "kept in corrupt/, not deleted")

    # The directory over StartTLS is checked against the configured CA: with another CA named,
    # the lookup fails — 451, never an answer from an unauthenticated server, never 5xx.
    gb.stop()
    with open(gb.config) as f:
        text = f.read()
    with open(gb.config, "w") as f:
        f.write(text.replace(f'ca_file: "{ca_dir}/ca.crt"', f'ca_file: "{m}/custodian-1.crt"'))
    gb.start()
    out = send(gb.port, "alice@agency-a.test", ["user9@agency-b.test"], b"Subject: x\r\n\r\nx\r\n").decode(errors="replace")
    c.check("451 4.4.3" in out and "StartTLS" in gb.read_log(),
            "a directory whose certificate does not chain to ca_file is not asked: 451 4.4.3", out)

    # ---- 5. the e-records archive (DE-21) ----
    shares = os.path.join(ga.spool, "archive", "shares")
    c.check(sorted(os.listdir(shares)) == ["custodian-1.pem", "custodian-2.pem", "custodian-3.pem"]
            and "archive key made" in ga.read_log(), "the archive key was made with one share per custodian")
    opened = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "PEM", "-in", f"{shares}/custodian-3.pem",
                             "-inkey", f"{m}/custodian-3.key"], capture_output=True)
    c.check(opened.returncode == 0 and opened.stdout.startswith(b"mailseal archive share v1\ncustodian custodian-3"),
            "a custodian opens their share with openssl cms and their own key (any independent tool)")
    rc, o, e = ctl("so-1", "-o", "json", "ceremony", "start", "--kind", "open-archive", "--sender", "alice@agency-a.test",
                   "--since", "2000-01-01", "--reason", "records request 2026/19")
    cid = json.loads(o)["ceremony_id"] if rc == 0 else ""
    c.check(bool(cid), "a security officer starts an open-archive ceremony for one sender", o + e)
    out_mbox = os.path.join(root, "export.mbox")

    def approve(i, export=out_mbox):
        return ctl("so-1", "ceremony", "approve", cid, "--custodian", f"custodian-{i}", "--custodian-key",
                   f"{m}/custodian-{i}.key", "--archive-share", f"{shares}/custodian-{i}.pem", "--export-out", export)
    rc, o, e = approve(1)
    c.check(rc == 0 and "approvals 1; ceremony pending" in o and not os.path.exists(out_mbox),
            "with one share nothing is exported: the ceremony waits", o + e)
    rc, o, e = approve(1)
    c.check(rc != 0 and not os.path.exists(out_mbox), "the same custodian twice is refused", e)
    rc, o, e = approve(2)
    c.check(rc == 0 and "ceremony done" in o and os.path.exists(out_mbox), "the second custodian's share opens the export",
            o + e)
    mbox = open(out_mbox, "rb").read() if os.path.exists(out_mbox) else b""
    # mboxrd: split at From_ lines, drop the separator line, unquote ">From " lines.
    exported = []
    for part in re.split(rb"(?m)^From [^\n]*\n", mbox)[1:]:
        part = part[:-1] if part.endswith(b"\n") else part
        exported.append(re.sub(rb"(?m)^>(>*From )", rb"\1", part))
    # As received: the gateway's Received: line, then the message as sent (the DATA's last CRLF
    # is the test client's empty line before the dot).
    whole = sum(1 for msg in sent_by_alice.values() if sum(x.endswith(msg + b"\r\n") for x in exported) == 1)
    c.check(whole == len(sent_by_alice) == 60,
            "the mbox holds each of alice's 60 messages byte for byte, once (as A received them)",
            f"{whole} of {len(sent_by_alice)}; {len(exported)} exported")
    c.check(all(b"From: alice@agency-a.test" in x for x in exported), "and nothing from other senders")
    rc, o, e = ctl("auditor-1", "ceremony", "status", cid)
    c.check(rc == 0 and "state done" in o and "sender=alice@agency-a.test" in o and o.count("custodian: ") >= 2
            and "archive opened:" in o and "exported as mbox" in o,
            "the transcript names the query, the approvals and what was exported", o[-1500:] + e)

    rc, o, e = ctl("so-1", "-o", "json", "ceremony", "start", "--kind", "open-archive", "--recipient",
                   "alice@agency-a.test", "--format", "maildir", "--reason", "records request 2026/20")
    cid = json.loads(o)["ceremony_id"] if rc == 0 else ""
    maildir = os.path.join(root, "export-maildir")
    approve(3, maildir)
    rc, o, e = approve(2, maildir)
    files = sorted(os.listdir(os.path.join(maildir, "cur"))) if os.path.isdir(os.path.join(maildir, "cur")) else []
    inbound = [x for x in (open(os.path.join(maildir, "cur", f), "rb").read() for f in files) if b"KESTREL-" in x]
    c.check(rc == 0 and len(inbound) == 50 and all(b"smime=pass" in x and b"To: alice@agency-a.test" in x for x in inbound),
            "a Maildir export by recipient: the 50 messages B sent to alice, as A delivered them (opened)", f"{len(inbound)} {e}")
    delivered_a = {re.search(rb"NIGHTJAR-\d{4}-[0-9a-f]+", x).group(0): x for x in sink_a.messages() if b"NIGHTJAR-" in x}
    same = sum(1 for x in inbound if re.search(rb"NIGHTJAR-\d{4}-[0-9a-f]+", x).group(0) in delivered_a)
    c.check(same == 50, "each is the message A delivered to its internal server", str(same))
    rc, o, e = ctl("auditor-1", "-o", "json", "audit", "records", "--limit", "5000")
    recs = json.loads(o).get("records", []) if rc == 0 else []
    opens = [r for r in recs if r.get("action") == "ceremony.open-archive" and r.get("outcome") == "OUTCOME_DONE"]
    c.check(len(opens) == 2 and any("sender=alice@agency-a.test" in r.get("object", "") for r in opens)
            and all(re.search(r"\d+ message\(s\) exported", r.get("detail", "")) for r in opens),
            "each export is in the audit trail with its query and what it gave", json.dumps(opens)[:500])
    c.check(any(r.get("action") == "archive.key-created" for r in recs), "the archive key's making is audited")
    c.finish()


if __name__ == "__main__":
    main()
