#!/usr/bin/env python3
"""Issue #6, SM-8.2 with SM-5 / SM-5b / SM-6.1: inbound STARTTLS, SPF, the authentication level.

gw-b (agency-b.test, a SoftHSM token, S/MIME on) offers STARTTLS and checks SPF for clients
outside its trusted networks; its DNS answers from local data only (zone "test." static):
  partner.test  "v=spf1 ip4:127.0.0.1 -all"        -> pass (and ends in -all)
  softy.test    "v=spf1 ip4:127.0.0.1 ~all"        -> pass, but not -all
  forged.test   "v=spf1 ip4:192.0.2.0/24 exp=... -all" -> fail, with an explanation
- A real Postfix (smtp_tls_security_level = encrypt) relays carol@partner.test's mail to gw-b:
  it arrives over TLS from an address SPF allows, so it is marked X-Mailseal-Auth-Level: tls+spf
  with Authentication-Results (spf=pass, the TLS version), Received-SPF and "with ESMTPS"; a
  forged level header the sender put in is gone.
- The same sender in clear: level none (spf=pass, received in clear).
- forged.test: refused at MAIL with 550 5.7.23 and the domain's own explanation; nothing delivered;
  a client saying EHLO forged.test is refused too (the HELO identity, RFC 7208 §2.3).
- STARTTLS injection (CVE-2011-0411): a MAIL pipelined behind STARTTLS in clear is not taken.
- TLS floor (SM-6.1): TLS 1.1 and a TLS 1.2 suite without ECDHE/AEAD are refused.
A SecureMail host (hostname securemail.agency-c.test, SM-6.1): MAIL in clear gets 530; over TLS,
a sender whose SPF record passes without -all gets 550; partner.test (-all, pass) is accepted,
and its delivery to a next hop without STARTTLS is deferred (4.7.5), never sent in clear.
Operators see the transport and the SPF verdict in the audit trail and in `queue show`.
A resolver that fails (SERVFAIL) defers the mail with 451 4.7.24, or with accept_temperror
accepts it. Configuration: a securemail host without tls is refused (file:line), a world-readable TLS key
is refused (--check-config and start).
"""
import json
import os
import socket
import ssl
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_control_api import control_pki, ctl_as  # noqa: E402
from test_smime_gateways import make_pki, smime_conf, send  # noqa: E402

DNS = ('dns_local_zones: "test. static"\n'
       'dns_local_data: "partner.test. TXT \\"v=spf1 ip4:127.0.0.1 -all\\""\n'
       'dns_local_data: "softy.test. TXT \\"v=spf1 ip4:127.0.0.1 ~all\\""\n'
       'dns_local_data: "forged.test. TXT \\"v=spf1 ip4:192.0.2.0/24 exp=why.forged.test -all\\""\n'
       'dns_local_data: "why.forged.test. TXT \\"%{i} is not a mail server of %{d}\\""\n')


def servfail_dns():
    """A DNS server that answers every question SERVFAIL: the one fault here no real resolver
    gives on demand (a temporary DNS failure during an SPF check). Returns its port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))

    def serve():
        while True:
            d, peer = s.recvfrom(4096)
            if len(d) < 12:
                continue
            flags = 0x8000 | ((d[2] & 0x79) << 8) | 0x80 | 2   # QR, opcode and RD copied, RA, SERVFAIL
            s.sendto(d[:2] + bytes([flags >> 8, flags & 0xff]) + d[4:6] + b"\0" * 6 + d[12:], peer)
    threading.Thread(target=serve, daemon=True).start()
    return s.getsockname()[1]


def tls_files(root):
    d = os.path.join(root, "tls")
    os.makedirs(d)
    subprocess.run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem "
                   "-out cert.pem -subj /CN=gw-b.test -days 2", shell=True, cwd=d, check=True, capture_output=True)
    os.chmod(os.path.join(d, "key.pem"), 0o600)
    return os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")


def recv_reply(sock):
    """One whole SMTP reply (all its lines)."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) >= 2 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            return data


def client_tls():
    """A TLS client context that does not check the (self-signed) server certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_session(port, commands, helo="client.test"):
    """EHLO, STARTTLS, then each command over TLS; returns the replies after the handshake."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    recv_reply(s)
    s.sendall(f"EHLO {helo}\r\n".encode())
    recv_reply(s)
    s.sendall(b"STARTTLS\r\n")
    if not recv_reply(s).startswith(b"220"):
        raise RuntimeError("STARTTLS refused")
    t = client_tls().wrap_socket(s)
    out = []
    for cmd in commands:
        t.sendall(cmd)
        out.append(recv_reply(t))
    t.close()
    return out


def s_client(port, *flags):
    r = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}", *flags],
                       input=b"QUIT\n", capture_output=True, timeout=20)
    return r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


def main():
    a = harness.args()
    c = harness.Checker("policy_tls_spf")
    root = harness.tempdir(a.keep)
    # (control_pki puts the audit key in a token labelled "gw-a"; this gateway is agency-b's)
    ca_dir, [(db, envb, pinb)] = make_pki(root, a.keygen, [("gw-a", "agency-b.test")])
    m = control_pki(root, a.keygen, db, envb, pinb, ca_dir, ("admin-1",))
    api_port = harness.free_port()
    control = (f'control {{ listen: "127.0.0.1:{api_port}" cert_file: "{m}/server.crt" key_file: "{m}/server.key" '
               f'client_ca_file: "{m}/mgmt-ca.crt" roles {{ common_name: "admin-1" role: "administrator" }} '
               f'audit {{ log_path: "{root}/audit.log" heads_path: "{root}/audit.heads" key_label: "audit" }} }}\n')
    cert, key = tls_files(root)
    tls = f'tls {{ cert_file: "{cert}" key_file: "{key}" }}\n'
    sink = harness.Sink(root)
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port, name="gw-b", trusted="10.99.0.0/16",
                           local_domain="agency-b.test", hostname="gw-b.test", env=envb,
                           extra=smime_conf("gw-a", db, pinb, ca_dir, "") + tls + control, delivery_extra=DNS).start()
    harness.wait_for(lambda: "management API listening" in gw.read_log(), 15, "API up")

    ctl = ctl_as(a.mailsealctl, api_port, m)

    # 1. A real Postfix relays over mandatory TLS from an address partner.test's SPF allows.
    pf = harness.Postfix(root, gw.port, extra_main="smtp_tls_security_level = encrypt\nsmtp_tls_loglevel = 1\n"
                                                   "smtp_helo_name = mx.partner.test\n")
    msg = (b"From: carol@partner.test\r\nTo: bob@agency-b.test\r\nSubject: over TLS\r\nMessage-ID: <tls-1@partner.test>\r\n"
           b"X-Mailseal-Auth-Level: signed+verified\r\n\r\nhello over TLS\r\n")
    out = send(pf.port, "carol@partner.test", ["bob@agency-b.test"], msg)
    c.check(b"250 2.0.0" in out, "Postfix took the message", out.decode(errors="replace"))
    got = harness.wait_for(lambda: [m for m in sink.messages() if b"<tls-1@partner.test>" in m], 60,
                           "the TLS message delivered by gw-b")[0]
    head = got.split(b"\r\n\r\n")[0].decode(errors="replace")
    c.check(head.count("X-Mailseal-Auth-Level:") == 1 and "X-Mailseal-Auth-Level: tls+spf" in head,
            "SM-8.2: over TLS with SPF pass -> level tls+spf, the sender's forged level removed", head)
    c.check("spf=pass smtp.mailfrom=partner.test (received over TLSv1." in head and
            "Authentication-Results: gw-b.test; smime=none" in head,
            "Authentication-Results: smime=none, spf=pass, the TLS version (RFC 8601)", head)
    c.check("Received-SPF: pass (gw-b.test: domain of carol@partner.test designates 127.0.0.1" in head,
            "Received-SPF (RFC 7208 §9.1)", head)
    c.check("with ESMTPS id" in head, "Received: says ESMTPS (RFC 3848)", head)
    def postfix_log():   # postlogd writes asynchronously
        with open(os.path.join(pf.dir, "maillog"), errors="replace") as f:
            return f.read()
    plog = harness.wait_for(lambda: "TLS connection established to 127.0.0.1" in postfix_log() and postfix_log(), 20,
                            "Postfix's TLS log line")
    c.check("TLS connection established to 127.0.0.1" in plog, "Postfix's log shows the TLS connection", plog[-1500:])

    # 2. Same sender in clear: SPF passes but there is no TLS -> none.
    out = send(gw.port, "carol@partner.test", ["bob@agency-b.test"],
               b"From: carol@partner.test\r\nSubject: clear\r\nMessage-ID: <clear-1@partner.test>\r\n\r\nin clear\r\n")
    c.check(b"250 2.0.0" in out, "accepted in clear", out.decode(errors="replace"))
    got = harness.wait_for(lambda: [m for m in sink.messages() if b"<clear-1@partner.test>" in m], 60, "clear message")[0]
    head = got.split(b"\r\n\r\n")[0].decode(errors="replace")
    c.check("X-Mailseal-Auth-Level: none" in head and "(received in clear)" in head and "with ESMTP id" in head,
            "in clear -> level none, marked as received in clear", head)

    # 3. SPF fail is refused at MAIL, with the domain's explanation (SM-5b).
    out = send(gw.port, "mallory@forged.test", ["bob@agency-b.test"],
               b"From: mallory@forged.test\r\nMessage-ID: <forged-1@x>\r\n\r\nx\r\n")
    c.check(b"550 5.7.23 SPF: forged.test does not allow 127.0.0.1 to send its mail: "
            b"127.0.0.1 is not a mail server of forged.test" in out, "SPF fail -> 550 5.7.23 with exp=", out.decode(errors="replace"))
    c.check(b"354" not in out, "no DATA after a refused MAIL")
    # RFC 7208 §2.3: the HELO name is checked too; its "fail" refuses even a passing MAIL FROM.
    out = harness.smtp_exchange(gw.port, [b"EHLO forged.test\r\nMAIL FROM:<carol@partner.test>\r\nQUIT\r\n"])
    c.check(b"550 5.7.23 SPF: forged.test (your HELO name) does not allow 127.0.0.1 to use its name" in out,
            "a HELO name whose SPF policy fails -> 550 5.7.23", out.decode(errors="replace"))

    # 4. STARTTLS injection: MAIL pipelined behind STARTTLS in clear is dropped.
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    recv_reply(s)
    s.sendall(b"EHLO client.test\r\n")
    ehlo = recv_reply(s)
    c.check(b"250 STARTTLS" in ehlo or b"250-STARTTLS" in ehlo, "STARTTLS offered (SM-5)", ehlo.decode())
    s.sendall(b"STARTTLS\r\nMAIL FROM:<carol@partner.test>\r\n")
    r220 = recv_reply(s)
    t = client_tls().wrap_socket(s)
    t.sendall(b"EHLO client.test\r\n")
    first = recv_reply(t)
    t.sendall(b"RCPT TO:<bob@agency-b.test>\r\n")
    rcpt = recv_reply(t)
    t.close()
    c.check(r220 == b"220 2.0.0 Ready to start TLS\r\n" and first.startswith(b"250-gw-b.test") and b"STARTTLS" not in first,
            "after the handshake the first reply is EHLO's, without STARTTLS", (r220 + first).decode())
    c.check(rcpt.startswith(b"503 5.5.1"), "the injected MAIL was not taken (CVE-2011-0411)", rcpt.decode())

    # 4b. A large message pipelined through TLS in one burst (records buffered while the session
    #     waits for its commit must still be read) and a sender-changing loop (bounded SPF work).
    big = b"From: carol@partner.test\r\nSubject: big\r\nMessage-ID: <big-1@partner.test>\r\n\r\n" + \
        (b"x" * 998 + b"\r\n") * 1500
    r = tls_session(gw.port, [b"EHLO mx.partner.test\r\n",
                              b"MAIL FROM:<carol@partner.test>\r\nRCPT TO:<bob@agency-b.test>\r\nDATA\r\n"])
    c.check(r[1].startswith(b"250 2.1.0"), "pipelined MAIL/RCPT/DATA over TLS", r[1].decode())
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    recv_reply(s)
    s.sendall(b"EHLO mx.partner.test\r\n")
    recv_reply(s)
    s.sendall(b"STARTTLS\r\n")
    recv_reply(s)
    t = client_tls().wrap_socket(s)
    t.sendall(b"EHLO mx.partner.test\r\nMAIL FROM:<carol@partner.test>\r\nRCPT TO:<bob@agency-b.test>\r\nDATA\r\n" +
              big + b".\r\nMAIL FROM:<carol@partner.test>\r\nRCPT TO:<bob@agency-b.test>\r\nDATA\r\n" + big +
              b".\r\nQUIT\r\n")
    got = b""
    while b"221 " not in got:
        chunk = t.recv(65536)
        if not chunk:
            break
        got += chunk
    t.close()
    c.check(got.count(b"250 2.0.0 Ok: queued") == 2 and b"221 2.0.0" in got,
            "two 1.5 MB messages pipelined in one TLS burst: both queued, then QUIT answered", got[-300:].decode())
    cmds = b"EHLO client.test\r\n" + b"".join(b"MAIL FROM:<u%d@partner.test>\r\nRSET\r\n" % i for i in range(34))
    out = harness.smtp_exchange(gw.port, [cmds + b"QUIT\r\n"])
    c.check(out.count(b"250 2.1.0") == 32 and b"451 4.7.24 Too many different senders" in out,
            "a session changing its sender again and again gets 32 SPF checks, then 451", out[-400:].decode())

    # 5. TLS floor (SM-6.1).
    old = s_client(gw.port, "-tls1_1")
    c.check("Cipher is (NONE)" in old or "alert protocol version" in old, "TLS 1.1 refused", old[-600:])
    weak = s_client(gw.port, "-tls1_2", "-cipher", "AES256-SHA")
    c.check("Cipher is (NONE)" in weak or "handshake failure" in weak, "TLS 1.2 without ECDHE/AEAD refused", weak[-600:])
    good = s_client(gw.port, "-tls1_2")
    c.check("Cipher is ECDHE-" in good and "GCM" in good, "TLS 1.2 with ECDHE and AES-GCM accepted", good[-600:])
    log = gw.read_log()
    c.check("spf" in log and "result=fail" in log and "TLS established" in log, "SPF verdicts and TLS in the log")

    # 6. What operators see: the audit trail and `queue show` say how a message arrived.
    def accepted_records():   # mail events reach the trail in batches
        rc, o, e = ctl("-o", "json", "audit", "records", "--action", "mail.accepted", "--limit", "20")
        return o if rc == 0 and "tls=TLSv1." in o and "tls=none" in o else ""
    o = harness.wait_for(accepted_records, 20, "mail.accepted records")
    c.check("spf=pass(partner.test)" in o and "tls=TLSv1." in o and "tls=none" in o,
            "mail.accepted audit records carry the transport and the SPF verdict", o[-600:])
    sink.stop()   # the next message stays queued (deferred) so it can be shown
    r = tls_session(gw.port, [b"EHLO mx.partner.test\r\n", b"MAIL FROM:<carol@partner.test>\r\n",
                              b"RCPT TO:<bob@agency-b.test>\r\n", b"DATA\r\n",
                              b"From: carol@partner.test\r\nSubject: kept\r\n\r\nkept\r\n.\r\n", b"QUIT\r\n"])
    c.check(r[4].startswith(b"250 2.0.0"), "accepted over TLS", r[4].decode())
    harness.wait_for(lambda: gw.queue_files("deferred"), 30, "deferred while the next hop is down")

    def deferred_ids():   # retried every 1-2 s here: it may be in active/ for a moment
        rc, o, e = ctl("-o", "json", "queue", "list", "--state", "deferred")
        return [x["queue_id"] for x in json.loads(o).get("messages", [])] if rc == 0 else []
    ids = harness.wait_for(deferred_ids, 20, "the deferred message listed")
    rc, o, e = ctl("queue", "show", ids[0]) if ids else (1, "", "no deferred message listed")
    c.check(rc == 0 and "transport    TLSv1." in o and "spf          pass for partner.test" in o,
            "queue show: transport and SPF verdict (also on the crypto stage's copy)", o + e)
    gw.stop()

    # 6. A SecureMail host (SM-6.1).
    sm = harness.Mailseald(a.mailseald, root, relay_port=sink.port, name="securemail", trusted="10.99.0.0/16",
                           local_domain="agency-c.test", hostname="securemail.agency-c.test",
                           extra=tls, delivery_extra=DNS).start()
    out = send(sm.port, "carol@partner.test", ["bob@agency-c.test"], b"Subject: x\r\n\r\nx\r\n")
    c.check(b"530 5.7.0 Must issue a STARTTLS command first" in out, "securemail: MAIL in clear -> 530", out.decode(errors="replace"))
    soft = tls_session(sm.port, [b"EHLO client.test\r\n", b"MAIL FROM:<dave@softy.test>\r\n"])
    c.check(soft[1].startswith(b"550 5.7.23 SecureMail host (SM-6.1)") and b"without -all" in soft[1],
            "securemail: SPF pass without -all -> 550", soft[1].decode())
    plain_hop = harness.Sink(root)   # smtp-sink offers no STARTTLS
    sm.stop()
    sm = harness.Mailseald(a.mailseald, root, relay_port=plain_hop.port, name="securemail2", trusted="10.99.0.0/16",
                           local_domain="agency-c.test", hostname="securemail.agency-c.test",
                           extra=tls, delivery_extra=DNS).start()
    ok = tls_session(sm.port, [b"EHLO client.test\r\n", b"MAIL FROM:<carol@partner.test>\r\n",
                               b"RCPT TO:<bob@agency-c.test>\r\n", b"DATA\r\n",
                               b"Subject: sm\r\n\r\nsecure only\r\n.\r\n", b"QUIT\r\n"])
    c.check(ok[1].startswith(b"250 2.1.0") and ok[2].startswith(b"250 2.1.5") and ok[4].startswith(b"250 2.0.0"),
            "securemail: over TLS with SPF pass from a -all record -> accepted", b"".join(ok).decode())
    harness.wait_for(lambda: "4.7.5" in sm.read_log(), 30, "the securemail host's delivery attempt")
    # (the log line comes before the file reaches deferred/: wait for the file, not the line)
    kept = harness.wait_for(lambda: sm.queue_files("deferred") or sm.queue_files("active"), 10, "the message kept")
    c.check(not plain_hop.messages() and kept,
            "securemail sends only over TLS: a next hop without STARTTLS gets nothing, the mail is deferred (4.7.5)",
            sm.read_log()[-800:])
    sm.stop()

    # 7. A temporary DNS failure: deferred (451 4.7.24), or accepted and marked when configured.
    #    (example.org, not .test: unbound answers .test itself, RFC 6761.)
    fwd = f'dns_forwarder: "127.0.0.1@{servfail_dns()}"'
    tf = harness.Mailseald(a.mailseald, root, relay_port=plain_hop.port, name="tempfail", trusted="10.99.0.0/16",
                           local_domain="agency-c.test", delivery_extra=fwd).start()
    out = send(tf.port, "carol@partner.example.org", ["bob@agency-c.test"], b"Subject: t\r\n\r\nt\r\n")
    c.check(b"451 4.7.24 SPF check of partner.example.org failed temporarily" in out,
            "SPF temperror -> 451 4.7.24 (try again later), never a silent accept", out.decode(errors="replace"))
    tf.stop()
    tf = harness.Mailseald(a.mailseald, root, relay_port=plain_hop.port, name="tempfail2", trusted="10.99.0.0/16",
                           local_domain="agency-c.test", delivery_extra=fwd,
                           extra="spf { mode: SPF_ENFORCE accept_temperror: true }").start()
    out = send(tf.port, "carol@partner.example.org", ["bob@agency-c.test"], b"Subject: t\r\n\r\nt\r\n")
    c.check(b"250 2.0.0" in out and "result=temperror" in tf.read_log(),
            "accept_temperror: accepted, the temperror logged (and kept for the mark)", out.decode(errors="replace"))
    tf.stop()

    # 8. Configuration refusals.
    bad = harness.Mailseald(a.mailseald, root, relay_port=sink.port, name="securemail-notls",
                            hostname="securemail.agency-c.test")
    r = subprocess.run([a.mailseald, "--check-config", bad.config], capture_output=True, text=True)
    c.check(r.returncode != 0 and "SecureMail host (SM-6.1)" in r.stderr and "mailseald.conf" in r.stderr,
            "a securemail host without tls is refused", r.stderr)
    os.chmod(key, 0o644)
    r = subprocess.run([a.mailseald, "--check-config", sm.config], capture_output=True, text=True)
    c.check(r.returncode != 0 and "chmod 600" in r.stderr, "a TLS key readable by others is refused", r.stderr)
    c.finish()


if __name__ == "__main__":
    main()
