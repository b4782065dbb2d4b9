#!/usr/bin/env python3
"""Issue #4 end to end (REQUIREMENTS §1, §3): two mailseald gateways, agency-a.test and
agency-b.test, on loopback, each with its own SoftHSM token and certificates from a test CA
made here. Mail from a to b is sealed once per domain by a (SEE-AG-3, SEE-2.9), is opaque
S/MIME on the wire between them (captured by a forwarding proxy), and arrives at b's internal
server decrypted, verified and marked (SM-8.2, RFC 8601/7281 Authentication-Results). b learns
a's DCA certificate and capabilities from that mail (SEE-2.10) and seals its reply with them.
Fail-closed cases: a partner without a certificate is held (SEE-2.8); a message signed by an
unknown CA is delivered with the HARD warning (SEE-2.8 table); unreadable S/MIME is held; a
forged Authentication-Results carrying b's name is removed (RFC 8601 §5); a user's own S/MIME
passes intact (SEE-AG-2).
"""
import os
import re
import socket
import stat
import subprocess
import sys
import threading
from collections import Counter

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
USER_PIN = "fixture-user-pin"   # test fixture, never a real PIN
SO_PIN = "fixture-so-pin"


def run(cmd, cwd, env=None):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=isinstance(cmd, str))
    assert r.returncode == 0, f"{cmd}: {r.stdout}{r.stderr}"
    return r.stdout


class Capture:
    """A TCP forwarder that records what the client sends (the wire between the gateways), and
    can be cut (set_cut: every connection closed, new ones refused until mended) — a partition a
    real peer cannot be told to make for one client."""

    def __init__(self, target_port, record=True):
        self.target = target_port
        self.record = record
        self.cut = False
        self.conns = []
        self.data = bytearray()
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                if self.cut:
                    raise OSError("cut")
                s = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                s.settimeout(None)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, s]
            threading.Thread(target=self.pipe, args=(c, s, self.record), daemon=True).start()
            threading.Thread(target=self.pipe, args=(s, c, False), daemon=True).start()

    def pipe(self, src, dst, record):
        try:
            while True:
                d = src.recv(65536)
                if not d or self.cut:
                    break
                if record:
                    with self.lock:
                        self.data += d
                dst.sendall(d)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def set_cut(self, cut):
        self.cut = cut
        if cut:
            with self.lock:
                conns, self.conns = self.conns, []
            for s in conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass


def make_token(root, name):
    """An initialised token labelled `name` with no key yet, its SoftHSM configuration and a
    0600 PIN file: (directory, environment, PIN file)."""
    d = os.path.join(root, f"pki-{name}")
    os.makedirs(os.path.join(d, "tokens"))
    conf = os.path.join(d, "softhsm2.conf")
    with open(conf, "w") as f:
        f.write(f"directories.tokendir = {d}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = dict(os.environ, SOFTHSM2_CONF=conf)
    run(["softhsm2-util", "--init-token", "--free", "--label", name, "--so-pin", SO_PIN, "--pin", USER_PIN], d, env)
    pin = os.path.join(d, "user.pin")
    with open(pin, "w") as f:
        f.write(USER_PIN + "\n")
    os.chmod(pin, stat.S_IRUSR | stat.S_IWUSR)
    return d, env, pin


def make_gateway(root, name, domain, keygen, ca_dir):
    """A token for `name` with DSA and DCA keys made inside it, certificates from the CA."""
    d, env, pin = make_token(root, name)
    for kind in ("dsa", "dca"):
        run([keygen, MODULE, name, pin, kind, kind, "rsa2048", domain, f"{d}/{kind}.csr"], d, env)
        run(f"openssl x509 -req -in {kind}.csr -CA {ca_dir}/ca.crt -CAkey {ca_dir}/ca.key -CAcreateserial "
            f"-copy_extensions copy -days 30 -out {kind}.crt", d)
    return d, env, pin


def make_pki(root, keygen, gateways):
    """A test CA and, for each (token label, domain), a token with DSA/DCA keys and certificates.
    Returns (ca_dir, [(pki_dir, env, pin_file), ...])."""
    ca_dir = os.path.join(root, "ca")
    os.makedirs(ca_dir)
    run("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -subj /CN=Test-Root-CA -days 30", ca_dir)
    return ca_dir, [make_gateway(root, name, domain, keygen, ca_dir) for name, domain in gateways]


def sealed_deliveries(sink):
    """What a sink standing for a partner got: {message number: copies} for Message-ID
    <kill-N@...>, and how many messages arrived not sealed."""
    delivered, clear = Counter(), 0
    for m in sink.messages():
        mid = re.search(rb"Message-ID: <kill-(\d+)@", m)
        if mid:
            delivered[int(mid.group(1))] += 1
        if b"line " in m or (b"smime-type=enveloped-data" not in m and b"smime-type=authEnveloped-data" not in m):
            clear += 1
    return delivered, clear


def smime_conf(name, d, pin, ca_dir, partners):
    return (f'hsm {{ module_path: "{MODULE}" token_label: "{name}" pin_file: "{pin}" health_interval_ms: 500 }}\n'
            f'smime {{ dsa_key_label: "dsa" dsa_cert_file: "{d}/dsa.crt" dca_key_label: "dca" '
            f'dca_cert_file: "{d}/dca.crt" trust_anchors_file: "{ca_dir}/ca.crt" {partners} }}\n')


def send(port, mail_from, rcpts, message):
    cmds = f"EHLO client.test\r\nMAIL FROM:<{mail_from}>\r\n" + "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts)
    return harness.smtp_exchange(port, [cmds.encode() + b"DATA\r\n", message + b"\r\n.\r\nQUIT\r\n"])


def main():
    a = harness.args()
    c = harness.Checker("smime_gateways")
    root = harness.tempdir(a.keep)
    ca_dir = os.path.join(root, "ca")
    os.makedirs(ca_dir)
    run("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -subj /CN=Test-Root-CA -days 30", ca_dir)
    da, env_a, pin_a = make_gateway(root, "gw-a", "agency-a.test", a.keygen, ca_dir)
    db, env_b, pin_b = make_gateway(root, "gw-b", "agency-b.test", a.keygen, ca_dir)

    sink_a = harness.Sink(root)     # agency-a's internal mail server
    sink_b = harness.Sink(root)     # agency-b's internal mail server
    # b knows no certificate of a yet; a has b's DCA pinned, and agency-c.test is a partner
    # whose certificate nobody has.
    gb = harness.Mailseald(a.mailseald, root, relay_port=sink_b.port, name="b", local_domain="agency-b.test",
                           env=env_b, hostname="gw-b.test",
                           extra=smime_conf("gw-b", db, pin_b, ca_dir, 'partners { domain: "agency-a.test" }'))
    gb.start()
    cap = Capture(gb.port)
    ga = harness.Mailseald(
        a.mailseald, root, relay_port=sink_a.port, name="a", local_domain="agency-a.test", env=env_a,
        hostname="gw-a.test",
        delivery_extra=f'routes {{ domain: "agency-b.test" next_hop: "127.0.0.1:{cap.port}" }}',
        extra=smime_conf("gw-a", da, pin_a, ca_dir,
                         f'partners {{ domain: "agency-b.test" dca_cert_file: "{db}/dca.crt" }} '
                         'partners { domain: "agency-c.test" }'))
    ga.start()
    # b's route back to a (for the reply) is added by restarting b with it.
    gb.stop()
    gb = harness.Mailseald(a.mailseald, root, relay_port=sink_b.port, name="b2", local_domain="agency-b.test",
                           env=env_b, hostname="gw-b.test",
                           delivery_extra=f'routes {{ domain: "agency-a.test" next_hop: "127.0.0.1:{ga.port}" }}',
                           extra=smime_conf("gw-b", db, pin_b, ca_dir, 'partners { domain: "agency-a.test" }'))
    gb.start()
    cap.target = gb.port
    for g in (ga, gb):
        harness.wait_for(lambda: "security module ready" in g.read_log(), 15, "token opened")

    secret_line = b"The budget figure is 4,217,000 and must not leak."
    attachment = os.urandom(3000).hex().encode()
    original = (b"From: Alice <alice@agency-a.test>\r\nTo: bob@agency-b.test, carol@agency-b.test\r\n"
                b"Subject: [IN-CONFIDENCE] budget 2027\r\nMessage-ID: <e2e-1@agency-a.test>\r\n"
                b"Authentication-Results: gw-b.test; smime=pass (forged by the sender)\r\n"
                b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
                b"--b1\r\nContent-Type: text/plain\r\n\r\n" + secret_line + b"\r\n"
                b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
                b"\r\n".join(attachment[i:i + 76] for i in range(0, len(attachment), 76)) + b"\r\n--b1--\r\n")
    out = send(ga.port, "alice@agency-a.test", ["bob@agency-b.test", "carol@agency-b.test", "dan@agency-c.test"],
               original)
    c.check(b"250 2.0.0 Ok: queued" in out, "gateway a accepts the message", out.decode(errors="replace"))

    msgs = harness.wait_for(lambda: sink_b.messages(), 30, "the message reaches agency-b's server")
    harness.wait_for(lambda: len(cap.data) > 0 and b"QUIT" in cap.data, 10, "capture complete")
    wire = bytes(cap.data)
    c.check(b"application/pkcs7-mime" in wire and b"smime-type=enveloped-data" in wire,
            "between the gateways the message is opaque S/MIME (EnvelopedData AES-256-CBC: a's capabilities "
            "are not known yet, SEE-2.4)")
    c.check(secret_line not in wire and b"budget 2027" not in wire and attachment[:76] not in wire,
            "neither body, attachment nor the real Subject are on the wire (RFC 9788 placeholder)")
    c.check(wire.count(b"DATA\r\n") == 1 and b"RCPT TO:<bob@agency-b.test>" in wire
            and b"RCPT TO:<carol@agency-b.test>" in wire, "one sealed copy for both users of the domain")
    c.check(len(msgs) == 1, "agency-b's server gets exactly one message", str(len(msgs)))
    got = msgs[0]
    c.check(secret_line in got and attachment[:76] in got and b"Subject: [IN-CONFIDENCE] budget 2027" in got,
            "it arrives decrypted, with its attachment and its real Subject restored")
    c.check(b"Authentication-Results: gw-b.test; smime=pass" in got
            and b"body.smime-identifier=domain-signing-authority@agency-a.test" in got
            and got.count(b"X-Mailseal-Auth-Level: ") == 1 and b"X-Mailseal-Auth-Level: signed+verified" in got,
            "marked signed+verified by gateway b (SM-8.2 level; RFC 7281 smime=pass)")
    c.check(b"forged by the sender" not in got, "the forged Authentication-Results with b's name is removed")
    c.check(b"application/pkcs7-mime" not in got, "the domain layers are stripped before delivery")
    held = ga.queue_files("hold")
    c.check(len(held) == 1, "mail for partner agency-c.test (no certificate) is held, not sent in clear",
            str(held))
    c.check("no DCA certificate known for agency-c.test (" in ga.read_log(),
            "the hold is logged with its reason")
    store_b = os.path.join(gb.spool, "certs")
    c.check(os.path.exists(os.path.join(store_b, "agency-a.test.dca.pem"))
            and os.path.exists(os.path.join(store_b, "agency-a.test.caps")),
            "gateway b harvested a's DCA certificate and capabilities (SEE-2.10)")

    # The reply: b seals with what it learnt; a opens and marks.
    reply = (b"From: bob@agency-b.test\r\nTo: alice@agency-a.test\r\nSubject: Re: budget\r\n\r\n"
             b"Received, thanks. Reply text 77-Q.\r\n")
    out = send(gb.port, "bob@agency-b.test", ["alice@agency-a.test"], reply)
    c.check(b"250 2.0.0 Ok: queued" in out, "gateway b accepts the reply")
    got_a = harness.wait_for(lambda: sink_a.messages(), 30, "the reply reaches agency-a's server")
    c.check(b"Reply text 77-Q." in got_a[0] and b"smime=pass" in got_a[0]
            and b"domain-signing-authority@agency-b.test" in got_a[0],
            "the reply was sealed with the harvested certificate and verified by a")
    c.check("sealed for agency-a.test (authEnveloped-data AES-256-GCM, RSA-OAEP)" in gb.read_log(),
            "b seals the reply with the strongest algorithms a announced: AES-256-GCM and RSA-OAEP (SEE-2.4)")

    # Hostile inbound mail straight to b: signed by an unknown CA under a's authority name.
    run("openssl req -x509 -newkey rsa:2048 -nodes -keyout evil.key -out evil.crt -days 30 "
        "-subj /CN=domain-signing-authority@agency-a.test "
        "-addext subjectAltName=email:domain-signing-authority@agency-a.test "
        "-addext keyUsage=digitalSignature -addext extendedKeyUsage=emailProtection", ca_dir)
    with open(os.path.join(ca_dir, "inner.eml"), "wb") as f:
        f.write(b"Content-Type: message/rfc822\r\n\r\nFrom: mallory@agency-a.test\r\nTo: bob@agency-b.test\r\n"
                b"Subject: pay this invoice\r\n\r\nplease pay\r\n")
    run(f"openssl cms -sign -binary -nodetach -in inner.eml -signer evil.crt -inkey evil.key -outform SMIME "
        f"-out evil-signed.eml && openssl cms -encrypt -binary -in evil-signed.eml -aes256 -out evil.eml "
        f"-from mallory@agency-a.test -to bob@agency-b.test -subject x {db}/dca.crt", ca_dir)
    with open(os.path.join(ca_dir, "evil.eml"), "rb") as f:
        evil = f.read().replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")
    before = len(sink_b.messages())
    send(gb.port, "mallory@agency-a.test", ["bob@agency-b.test"], evil)
    harness.wait_for(lambda: len(sink_b.messages()) > before, 30, "the unknown-CA message is delivered")
    got = [m for m in sink_b.messages() if b"please pay" in m]
    c.check(len(got) == 1 and b"Subject: [HARD WARNING: Certificate unknown - message integrity uncertain] pay this"
            in got[0] and b"smime=fail" in got[0],
            "an unknown CA's signature: delivered with the HARD warning and smime=fail (SEE-2.8)")

    # Unreadable S/MIME (truncated CMS) is held with its reason, never delivered.
    truncated = evil[: len(evil) // 2] + b"\r\n"
    before_hold = len(gb.queue_files("hold"))
    send(gb.port, "mallory@agency-a.test", ["bob@agency-b.test"], truncated)
    harness.wait_for(lambda: len(gb.queue_files("hold")) > before_hold, 30, "the truncated message is held")
    c.check("S/MIME could not be opened" in gb.read_log(), "the hold says why")

    # A user's own S/MIME (encrypted to bob, not to the domain) passes intact.
    run("openssl req -x509 -newkey rsa:2048 -nodes -keyout bob.key -out bob.crt -days 30 -subj /CN=bob", ca_dir)
    run("openssl cms -encrypt -in inner.eml -aes256 -out user.eml -to bob@agency-b.test -subject user-level bob.crt",
        ca_dir)
    with open(os.path.join(ca_dir, "user.eml"), "rb") as f:
        user = f.read().replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")
    before = len(sink_b.messages())
    send(gb.port, "alice@elsewhere.test", ["bob@agency-b.test"], user)
    harness.wait_for(lambda: len(sink_b.messages()) > before, 30, "the user-level message is delivered")
    got = [m for m in sink_b.messages() if b"user-level" in m]
    body = user.split(b"\r\n\r\n", 1)[1].rstrip().replace(b"\r\n", b"\n")   # smtp-sink stores LF
    c.check(len(got) == 1 and body in got[0].replace(b"\r\n", b"\n") and b"smime=none" in got[0],
            "user-level S/MIME is delivered byte-identical inside, marked smime=none (SEE-AG-2)")
    c.finish()


if __name__ == "__main__":
    main()
