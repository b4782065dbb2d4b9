#!/usr/bin/env python3
"""Issue #12 end to end (REQUIREMENTS §2-§3: SEE-2.1, SEE-2.1b, SEE-2.4, SEE-2.6, SEE-2.8,
SEE-2.10, SEE-AG-4, DE-5): the ways past the gateway's protection found by trying it, each
walked against real mailseald processes and real peers, with a capture at the sink for "never
in clear on the wire".

1. No smime section: classified mail hidden in every way a header can hide it (a second
   Subject, "Subject :", folded, RFC 2047 in UTF-16, a wrapped inner Subject behind a second
   Content-Type) is held; ordinary mail flows; Received: has its ';' with several recipients.
2. Outbound with S/MIME: partners whose pinned DCA breaks SEE-2.6 or has a 1024-bit key are
   held; a partner that announced only AES-128-CBC gets AES-128-CBC (read back with openssl
   cms); the sealed outer message carries our Received:.
3. Inbound: `openssl cms` and gpgsm sign whole RFC 5322 messages with conflicting inner/outer
   headers; one From, one Subject arrive, the warning on it, the author checked.
4. Damaged key blocks (made with `openssl cms -encrypt`, the key block rewritten): each held
   once, the same reason, no token failure, no retry.
5. One validation path: every refusal at start-up is a refusal of --check-config, and SIGHUP
   refuses the same file.
6. The audit trail on a full disk: new mail gets 451 4.3.0, not accepted unaudited.
"""
import base64
import os
import re
import signal
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_control_api import control_pki  # noqa: E402
from test_smime_gateways import MODULE, make_pki, run, send, smime_conf  # noqa: E402

SIGN_EXT = "keyUsage=critical,digitalSignature,nonRepudiation\nextendedKeyUsage=emailProtection\n"
ENC_EXT = "keyUsage=critical,keyEncipherment\nextendedKeyUsage=emailProtection\n"


def issue(d, name, subject, ext, ca="ca", bits=2048):
    with open(os.path.join(d, f"{name}.cnf"), "w") as f:
        f.write("[x]\n" + ext)
    run(f"openssl req -newkey rsa:{bits} -nodes -keyout {name}.key -out {name}.csr -subj '{subject}' && "
        f"openssl x509 -req -in {name}.csr -CA {ca}.crt -CAkey {ca}.key -CAcreateserial -days 30 "
        f"-extfile {name}.cnf -extensions x -out {name}.crt", d)


def crlf(b):
    return re.sub(rb"(?<!\r)\n", b"\r\n", b)


def header(m):
    """The header block, line ends as LF (smtp-sink writes LF)."""
    return m.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0] + b"\n"


def fields(m, name):
    return len(re.findall(rb"(?im)^" + name.encode() + rb"[ \t]*:", header(m)))


def main():
    a = harness.args()
    c = harness.Checker("trust")
    root = harness.tempdir(a.keep)

    # ---- 1. Policy only: no smime section --------------------------------------------------
    sink0 = harness.Sink(root)
    g0 = harness.Mailseald(a.mailseald, root, relay_port=sink0.port, name="g0").start()
    hidden = {
        "dup-subject": b"Subject: lunch\r\nSubject: [RESTRICTED] budget\r\n",
        "spaced": b"Subject : {restricted] budget\r\n",
        "folded": b"Subject:\r\n [IN-CONFIDENCE]\r\n budget\r\n",
        "utf16": b"Subject: =?UTF-16BE?B?AFsAUgBFAFMAVABSAEkAQwBUAEUARABd?= budget\r\n",
        "wrapped": (b"Subject: [...]\r\nContent-Type: text/plain\r\n"
                    b"Content-Type: message/rfc822; forwarded=\"no\"\r\n\r\nSubject: ok\r\nSubject: [SEEMAIL] inner\r\n"),
    }
    for name, fields_ in hidden.items():
        body = b"From: alice@agency-a.test\r\nTo: x@plain.test\r\n" + fields_
        body += b"\r\n" + f"SECRET-{name}\r\n".encode()
        out = send(g0.port, "alice@agency-a.test", ["x@plain.test"], body)
        c.check(b"250 2.0.0" in out, f"policy only, {name}: accepted (it is held, not refused)", out.decode(errors="replace"))
    out = send(g0.port, "alice@agency-a.test", ["x@plain.test", "y@plain.test"],
               b"From: alice@agency-a.test\r\nSubject: lunch\r\n\r\nORDINARY\r\n")
    got = harness.wait_for(lambda: [m for m in sink0.messages() if b"ORDINARY" in m], 20, "ordinary mail delivered")
    c.check(True, "policy only: ordinary mail keeps flowing (SEE-AG-1)")
    rcv = re.search(rb"Received: (from client\.test.*?)\n(?![ \t])", header(got[0]), re.S)
    c.check(rcv is not None and b";" in rcv.group(1) and re.search(rb"; \w{3}, \d", rcv.group(1)) is not None,
            "Received: has ';' before the date with several recipients (RFC 5322 3.6.7)", rcv.group(1) if rcv else b"")
    harness.wait_for(lambda: len(g0.queue_files("hold")) >= len(hidden), 20, "classified mail held")
    time.sleep(1)
    leaked = [m for m in sink0.messages() if b"SECRET-" in m]
    c.check(not leaked and len(g0.queue_files("hold")) == len(hidden),
            "no smime section: every hidden classified message is held, none reached the sink (SEE-2.1b)",
            f"{len(leaked)} leaked, {len(g0.queue_files('hold'))} held")
    c.check("SEE-2.1b" in g0.read_log(), "the hold says why")

    # ---- PKI for the S/MIME parts -----------------------------------------------------------
    ca_dir, [(da, env_a, pin_a)] = make_pki(root, a.keygen, [("gw-a", "agency-a.test")])
    p = os.path.join(root, "partners")
    os.makedirs(p)
    for f in ("ca.crt", "ca.key"):
        os.symlink(os.path.join(ca_dir, f), os.path.join(p, f))
    issue(p, "dsa-b", "/CN=domain-signing-authority@agency-b.test", SIGN_EXT +
          "subjectAltName=email:domain-signing-authority@agency-b.test\n")
    issue(p, "dca-128", "/CN=domain-confidentiality-authority@agency-128.test", ENC_EXT +
          "subjectAltName=email:domain-confidentiality-authority@agency-128.test\n")
    issue(p, "dca-weak", "/CN=domain-confidentiality-authority@agency-weak.test", ENC_EXT +
          "subjectAltName=email:domain-confidentiality-authority@agency-weak.test\n", bits=1024)
    issue(p, "dca-cn", "/CN=mallory", ENC_EXT + "subjectAltName=email:domain-confidentiality-authority@agency-cn.test\n")
    run("openssl req -x509 -newkey rsa:2048 -nodes -keyout evil.key -out evil.crt -subj /CN=Evil-CA -days 30", p)
    issue(p, "dsa-evil", "/CN=domain-signing-authority@agency-b.test", SIGN_EXT +
          "subjectAltName=email:domain-signing-authority@agency-b.test\n", ca="evil")

    sink = harness.Sink(root)
    ga_root = os.path.join(root, "ga")
    os.makedirs(os.path.join(ga_root, "spool", "certs"))
    with open(os.path.join(ga_root, "spool", "certs", "agency-128.test.caps"), "w") as f:
        f.write("AES-128-CBC\nDES-EDE3-CBC\n")   # what agency-128 announced (learnt earlier)
    partners = " ".join(f'partners {{ domain: "agency-{n}.test" dca_cert_file: "{p}/dca-{n}.crt" }}'
                        for n in ("128", "weak", "cn")) + ' partners { domain: "agency-b.test" }'
    ga = harness.Mailseald(a.mailseald, root, relay_port=sink.port, name="ga", env=env_a, hostname="gw-a.test",
                           extra=smime_conf("gw-a", da, pin_a, ca_dir, partners))
    ga.start()
    harness.wait_for(lambda: "security module ready" in ga.read_log(), 15, "token opened")

    # ---- 2. Outbound: unsuitable partner certificates, announced ciphers --------------------
    for n in ("weak", "cn", "128"):
        out = send(ga.port, "alice@agency-a.test", [f"bob@agency-{n}.test"],
                   f"From: alice@agency-a.test\r\nTo: bob@agency-{n}.test\r\nSubject: to {n}\r\n\r\nSECRET-OUT-{n}\r\n".encode())
        c.check(b"250 2.0.0" in out, f"mail for agency-{n}.test accepted")
    sealed = harness.wait_for(lambda: [m for m in sink.messages() if b"agency-128.test" in header(m)], 30,
                              "sealed copy for agency-128")
    harness.wait_for(lambda: len(ga.queue_files("hold")) >= 2, 20, "two held")
    log = ga.read_log()
    c.check("unsuitable: its RSA key has 1024 bits" in log, "a 1024-bit partner DCA: held with the reason (SEE-2.4)")
    c.check("unsuitable: its CN 'mallory'" in log, "a pinned DCA that breaks SEE-2.6: held with the reason")
    with open(os.path.join(root, "aes128.eml"), "wb") as f:
        f.write(sealed[0])
    printed = run("openssl cms -cmsout -print -inform SMIME -in aes128.eml", root)
    c.check("aes-128-cbc" in printed and "des-ede3" not in printed,
            "agency-128 announced only AES-128-CBC (and 3DES): it gets AES-128-CBC, never 3DES (RFC 8551 2.7.1.1)")
    h = header(sealed[0])
    ours = h.find(b"by gw-a.test (mailseal)")
    c.check(0 < ours < h.find(b"\nFrom: "),
            "the sealed outer message carries our own Received: (RFC 5321 4.4)", header(sealed[0])[:300])
    c.check(not [m for m in sink.messages() if b"SECRET-OUT-" in m],
            "never in clear on the wire: no outbound secret at the sink (held or sealed)")

    # ---- 3. Inbound: whole messages signed by openssl cms and gpgsm --------------------------
    inner = (b"From: CEO <ceo@agency-a.test>\r\nTo: bob@agency-a.test\r\nSubject: transfer the funds\r\n"
             b"Message-ID: <t3@agency-b.test>\r\n\r\nINBOUND-CMS please pay\r\n")
    with open(os.path.join(p, "inner.eml"), "wb") as f:
        f.write(inner)
    run("openssl cms -sign -in inner.eml -signer dsa-b.crt -inkey dsa-b.key -nodetach -binary "
        "-from bob@agency-b.test -to bob@agency-a.test -subject 'quarterly report' -out signed.eml && "
        f"openssl cms -encrypt -in signed.eml -recip {da}/dca.crt -aes256 -from bob@agency-b.test "
        "-to bob@agency-a.test -subject 'quarterly report' -out sealed.eml", p)
    with open(os.path.join(p, "sealed.eml"), "rb") as f:
        out = send(ga.port, "bob@agency-b.test", ["bob@agency-a.test"], crlf(f.read()).rstrip(b"\r\n"))
    c.check(b"250 2.0.0" in out, "openssl cms: signed then encrypted whole message accepted")
    got = harness.wait_for(lambda: [m for m in sink.messages() if b"INBOUND-CMS" in m], 30, "opened message delivered")[0]
    c.check(fields(got, "From") == 1 and fields(got, "Subject") == 1 and fields(got, "To") == 1,
            "openssl cms: one From, one To, one Subject delivered (RFC 5322 3.6)", header(got))
    c.check(b"From: CEO <ceo@agency-a.test>" in got and b"smime=fail" in got and b"author ceo@agency-a.test" in got
            and b"X-Mailseal-Auth-Level: none" in got,
            "the From the user sees is the one checked: our own domain signed by agency-b fails (SEE-2.6)", header(got))
    c.check(re.search(rb"(?m)^Subject: \[HARD WARNING: Sender address does not match[^\r\n]*transfer the funds", got)
            is not None, "the HARD warning is on the one Subject the user sees", header(got))

    home = os.path.join(root, "gnupg")
    os.makedirs(home, mode=0o700)
    with open(os.path.join(home, "gpg-agent.conf"), "w") as f:
        f.write("allow-loopback-pinentry\n")
    with open(os.path.join(home, "gpgsm.conf"), "w") as f:
        f.write("disable-crl-checks\ndisable-dirmngr\n")
    genv = dict(os.environ, GNUPGHOME=home)
    gpg = "gpgsm --batch"
    try:
        run("openssl pkcs12 -export -in dsa-evil.crt -inkey dsa-evil.key -out dsa-evil.p12 -passout pass:fixture "
            "-certpbe PBE-SHA1-3DES -keypbe PBE-SHA1-3DES -macalg sha1", p)
        for attempt in range(5):   # gpg-agent's loopback exchange fails now and then on a busy machine
            r = subprocess.run(f"echo fixture | {gpg} --pinentry-mode loopback --passphrase-fd 0 --import dsa-evil.p12 "
                               f"&& {gpg} --import evil.crt", shell=True, cwd=p, env=genv, capture_output=True, text=True)
            # gpgsm can report the import done while the agent has not stored the secret key:
            # retry until the key is listed as a secret one.
            have = subprocess.run(f"{gpg} --list-secret-keys domain-signing-authority@agency-b.test", shell=True,
                                  cwd=p, env=genv, capture_output=True, text=True)
            if r.returncode == 0 and have.returncode == 0 and "agency-b.test" in have.stdout:
                break
            subprocess.run("gpgconf --kill all", shell=True, env=genv)
        fpr = run(f"{gpg} --with-colons --list-keys Evil-CA | awk -F: '/^fpr/{{print $10; exit}}'", p, env=genv).strip()
        with open(os.path.join(home, "trustlist.txt"), "w") as f:
            f.write(f"{fpr} S\n")   # the partner's own world trusts its CA; our gateway does not
        with open(os.path.join(p, "g-inner.eml"), "wb") as f:
            f.write(b"From: bob@agency-b.test\r\nTo: x@agency-a.test\r\nSubject: the real subject\r\n\r\nINBOUND-GPGSM\r\n")
        for attempt in range(3):
            r = subprocess.run(f"echo fixture | {gpg} --pinentry-mode loopback --passphrase-fd 0 --include-certs -1 "
                               "-u domain-signing-authority@agency-b.test --sign --output g.der g-inner.eml",
                               shell=True, cwd=p, env=genv, capture_output=True, text=True)
            if r.returncode == 0:
                break
        c.check(r.returncode == 0, "gpgsm signed a whole message", r.stderr[-500:])
        with open(os.path.join(p, "g.der"), "rb") as f:
            b64 = base64.encodebytes(f.read()).replace(b"\n", b"\r\n")
        msg = (b"From: alice@agency-b.test\r\nTo: x@agency-a.test\r\nSubject: the outer subject\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\n" + b64)
        out = send(ga.port, "alice@agency-b.test", ["x@agency-a.test"], msg.rstrip(b"\r\n"))
        got = harness.wait_for(lambda: [m for m in sink.messages() if b"INBOUND-GPGSM" in m], 30, "gpgsm message")[0]
        c.check(fields(got, "From") == 1 and fields(got, "Subject") == 1,
                "gpgsm: one From and one Subject delivered", header(got))
        c.check(b"Subject: [HARD WARNING: Certificate unknown - message integrity uncertain] the real subject" in got
                and b"the outer subject" not in got,
                "gpgsm, a signer from an unknown CA: the HARD warning is on the Subject shown (SEE-2.8)", header(got))
    finally:
        subprocess.run("gpgconf --kill all", shell=True, env=genv)

    # ---- 4. Damaged key blocks ---------------------------------------------------------------
    with open(os.path.join(p, "plain.eml"), "wb") as f:
        f.write(b"From: bob@agency-b.test\r\nSubject: x\r\n\r\nDAMAGED-CONTENT\r\n")
    run(f"openssl cms -encrypt -in plain.eml -recip {da}/dca.crt -aes256 -binary -outform DER -out env.der", p)
    with open(os.path.join(p, "env.der"), "rb") as f:
        der = f.read()
    n = int(run(f"openssl x509 -noout -modulus -in {da}/dca.crt", p).strip().split("=")[1], 16)
    at = der.find(b"\x04\x82\x01\x00") + 4
    c.check(at > 4, "the RecipientInfo's encrypted key found")

    def raw(block):
        return pow(int.from_bytes(block, "big"), 65537, n).to_bytes(256, "big")

    def nonzero(k):
        return bytes(b or 0x5a for b in os.urandom(k))

    damage = {
        "block type 1": raw(b"\x00\x01" + b"\xff" * 221 + b"\x00" + nonzero(32)),
        "no separator": raw(b"\x00\x02" + nonzero(254)),
        "wrong key": raw(b"\x00\x02" + nonzero(221) + b"\x00" + nonzero(32)),
        "random bytes": os.urandom(256),
    }
    holds_before = set(ga.queue_files("hold"))
    for kind, ek in damage.items():
        body = base64.encodebytes(der[:at] + ek + der[at + 256:]).replace(b"\n", b"\r\n")
        msg = (f"From: bob@agency-b.test\r\nTo: x@agency-a.test\r\nSubject: damaged {kind}\r\nMIME-Version: 1.0\r\n"
               "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n"
               "Content-Transfer-Encoding: base64\r\n\r\n").encode() + body
        out = send(ga.port, "bob@agency-b.test", ["x@agency-a.test"], msg.rstrip(b"\r\n"))
        c.check(b"250 2.0.0" in out, f"damaged key ({kind}) accepted")
    harness.wait_for(lambda: len(set(ga.queue_files("hold")) - holds_before) >= len(damage), 30, "damaged held")
    time.sleep(4)   # retries would come every 1-2 s (min/max backoff): none may
    new_holds = set(ga.queue_files("hold")) - holds_before
    reasons = set()
    for h in new_holds:
        m = re.search(rb"the encrypted content cannot be decrypted for our domain[^\x00-\x1f\"]*",
                      ga.spool_envelope("hold", h))
        reasons.add(m.group(0) if m else b"?")
    log = ga.read_log()
    c.check(len(new_holds) == len(damage) and not ga.queue_files("deferred"),
            "every damaged key block is held once, none deferred for retry", f"{len(new_holds)} held")
    c.check(reasons == {b"the encrypted content cannot be decrypted for our domain (damaged, or not for our key)"},
            "the same reason for every kind of damage (no padding oracle)", repr(reasons))
    c.check("token private-key operation failed" not in log and "refused a key operation" not in log,
            "the token refused no operation: damage is bad input, not a token fault")
    c.check(not [m for m in sink.messages() if b"DAMAGED-CONTENT" in m], "nothing of them was delivered")
    ga.stop()

    # ---- 5. One validation path --------------------------------------------------------------
    bad = {}
    loose = os.path.join(root, "loose.pin")
    with open(loose, "w") as f:
        f.write("x\n")
    os.chmod(loose, 0o644)
    bad["loose PIN file"] = (f'hsm {{ module_path: "{MODULE}" token_label: "gw-a" pin_file: "{loose}" }}', "")
    spool_file = os.path.join(root, "a-file")
    open(spool_file, "w").close()
    bad["spool is a file"] = ("", spool_file)
    bad["unknown role"] = (smime_conf("gw-a", da, pin_a, ca_dir, "") +
                           f'control {{ listen: "127.0.0.1:1" cert_file: "{da}/dsa.crt" key_file: "{pin_a}" '
                           f'client_ca_file: "{ca_dir}/ca.crt" roles {{ common_name: "x" role: "root" }} '
                           f'audit {{ log_path: "{root}/l" heads_path: "{root}/h" key_label: "audit" }} }}', "")
    bad["control without hsm"] = (f'control {{ listen: "127.0.0.1:1" audit {{ log_path: "{root}/l" }} }}', "")
    bad["missing DSA certificate"] = (smime_conf("gw-a", da, pin_a, ca_dir, "").replace(f"{da}/dsa.crt", f"{da}/nope.crt"), "")
    for what, (extra, spool) in bad.items():
        gw = harness.Mailseald(a.mailseald, root, name="cfg-" + what.replace(" ", "-"), extra=extra, env=env_a)
        if spool:
            with open(gw.config) as f:
                text = f.read()
            with open(gw.config, "w") as f:
                f.write(re.sub(r'spool_dir: "[^"]*"', f'spool_dir: "{spool}"', text))
        chk = subprocess.run([a.mailseald, "--check-config", gw.config], capture_output=True, text=True, timeout=30, env=env_a)
        start = subprocess.run([a.mailseald, "--config", gw.config], capture_output=True, text=True, timeout=30, env=env_a)
        c.check(chk.returncode == 2 and start.returncode == 2 and chk.stderr.strip() == start.stderr.strip(),
                f"{what}: refused alike by --check-config and at start (exit 2, same words)",
                f"check {chk.returncode}: {chk.stderr.strip()[-200:]} | start {start.returncode}: {start.stderr.strip()[-200:]}")
    # SIGHUP refuses what --check-config refuses: g0 gets the loose PIN file.
    with open(g0.config) as f:
        good = f.read()
    with open(g0.config, "a") as f:
        f.write(bad["loose PIN file"][0] + "\n")
    g0.proc.send_signal(signal.SIGHUP)
    harness.wait_for(lambda: "reload refused" in g0.read_log(), 10, "reload refused")
    c.check(re.search(r"must be owned by (us|uid \d+) with mode 0600 or 0400", g0.read_log().split("reload refused")[-1][:600]),
            "SIGHUP refuses the file --check-config refuses, with the same reason")
    with open(g0.config, "w") as f:
        f.write(good)
    g0.stop()

    # ---- 6. Audit trail on a full disk: 451, never unaudited mail ---------------------------
    m = control_pki(root, a.keygen, da, env_a, pin_a, ca_dir, ("admin-1",))
    audit_dir = os.path.join(root, "auditfs")
    os.makedirs(audit_dir)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", audit_dir]).returncode == 0
    c.check(mounted, "a small tmpfs for the audit log (a disk that fills up)")
    try:
        api_port = harness.free_port()
        control = (f'control {{ listen: "127.0.0.1:{api_port}" cert_file: "{m}/server.crt" key_file: "{m}/server.key" '
                   f'client_ca_file: "{m}/mgmt-ca.crt" roles {{ common_name: "admin-1" role: "administrator" }} '
                   f'audit {{ log_path: "{audit_dir}/audit.log" heads_path: "{audit_dir}/audit.heads" '
                   f'key_label: "audit" }} }}')
        gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port, name="gaudit", env=env_a, hostname="gw-a.test",
                               extra=smime_conf("gw-a", da, pin_a, ca_dir, "") + control).start()
        harness.wait_for(lambda: "management API listening" in gw.read_log(), 15, "API up")
        ok = send(gw.port, "alice@agency-a.test", ["x@plain.test"], b"From: alice@agency-a.test\r\nSubject: a\r\n\r\nfirst\r\n")
        c.check(b"250 2.0.0" in ok, "with a writable trail mail is accepted")
        subprocess.run(["dd", "if=/dev/zero", f"of={audit_dir}/fill", "bs=4k", "count=1000"], capture_output=True)
        # Mail events now fail to append once the log's last page is full (tmpfs pages are 4 KiB).
        deadline = time.time() + 60
        i = 0
        while "mail events can no longer be recorded" not in gw.read_log() and time.time() < deadline and i < 200:
            send(gw.port, "alice@agency-a.test", ["x@plain.test"],
                 f"From: alice@agency-a.test\r\nSubject: f{i}\r\n\r\n{'x' * 200}\r\n".encode())
            i += 1
            time.sleep(0.05)
        harness.wait_for(lambda: "mail events can no longer be recorded" in gw.read_log(), 20, "audit failure noticed")
        out = send(gw.port, "alice@agency-a.test", ["x@plain.test"], b"From: alice@agency-a.test\r\nSubject: b\r\n\r\nlater\r\n")
        c.check(b"451 4.3.0 Audit trail unavailable" in out, "the trail cannot record: new mail gets 451 4.3.0 (fail closed)",
                out.decode(errors="replace")[-300:])
        # Issue #13: space returns — the waiting events are written and mail is accepted again;
        # a restart finds the trail whole (no torn record, nothing called tampering).
        os.unlink(f"{audit_dir}/fill")
        harness.wait_for(lambda: "mail events are recorded again" in gw.read_log(), 20, "audit recovery")
        out = send(gw.port, "alice@agency-a.test", ["x@plain.test"], b"From: alice@agency-a.test\r\nSubject: c\r\n\r\nagain\r\n")
        c.check(b"250 2.0.0" in out, "space again: the trail records and mail is accepted again (issue #13)")
        gw.stop()
        gw.start()
        harness.wait_for(lambda: "audit trail checked" in gw.read_log() or "DAMAGED" in gw.read_log(), 15, "trail checked")
        c.check("DAMAGED" not in gw.read_log() and "torn tail" not in gw.read_log(),
                "after the full disk the trail opens whole at restart, nothing called tampering")
        gw.stop()
    finally:
        if mounted:
            subprocess.run(["umount", "-l", audit_dir])
    c.finish()


if __name__ == "__main__":
    main()
