#!/usr/bin/env python3
"""Issue #6 end to end: the policy document decides, two gateways and a capturing wire.

- agency-b is on gw-a's SEEMAIL list: a [RESTRICTED] message to it leaves sealed.
- agency-c is on no list (its DCA certificate is known to gw-a): a {restricted] message to it
  is held, never sent; ordinary mail to agency-c keeps flowing (SEE-AG-1). The sender and the
  administrator each get one notice, from postmaster@ with the null sender.
- The administrator adds agency-c to the TRUSTED list (policy v2, no restart) and releases the
  message: it leaves sealed, and agency-c's own gateway opens and verifies it.
- 1,000 classified messages held for one reason produce one administrator digest (and one to
  their sender), not 1,000 mails.
- seemail-ping (SEE-2.14): agency-c's probe gets a signed and encrypted reply with the SEEMAIL
  version, gateway name and partner domains; an unsigned probe gets none.
- Held mail not released within hold_expiry_s goes back to its sender as a DSN; a DSN to a
  partner's sender is itself sealed (SEE-AG-3).
- Delivery receipts: NOTIFY=SUCCESS gives a "relayed" DSN when the next hop cannot report.
- TLS: STARTTLS whenever a next hop offers it; a require_tls rule defers rather than send in
  clear.
- A policy change is refused whole when invalid; the decision and the policy version are in
  the hold reason and the audit trail.
"""
import os
import shutil
import smtplib
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_control_api import control_pki, ctl_as  # noqa: E402
from test_smime_gateways import make_pki, run, send, smime_conf  # noqa: E402

SECRET = b"The figure is 4,217,000."


def message(subject, to):
    return (f"From: alice@agency-a.test\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@agency-a.test>\r\n\r\n").encode() + SECRET + b"\r\n"


def main():
    a = harness.args()
    c = harness.Checker("policy_gateways")
    root = harness.tempdir(a.keep)
    ca_dir, gws = make_pki(root, a.keygen, [("gw-a", "agency-a.test"), ("gw-c", "agency-c.test")])
    (da, env_a, pin_a), (dc, env_c, pin_c) = gws
    m = control_pki(root, a.keygen, da, env_a, pin_a, ca_dir, ("admin-1",))
    # agency-b only needs a DCA certificate (gw-a seals for it; the wire is where we look).
    b = os.path.join(root, "pki-b")
    os.makedirs(b)
    run(f"openssl req -new -newkey rsa:2048 -nodes -keyout dca.key -out dca.csr -subj "
        f"/CN=domain-confidentiality-authority -addext subjectAltName=email:domain-confidentiality-authority@agency-b.test "
        f"-addext keyUsage=keyEncipherment", b)
    run(f"openssl x509 -req -in dca.csr -CA {ca_dir}/ca.crt -CAkey {ca_dir}/ca.key -CAcreateserial -copy_extensions copy "
        f"-days 30 -out dca.crt", b)

    wire = harness.Sink(root)
    os.makedirs(os.path.join(root, "c"))
    sink_c = harness.Sink(os.path.join(root, "c"), extra=("-N",))   # a next hop without DSN support
    api_port = harness.free_port()
    control = (f'control {{ listen: "127.0.0.1:{api_port}" cert_file: "{m}/server.crt" key_file: "{m}/server.key" '
               f'client_ca_file: "{m}/mgmt-ca.crt" roles {{ common_name: "admin-1" role: "administrator" }} '
               f'audit {{ log_path: "{root}/audit.log" heads_path: "{root}/audit.heads" key_label: "audit" }} }}')
    # TLS next hops (SM-5, SM-6.1): Postfix offering STARTTLS, and a sink that cannot.
    tls_dir = os.path.join(root, "tls")
    os.makedirs(tls_dir)
    run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout peer.key -out peer.crt "
        "-subj /CN=peer.test -days 2", tls_dir)
    os.chmod(f"{tls_dir}/peer.key", 0o644)
    os.makedirs(os.path.join(root, "tls-in"))
    tls_sink = harness.Sink(os.path.join(root, "tls-in"))
    postfix = harness.Postfix(root, tls_sink.port, extra_main=(
        f"smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {tls_dir}/peer.crt\n"
        f"smtpd_tls_key_file = {tls_dir}/peer.key\nsmtpd_tls_received_header = yes\n"))
    os.makedirs(os.path.join(root, "plain-in"))
    plain_sink = harness.Sink(os.path.join(root, "plain-in"))
    routes = (f'routes {{ domain: "tls.test" next_hop: "127.0.0.1:{postfix.port}" }}\n'
              f'routes {{ domain: "plain-only.test" next_hop: "127.0.0.1:{plain_sink.port}" }}\n')
    gw = harness.Mailseald(a.mailseald, root, relay_port=wire.port, env=env_a, hostname="gw-a.test",
                           local_domain="agency-a.test", name="gw-a", delivery_extra=routes,
                           extra=smime_conf("gw-a", da, pin_a, ca_dir,
                                            f'partners {{ domain: "agency-b.test" dca_cert_file: "{b}/dca.crt" }}') + control)
    # gw-a knows agency-c's DCA certificate (as if harvested), but agency-c is on no list.
    os.makedirs(os.path.join(gw.spool, "certs"), exist_ok=True)
    shutil.copy(f"{dc}/dca.crt", os.path.join(gw.spool, "certs", "agency-c.test.dca.pem"))
    gw.start()
    gc = harness.Mailseald(a.mailseald, os.path.join(root, "c"), relay_port=sink_c.port, env=env_c,
                           hostname="gw-c.test", local_domain="agency-c.test", name="gw-c",
                           extra=smime_conf("gw-c", dc, pin_c, ca_dir, 'partners { domain: "agency-a.test" }'))
    gc.start()
    harness.wait_for(lambda: "management API listening" in gw.read_log(), 15, "API up")

    ctl = ctl_as(a.mailsealctl, api_port, m)

    def set_policy(text, expect):
        p = os.path.join(root, f"policy-{expect}.txt")
        with open(p, "w") as f:
            f.write(text)
        return ctl("policy", "set", p, "--expect-version", str(expect))

    notices = ('notifications { admin_address: "secops@agency-a.test" notify_sender_on_hold: true '
               'gather_s: 1 digest_interval_s: 1 }\n')
    rc, o, e = set_policy('seemail_list { domain: "agency-b.test" }\n' + notices, 0)
    c.check(rc == 0, "policy v1: agency-b on the SEEMAIL list", o + e)
    harness.wait_for(lambda: "policy document in force" in gw.read_log(), 10, "policy published")

    # 1. SEEMAIL-listed partner: sealed.
    out = send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"], message("[RESTRICTED] budget", "bob@agency-b.test"))
    got = harness.wait_for(lambda: [x for x in wire.messages() if b"bob@agency-b.test" in x], 20, "sealed to b")
    c.check(b"250 2.0.0" in out and b"enveloped-data" in got[0] and SECRET not in got[0],
            "[RESTRICTED] to the SEEMAIL-listed agency-b leaves sealed", got[0][:300])

    # 2. Not listed: held; plain mail still flows; one notice each to the sender and the admin.
    before = len(wire.messages())
    send(gw.port, "alice@agency-a.test", ["carol@agency-c.test"], message("{restricted] budget", "carol@agency-c.test"))
    held = harness.wait_for(lambda: gw.queue_files("hold"), 20, "held")
    rc, o, e = ctl("-o", "json", "queue", "list", "--state", "hold")
    c.check("neither the SEEMAIL nor the TRUSTED list" in o and "[policy v1]" in o,
            "{restricted] to unlisted agency-c is held, the reason names the rule and the policy version", o)
    send(gw.port, "alice@agency-a.test", ["carol@agency-c.test"], message("lunch", "carol@agency-c.test"))
    harness.wait_for(lambda: [x for x in wire.messages() if b"Subject: lunch" in x], 20, "plain mail")
    leaked = [x for x in wire.messages() if SECRET in x and b"Subject: lunch" not in x]
    c.check(not leaked, "the classified message never left; ordinary mail to agency-c flows (SEE-AG-1)", str(len(leaked)))
    notes = harness.wait_for(
        lambda: (lambda n: n if len(n) >= 2 else None)([x for x in wire.messages() if b"held and not sent" in x]),
        30, "two notices")
    to_sender = [x for x in notes if b"To: <alice@agency-a.test>" in x]
    to_admin = [x for x in notes if b"To: <secops@agency-a.test>" in x]
    c.check(len(to_sender) == 1 and len(to_admin) == 1 and held[0].encode() in to_admin[0],
            "the sender and the administrator each get one notice naming the held message", str(len(notes)))
    c.check(all(b"From: Mail Delivery System <postmaster@agency-a.test>" in x and b"Auto-Submitted: auto-generated" in x
                and SECRET not in x for x in notes), "notices come from postmaster@, are auto-submitted, carry no content")

    # 3. An invalid change is refused whole; then agency-c goes on the TRUSTED list; release.
    rc, o, e = set_policy('trusted_list { domain: "agency c" }\n' + notices, 1)
    c.check(rc == 1 and "trusted_list[0].domain" in e, "an invalid policy is refused whole, naming the field", e)
    rc, o, e = set_policy('seemail_list { domain: "agency-b.test" }\ntrusted_list { domain: "agency-c.test" }\n' + notices, 1)
    c.check(rc == 0, "policy v2: agency-c on the TRUSTED list (no restart)", o + e)
    rc, o, e = ctl("queue", "release", held[0])
    sealed_c = harness.wait_for(
        lambda: [x for x in wire.messages() if b"carol@agency-c.test" in x and b"enveloped-data" in x], 20, "sealed to c")
    c.check(rc == 0 and SECRET not in sealed_c[0], "released after the change, it leaves sealed for agency-c", o + e)
    # agency-c's gateway opens it: hand the captured message over.
    # smtp-sink stores LF line ends: back to CRLF, then SMTP dot-stuffing.
    stuffed = sealed_c[0].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
    send(gc.port, "alice@agency-a.test", ["carol@agency-c.test"], stuffed)
    opened = harness.wait_for(lambda: [x for x in sink_c.messages() if SECRET in x], 20, "opened at c")
    c.check(b"smime=pass" in opened[0] and b"budget" in opened[0],
            "agency-c's gateway decrypts and verifies it (smime=pass)", opened[0][:400])

    # 3b. seemail-ping between the gateways: agency-c probes agency-a (gw-c learnt agency-a's
    # DCA from the message it just opened), gw-a answers signed and encrypted.
    def crlf(raw):
        return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
    send(gc.port, "ops@agency-c.test", ["seemail-ping@agency-a.test"],
         b"From: ops@agency-c.test\r\nTo: seemail-ping@agency-a.test\r\nSubject: ping\r\n"
         b"Message-ID: <probe-1@agency-c.test>\r\n\r\nping\r\n")
    probe = harness.wait_for(lambda: [x for x in sink_c.messages() if b"seemail-ping@agency-a.test" in x], 20, "probe")
    c.check(b"nveloped-data" in probe[0], "gw-c seals the probe for agency-a", probe[0][:200])
    send(gw.port, "ops@agency-c.test", ["seemail-ping@agency-a.test"], crlf(probe[0]))
    reply = harness.wait_for(lambda: [x for x in wire.messages() if b"ops@agency-c.test" in x], 20, "ping reply")
    c.check(b"nveloped-data" in reply[0] and b"SEEMAIL version" not in reply[0],
            "gw-a's ping reply leaves signed and encrypted", reply[0][:300])
    send(gc.port, "seemail-ping@agency-a.test", ["ops@agency-c.test"], crlf(reply[0]))
    got = harness.wait_for(lambda: [x for x in sink_c.messages() if b"SEEMAIL version" in x], 20, "reply opened")
    c.check(b"smime=pass" in got[0] and b"Gateway: gw-a.test" in got[0] and b"agency-b.test" in got[0]
            and b"In-Reply-To: <probe-1@agency-c.test>" in got[0],
            "agency-c reads the verified reply: SEEMAIL version, gateway, partner domains", got[0][-400:])
    n_wire = len(wire.messages())
    send(gw.port, "mallory@evil.test", ["seemail-ping@agency-a.test"], b"Subject: ping\r\n\r\nunsigned\r\n")
    time.sleep(3)
    c.check(len(wire.messages()) == n_wire and not gw.queue_files("active") and not gw.queue_files("deferred"),
            "an unsigned probe gets no reply (no open reflector) and leaves nothing queued",
            str(len(wire.messages()) - n_wire))

    # 3d. Delivery receipts (RFC 3461 NOTIFY=SUCCESS): gw-c's next hop cannot report success, so
    # gw-c sends a "relayed" receipt; gw-a's next hop can, so gw-a passes NOTIFY on and stays quiet.
    def with_notify(port, frm, to, subject):
        return harness.smtp_exchange(port, [
            f"EHLO client.test\r\nMAIL FROM:<{frm}>\r\nRCPT TO:<{to}> NOTIFY=SUCCESS,FAILURE\r\nDATA\r\n".encode(),
            f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nreceipt please\r\n.\r\nQUIT\r\n".encode()])
    with_notify(gc.port, "ops@agency-c.test", "desk@agency-c.test", "receipt-c")
    receipt = harness.wait_for(lambda: [x for x in sink_c.messages() if b"Successful Mail Delivery Report" in x], 20,
                               "receipt")
    c.check(b"Action: relayed" in receipt[0] and b"Status: 2.0.0" in receipt[0] and b"To: <ops@agency-c.test>" in receipt[0]
            and b"receipt please" not in receipt[0],
            "NOTIFY=SUCCESS to a next hop without DSN: a 'relayed' receipt (headers only) to the sender", receipt[0][:300])
    with_notify(gw.port, "alice@agency-a.test", "zed@elsewhere.test", "receipt-a")
    harness.wait_for(lambda: [x for x in wire.messages() if b"receipt-a" in x], 20, "delivered by gw-a")
    time.sleep(2)
    c.check(not [x for x in wire.messages() if b"Successful Mail Delivery Report" in x],
            "a next hop that supports DSN gets NOTIFY passed on; no receipt from us")

    # 3c. Held mail not released in time goes back to its sender (SEE-2.8c).
    rc, o, e = set_policy('seemail_list { domain: "agency-b.test" }\ntrusted_list { domain: "agency-c.test" }\n'
                          'hold_expiry_s: 2\n' + notices, 2)
    c.check(rc == 0, "policy v3: held mail expires after 2 s", o + e)
    send(gw.port, "alice@agency-a.test", ["dan@nowhere.test"], message("[SEEMAIL] q", "dan@nowhere.test"))
    send(gw.port, "bob@agency-b.test", ["dan@nowhere.test"], message("[SEEMAIL] from b", "dan@nowhere.test"))
    harness.wait_for(lambda: len(gw.queue_files("hold")) >= 2, 20, "held again")
    bounce = harness.wait_for(lambda: [x for x in wire.messages() if b"not released within 2 s" in x], 30, "expiry DSN")
    c.check(b"To: <alice@agency-a.test>" in bounce[0] and b"Status: 5.7.1" in bounce[0]
            and b"multipart/report" in bounce[0],
            "held mail expires: a DSN to its sender with the reason", bounce[0][:300])
    # The DSN to agency-b's sender is itself sealed (SEE-AG-3): nothing readable on the wire.
    to_b = harness.wait_for(lambda: [x for x in wire.messages() if b"X-Rcpt-Args: <bob@agency-b.test>" in x
                                     and b"X-Mail-Args: <>" in x], 30, "DSN to the partner")
    c.check(b"nveloped-data" in to_b[0] and b"not released within" not in to_b[0] and not gw.queue_files("hold"),
            "the DSN to a partner's sender leaves signed and encrypted; both held copies are gone", to_b[0][:300])

    # 4. 1,000 classified messages held by one missing listing: one digest per address.
    rc, o, e = set_policy('seemail_list { domain: "agency-b.test" }\ntrusted_list { domain: "agency-c.test" }\n'
                          'notifications { admin_address: "secops@agency-a.test" notify_sender_on_hold: true '
                          'gather_s: 30 digest_interval_s: 1 }\n', 3)
    c.check(rc == 0, "policy v4: notices gathered for 30 s", o + e)
    time.sleep(2)   # let earlier notice windows close

    def burst(k):
        s = smtplib.SMTP("127.0.0.1", gw.port, timeout=30)
        for i in range(250):
            s.sendmail("alice@agency-a.test", [f"x{i}@nowhere-{k}.test"],
                       message(f"[SENSITIVE] item {k}-{i}", f"x{i}@nowhere-{k}.test"))
        s.quit()
    threads = [threading.Thread(target=burst, args=(k,)) for k in range(4)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    harness.wait_for(lambda: len(gw.queue_files("hold")) >= 1000, 60, "1000 held")
    c.check(time.time() - t0 < 30, "1,000 messages were held inside the gathering window", f"{time.time() - t0:.1f} s")
    def burst_notices():
        return [x for x in wire.messages() if b"held and not sent" in x and b"nowhere-0.test" in x]
    harness.wait_for(lambda: len(burst_notices()) >= 2, 60, "digests")
    time.sleep(3)
    after = burst_notices()
    admin = [x for x in after if b"To: <secops@agency-a.test>" in x]
    c.check(len(after) == 2 and len(admin) == 1 and b"1000 messages were held" in admin[0]
            and b"and 500 more" in admin[0], "1,000 held messages: one administrator digest (and one to the sender)",
            f"{len(after)} notices")

    # 4b. TLS: STARTTLS whenever offered (SM-5); a require_tls rule means TLS or nothing (SM-6.1).
    rc, o, e = set_policy('seemail_list { domain: "agency-b.test" }\ntrusted_list { domain: "agency-c.test" }\n'
                          'domain_rules { domain: "tls.test" protection: PROTECTION_NONE require_tls: true }\n'
                          'domain_rules { domain: "plain-only.test" protection: PROTECTION_NONE require_tls: true }\n'
                          + notices, 4)
    c.check(rc == 0, "policy v5: tls.test and plain-only.test require TLS", o + e)
    send(gw.port, "alice@agency-a.test", ["ann@tls.test"], message("over tls", "ann@tls.test"))
    got = harness.wait_for(lambda: [x for x in tls_sink.messages() if b"over tls" in x], 30, "TLS delivery")
    c.check(b"with ESMTPS" in got[0] and "TLSv1." in gw.read_log(),
            "mail to tls.test goes over STARTTLS (the next hop's Received says ESMTPS; the log names the TLS version)",
            got[0][:600])
    send(gw.port, "alice@agency-a.test", ["pat@plain-only.test"], message("must not go in clear", "pat@plain-only.test"))
    harness.wait_for(lambda: "TLS required by policy" in gw.read_log(), 30, "TLS refusal")
    time.sleep(1)
    c.check(not plain_sink.messages() and (gw.queue_files("deferred") or gw.queue_files("active")),
            "a next hop without STARTTLS gets nothing: the message is deferred (4.7.5), not sent in clear",
            str(len(plain_sink.messages())))

    # 5. The decisions are in the audit trail.
    rc, o, e = ctl("-o", "json", "audit", "records", "--action", "mail.held", "--limit", "5")
    c.check(rc == 0 and "SEE-2.1b" in o and "policy v" in o, "held decisions are audited with their reason", o[-300:] + e)
    rc, o, e = ctl("-o", "json", "audit", "records", "--action", "mail.notified", "--limit", "10")
    c.check(rc == 0 and o.count("mail.notified") >= 4, "notices are audited", o[-300:])
    gw.stop()
    gc.stop()
    c.finish()


if __name__ == "__main__":
    main()
