#!/usr/bin/env python3
"""Issue #18: the appliance image, built by image/build and booted in qemu (TCG: KVM does not
work on these machines).

The rootfs, before booting:
- mailseal is installed from the project's package (`dpkg -L mailseal` lists its files), its
  unit enabled, and rated at most 2.0 by `systemd-analyze security` inside the image;
- no compiler, no apt lists or package caches, no private key, no password anyone could log in
  with (every account locked), no SSH server.

Booted (root read-only — qemu gives the disk read-only —, /var on the state partition, the
configuration and the site's public material written there: the operators' CA, three
custodians' certificates, the domain CA and a partner's certificate; the host's sink as the
next hop through qemu's user network; a second NIC as the management interface, mgmt0):
- first boot provisions the appliance (mailseal-provision.service): SoftHSM token with random
  PINs, the audit key and the management API's key inside it, a self-signed management
  certificate whose fingerprint the console shows — the test takes the certificate from the
  console, checks that fingerprint, and trusts it (mailsealctl --ca, --server-name);
- mailseald is healthy over gRPC through the forwarded management port; the same port
  forwarded to the mail interface is closed (the API only on mgmt0);
- mail for the partner sent before any domain key exists is accepted and waits, never in clear;
- the initialise ceremony runs in the guest through mailsealctl from the host: 2 of 3
  custodians, the DSA and DCA made inside the guest's token, their CSRs signed by the host's
  CA, the certificates installed over the API; then the waiting message and a new one arrive
  at the host's sink sealed: `openssl cms` opens them with the partner's key and verifies the
  signature against the CA;
- mail sent to the forwarded SMTP port is relayed to the sink on the host;
- mailseald also listens on port 2525, which the firewall does not allow: nothing answers
  there from outside;
- the guest's clock is synchronised (SM-10) against chrony running on the host (qemu's user
  network takes the guest's NTP to 10.0.2.2:123 to the host's 127.0.0.1:123; a small relay
  there counts the exchanges and hands them to chronyd on a port of the test's);
- after an orderly power-off the journal on the state partition says: multi-user reached, no
  unit failed, timesyncd synchronised to 10.0.2.2, mailseald ran as `mailseal` with
  `cap_net_bind_service` only, no_new_privs and a seccomp filter, and it said READY
  (Type=notify).
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_control_api import issue as issue_ec  # noqa: E402
from test_trust import ENC_EXT, issue as issue_rsa  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))


def sh(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def inspect_rootfs(c, tree):
    listed = sh(["dpkg", f"--root={tree}", "-L", "mailseal"]).stdout.split()
    c.check("/usr/sbin/mailseald" in listed and "/usr/lib/systemd/system/mailseald.service" in listed,
            "dpkg -L mailseal lists what the package installed in the image", " ".join(listed))
    c.check(os.path.lexists(f"{tree}/etc/systemd/system/multi-user.target.wants/mailseald.service"),
            "mailseald.service is enabled")
    r = sh(["systemd-analyze", "security", "--offline=yes", f"--root={tree}", "--threshold=20", "mailseald.service"],
           cwd=tree)
    score = re.search(r"Overall exposure level for mailseald.service: ([\d.]+)", r.stdout)
    c.check(r.returncode == 0 and score and float(score.group(1)) <= 2.0,
            f"inside the image, systemd-analyze security rates mailseald at most 2.0 ({score.group(1) if score else '?'})",
            r.stdout[-600:])
    compilers = [p for p in ("usr/bin/gcc", "usr/bin/cc", "usr/bin/c++", "usr/bin/g++", "usr/bin/clang", "usr/bin/as",
                             "usr/bin/ld") if os.path.lexists(os.path.join(tree, p))]
    compilers += [d for d in ("usr/lib/gcc",) if os.path.isdir(os.path.join(tree, d)) and
                  any("cc1" in f for _, _, fs in os.walk(os.path.join(tree, d)) for f in fs)]
    c.check(not compilers, "no compiler in the image", compilers)
    caches = [f for d in ("var/cache/apt", "var/lib/apt/lists") for _, _, fs in os.walk(os.path.join(tree, d))
              for f in fs if f not in ("lock",)]
    c.check(not caches, "no apt lists or package caches", caches[:10])
    keys = []
    for top in ("etc", "var", "root", "home", "srv", "opt", "usr/local", "usr/share"):
        for dirpath, _, files in os.walk(os.path.join(tree, top)):
            for f in files:
                p = os.path.join(dirpath, f)
                if os.path.islink(p) or not os.path.isfile(p) or os.path.getsize(p) > 1 << 20:
                    continue
                with open(p, "rb") as fh:
                    if re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----", fh.read()):
                        keys.append(p[len(tree):])
    c.check(not keys, "no private key anywhere in the image", keys)
    usable = []
    with open(f"{tree}/etc/shadow") as f:
        for line in f:
            name, pw = line.split(":")[:2]
            if pw == "" or not (pw.startswith("!") or pw.startswith("*")):
                usable.append(name)
    c.check(not usable, "no account has a password (or an empty one): all locked", usable)
    c.check(not os.path.exists(f"{tree}/usr/sbin/sshd"), "no SSH server")
    groups = {l.split(":")[0]: l.strip().split(":")[3].split(",") for l in open(f"{tree}/etc/group")}
    c.check("mailseal-token" in groups.get("softhsm", []) and "mailseal" not in groups.get("softhsm", []),
            "the token holder's account (mailseal-token) may use SoftHSM's files; mailseald's (mailseal) may not",
            str(groups.get("softhsm")))
    c.check(os.path.exists(f"{tree}/usr/lib/systemd/system/mailseal-token.service")
            and os.path.exists(f"{tree}/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"),
            "the token holder's unit and p11-kit's client module are installed")


def ntp_server(c, root):
    """chronyd serving its own clock (stratum 8, never setting the host's) on a free port, and a
    relay on 127.0.0.1:123 (where qemu's user network sends the guest's NTP) that counts the
    answers it passes back. Returns a function giving that count."""
    port = harness.free_port()
    conf = os.path.join(root, "chrony.conf")
    with open(conf, "w") as f:
        f.write(f"port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 8\ncmdport 0\n"
                f"driftfile {root}/chrony.drift\npidfile {root}/chronyd.pid\n")
    chrony = subprocess.Popen(["chronyd", "-d", "-x", "-u", "root", "-f", conf], stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(root, "chronyd.log"), "w"))
    harness._cleanups.append(lambda: chrony.poll() is None and chrony.kill())
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        relay.bind(("127.0.0.1", 123))
    except OSError as e:
        c.check(False, "UDP 127.0.0.1:123 is free for the guest's NTP", str(e))
        return lambda: 0
    relay.settimeout(0.5)
    answered = [0]

    def run():
        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        up.settimeout(2)
        while chrony.poll() is None:
            try:
                data, peer = relay.recvfrom(512)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                up.sendto(data, ("127.0.0.1", port))
                reply = up.recv(512)
            except OSError:
                continue
            relay.sendto(reply, peer)
            answered[0] += 1
    threading.Thread(target=run, daemon=True).start()
    harness._cleanups.append(relay.close)
    return lambda: answered[0]


def boot(root, image, var, console, ports):
    """qemu (TCG) booting `image`'s kernel and read-only root with the state partition `var`:
    the mail NIC forwards SMTP, 2525 and 8443 (the last two closed by the firewall); the
    management NIC (its own network, 10.9.0.0/24, in the PCI slot 10-mgmt0.link names mgmt0)
    forwards the management port. Returns (process, monitor socket)."""
    mon = os.path.join(root, f"monitor-{os.path.basename(image)}.sock")
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2", "-nodefaults",
         "-kernel", f"{image}/vmlinuz", "-initrd", f"{image}/initrd.img",
         "-append", "root=/dev/vda ro console=ttyS0 systemd.show_status=1",
         "-drive", f"file={image}/root.img,if=virtio,format=raw,readonly=on",
         "-drive", f"file={var},if=virtio,format=raw",
         "-nic", f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{ports['smtp']}-:25,"
                 f"hostfwd=tcp:127.0.0.1:{ports['closed']}-:2525,hostfwd=tcp:127.0.0.1:{ports['mgmt_on_mail']}-:8443",
         "-netdev", f"user,id=mg,net=10.9.0.0/24,hostfwd=tcp:127.0.0.1:{ports['mgmt']}-:8443",
         "-device", "virtio-net-pci,netdev=mg,addr=0x10",
         "-serial", f"file:{console}", "-display", "none", "-monitor", f"unix:{mon},server,nowait", "-no-reboot"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    harness._cleanups.append(lambda: qemu.poll() is None and qemu.kill())
    return qemu, mon


def power_off(c, qemu, mon, console):
    """An orderly stop — Ctrl-Alt-Del: systemd stops every unit and flushes the journal; qemu
    exits instead of rebooting (-no-reboot)."""
    with socket.socket(socket.AF_UNIX) as m:
        m.connect(mon)
        m.sendall(b"sendkey ctrl-alt-delete\n")
        time.sleep(1)
    try:
        qemu.wait(300)
    except subprocess.TimeoutExpired:
        qemu.kill()
        c.check(False, "the guest stops within 300 s", open(console, errors="replace").read()[-1500:])


def banner(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            return s.recv(100)
    except OSError:
        return b""


def make_ctl(a, site, crt, port):
    """mailsealctl as an operator of the site, trusting the appliance's own certificate."""
    def ctl(who, *args, port=port):
        r = subprocess.run([a.mailsealctl, "--server", f"127.0.0.1:{port}", "--server-name", "gw.appliance.test",
                            "--cert", f"{site}/{who}.crt", "--key", f"{site}/{who}.key", "--ca", crt, *args],
                           capture_output=True, text=True, timeout=120)
        return r.returncode, r.stdout, r.stderr
    return ctl


def health(ctl):
    """(exit code, {part: status}, output) once every part is reported, else None."""
    rc, o, e = ctl("so-1", "health")
    parts = dict(re.findall(r"^\s+mailseal\.(\w+)\s+(\w+)$", o, re.M))
    return (rc, parts, o + e) if parts and "UNKNOWN" not in parts.values() else None


def sealed_at(sink, root, site, subject):
    """(sealed message, signature verified, openssl's words) once a message with body
    "body <subject>" is at the sink sealed for agency-b.test: opened with the partner's key, the
    signature inside verified against the site's CA."""
    for n, m in enumerate(sink.messages()):
        if b"bob@agency-b.test" not in m or b"enveloped-data" not in m:
            continue
        sealed, inner = os.path.join(root, f"sealed-{n}.eml"), os.path.join(root, f"inner-{n}.eml")
        with open(sealed, "wb") as f:
            f.write(m)
        r = subprocess.run(["openssl", "cms", "-decrypt", "-in", sealed, "-recip", f"{site}/partner-dca.crt",
                            "-inkey", f"{site}/partner-dca.key", "-out", inner], capture_output=True)
        if r.returncode != 0:
            continue
        v = subprocess.run(["openssl", "cms", "-verify", "-in", inner, "-CAfile", f"{site}/ca.crt", "-purpose", "any"],
                           capture_output=True)
        if f"body {subject}".encode() in v.stdout:
            return m, v.returncode == 0 and b"Verification successful" in v.stderr, v.stderr
    return None


def check_sealed(c, sink, root, site, subject, timeout=120):
    got = harness.eventually(lambda: sealed_at(sink, root, site, subject), timeout, f"'{subject}' sealed at the sink")
    c.check(got is not None and f"body {subject}".encode() not in got[0],
            f"'{subject}': arrives at the host's sink sealed (never in clear) and opens with the partner's key",
            b"\n---\n".join(sink.messages())[-800:])
    c.check(got is not None and got[1], f"'{subject}': signed by the ceremony's DSA, verified against the site's CA",
            got[2][-400:] if got else b"")


def before_update(c, ctl, root, sink, smtp):
    """What the update must keep, set up on the A slot before it stops: a signed tree head of the
    audit trail exported to the host, and a sealed message waiting in the spool (the next hop
    is down)."""
    rc, o, e = ctl("so-1", "audit", "export", os.path.join(root, "head-a.json"))
    c.check(rc == 0, "slot A: a signed tree head of the audit trail is exported to the host", o + e)
    sink.stop()
    reply = harness.send_one(smtp, "bob@agency-b.test", "kept across the update", mail_from="alice@appliance.test",
                             timeout=60)
    c.check(b"250 2.0.0" in reply, "slot A: mail accepted while the next hop is down", reply[-300:])

    def deferred():
        rc, o, _ = ctl("admin-1", "-o", "json", "queue", "list", "--state", "deferred")
        return rc == 0 and json.loads(o).get("messages") or None
    c.check(harness.eventually(deferred, 120, "deferred in the spool") is not None,
            "slot A: it waits in the spool, sealed, for the next hop", ctl("admin-1", "queue", "counts")[1][-400:])


def update(c, a, root, out, var, deb, sink_port, crt, site):
    """The B slot: the same appliance with a newer package, booted on the state partition slot
    A left behind (image/README.md, "Updates")."""
    version = sh(["dpkg-deb", "-f", deb, "Version"]).stdout.strip()
    newer = f"{version}+update1"
    unpacked = os.path.join(root, "deb-b")
    r1 = sh(["dpkg-deb", "-R", deb, unpacked])
    control = os.path.join(unpacked, "DEBIAN", "control")
    with open(control) as f:
        text = f.read()
    with open(control, "w") as f:
        f.write(re.sub(r"(?m)^Version: .*$", f"Version: {newer}", text))
    deb_b = os.path.join(root, f"mailseal_{newer}_amd64.deb")
    r2 = sh(["dpkg-deb", "--root-owner-group", "-b", unpacked, deb_b])
    c.check(r1.returncode == 0 and r2.returncode == 0, f"a newer package ({newer})", r1.stderr + r2.stderr)
    out_b = os.path.join(root, "image-b")
    started = time.time()
    r = sh([os.path.join(SRC, "image", "build"), out_b],
           env=dict(os.environ, MAILSEAL_DEB=deb_b, MAILSEAL_BASE_TREE=f"{out}/tree"), timeout=1200)
    installed = sh(["dpkg-query", f"--root={out_b}/tree", "-W", "-f=${Version}", "mailseal"]).stdout
    c.check(r.returncode == 0 and installed == newer,
            f"image/build makes the B root from A's with the package upgraded ({time.time() - started:.0f} s)",
            r.stdout[-800:] + r.stderr[-800:] + installed)
    if r.returncode != 0:
        return
    sink = harness.Sink(root, port=sink_port)   # the next hop is back
    ports = dict(smtp=harness.free_port(), closed=harness.free_port(), mgmt=harness.free_port(),
                 mgmt_on_mail=harness.free_port())
    console = os.path.join(root, "console-b.log")
    qemu, mon = boot(root, out_b, var, console, ports)
    got = harness.eventually(lambda: banner(ports["smtp"]).startswith(b"220") or None, 600, "B's SMTP banner")
    text = re.sub(r"\x1b\[[0-9;]*m", "", open(console, errors="replace").read())   # systemd's colours
    c.check(got is not None and f"Welcome to mailseal appliance {newer}" in text,
            f"slot B boots ({newer} greets on the console) on A's state partition and mailseald answers",
            text[-1500:])
    if got:
        ctl = make_ctl(a, site, crt, ports["mgmt"])
        h = harness.eventually(lambda: (lambda r: r if r and r[0] == 0 else None)(health(ctl)), 120, "B healthy")
        c.check(h is not None, "slot B: healthy over gRPC with the management identity made on A's first boot "
                "(the same certificate: the token and the state were kept)", (health(ctl) or (0, 0, ""))[2])
        rc, o, e = ctl("so-1", "-o", "json", "keys", "list")
        labels = {k["label"] for k in json.loads(o).get("keys", [])} if rc == 0 else None
        c.check(labels == {"audit", "mgmt", "dsa", "dca"}, "slot B: the token's keys are all there (none made again)",
                str(labels) + e)
        rc, o, e = ctl("so-1", "audit", "verify", "--exported", os.path.join(root, "head-a.json"))
        c.check(rc == 0, "slot B: the audit trail extends the head exported on A (nothing rewritten or lost)", o + e)
        check_sealed(c, sink, root, site, "kept across the update")
        reply = harness.send_one(ports["smtp"], "bob@agency-b.test", "sealed on slot B", mail_from="alice@appliance.test",
                                 timeout=60)
        c.check(b"250 2.0.0" in reply, "slot B: new mail accepted", reply[-300:])
        check_sealed(c, sink, root, site, "sealed on slot B")
    power_off(c, qemu, mon, console)


def token_files(c, root, tree, var, journal):
    """The token holder split (README "Privileges"): SoftHSM's token files on the state
    partition are the token holder's alone, and mailseald reached the token through its socket."""
    ids = {l.split(":")[0]: int(l.split(":")[2]) for l in open(f"{tree}/etc/passwd")}
    dump = os.path.join(root, "tokens-dump")
    os.makedirs(dump)
    sh(["debugfs", "-R", f"rdump /lib/softhsm/tokens {dump}", var])
    entries = [os.path.join(d, f) for d, ds, fs in os.walk(os.path.join(dump, "tokens")) for f in ds + fs]
    wrong = [(os.path.relpath(p, dump), os.stat(p).st_uid, oct(os.stat(p).st_mode & 0o777)) for p in entries
             if os.stat(p).st_uid != ids.get("mailseal-token") or os.stat(p).st_mode & 0o077]
    c.check(entries and not wrong, f"the token's {len(entries)} files and directories belong to mailseal-token, "
            "no access for group or others (mailseald cannot read them)", str(wrong[:5]))
    c.check(re.search(r"Started mailseal-token.service|Started .*mailseal token holder", journal) is not None
            and re.search(r"mailseald\[\d+\]: .*security module ready.*p11-kit-client", journal) is not None,
            "mailseald reached the token through the token holder (p11-kit's client module)",
            "\n".join(l for l in journal.splitlines() if "token" in l or "security module" in l)[-800:])


def sh_ok(c, cmd, cwd):
    r = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        c.check(False, f"host: {cmd.split()[0]} {cmd.split()[1]}", r.stderr[-400:])
    return r


def console_certificate(console):
    """The management certificate and fingerprint mailseal-provision printed on the console (its
    lines may be interleaved with systemd's status lines)."""
    text = open(console, errors="replace").read().replace("\r", "")
    fp = re.search(r"management certificate SHA-256 fingerprint: ([0-9A-F:]{95})", text)
    begin = text.find("-----BEGIN CERTIFICATE-----", fp.end() if fp else 0)
    end = text.find("-----END CERTIFICATE-----", begin)
    if not fp or begin < 0 or end < 0:
        return None
    # journald writes "[ 30.26] mailseal-provision[330]: " in front of each line.
    lines = [re.sub(r"^(\[\s*[\d.]+\]\s*)?mailseal-provision\[\d+\]:\s*", "", l).strip()
             for l in text[begin:end].splitlines()[1:]]
    body = [l for l in lines if re.fullmatch(r"[A-Za-z0-9+/=]{1,64}", l)]
    pem = "-----BEGIN CERTIFICATE-----\n" + "\n".join(body) + "\n-----END CERTIFICATE-----\n"
    return fp.group(1), pem


def first_boot(c, a, root, site, console, sink, smtp, mgmt, mgmt_on_mail):
    """Provisioning, the management API over mgmt0, the initialise ceremony, sealed mail."""
    got = harness.eventually(lambda: console_certificate(console), 120, "the management certificate on the console")
    c.check(got is not None, "first boot: the console shows the management certificate and its fingerprint",
            open(console, errors="replace").read()[-1500:])
    if not got:
        return None, None
    fp, pem = got
    crt = os.path.join(root, "mgmt.crt")
    with open(crt, "w") as f:
        f.write(pem)
    r = sh(["openssl", "x509", "-in", crt, "-noout", "-fingerprint", "-sha256", "-subject", "-ext", "subjectAltName"])
    c.check(r.returncode == 0 and f"={fp}" in r.stdout and "DNS:gw.appliance.test" in r.stdout,
            "the certificate read there has that fingerprint and names the host (what an operator checks)", r.stdout + r.stderr)

    ctl = make_ctl(a, site, crt, mgmt)
    h = harness.eventually(lambda: health(ctl), 120, "gRPC health through the forwarded management port")
    c.check(h is not None and h[1].get("smtp") == "SERVING" and h[1].get("audit") == "SERVING",
            "gRPC health answers through the forwarded management port (the API's key is in the guest's token): "
            "smtp and audit serving", h[2] if h else ctl("so-1", "health")[2][-400:])
    c.check(h is not None and h[0] != 0 and h[1].get("sealing") == "NOT_SERVING",
            "before the ceremony sealing is not serving (no domain key yet), and so overall not healthy",
            h[2] if h else "")
    rc, o, e = ctl("so-1", "health", port=mgmt_on_mail)
    c.check(rc != 0, "the management port on the mail interface is closed (the API only on mgmt0)", o + e)
    rc, o, e = ctl("so-1", "-o", "json", "keys", "list")
    labels = {k["label"] for k in json.loads(o).get("keys", [])} if rc == 0 else None
    c.check(labels == {"audit", "mgmt"}, "the guest's token holds the audit and management keys, no domain key yet",
            str(labels) + e)

    early = "waited for the ceremony"
    reply = harness.send_one(smtp, "bob@agency-b.test", early, mail_from="alice@appliance.test", timeout=60)
    c.check(b"250 2.0.0" in reply, "before the ceremony, mail for the partner is accepted", reply[-300:])
    rc, o, e = ctl("so-1", "keys", "generate", "dsa", "--purpose", "dsa-sign", "--domain", "appliance.test")
    c.check(rc != 0 and "only in a ceremony" in e, "no key made without a ceremony on the appliance", o + e)

    rc, o, e = ctl("so-1", "-o", "json", "ceremony", "start", "--kind", "initialise", "--domain", "appliance.test",
                   "--org", "Appliance Test", "--country", "NZ", "--reason", "first boot")
    cid = json.loads(o).get("ceremony_id", "") if rc == 0 else ""
    c.check(bool(cid), "the initialise ceremony starts in the guest", o + e)
    csrs = os.path.join(root, "csrs")
    os.makedirs(csrs)
    for i in (1, 3):
        rc, o, e = ctl("so-1", "ceremony", "approve", cid, "--custodian", f"custodian-{i}", "--custodian-key",
                       f"{site}/custodian-{i}.key", "--csr-out", csrs)
    c.check(rc == 0 and "ceremony done" in o and sorted(os.listdir(csrs)) == ["dca.csr", "dsa.csr"],
            "two custodians' approvals make the DSA and DCA inside the guest's token; their CSRs come out", o + e)
    for label in ("dsa", "dca"):
        sh_ok(c, f"openssl x509 -req -in {csrs}/{label}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -copy_extensions copy "
                 f"-days 30 -out {csrs}/{label}.crt", site)
        rc, o, e = ctl("so-1", "keys", "install", label, f"{csrs}/{label}.crt", "--domain", "appliance.test")
        c.check(rc == 0, f"the CA's {label} certificate is installed over the API", o + e)

    h = harness.eventually(lambda: (lambda r: r if r and r[0] == 0 else None)(health(ctl)), 60, "healthy")
    c.check(h is not None and set(h[1].values()) == {"SERVING"},
            "with the certificates installed mailseald is healthy over gRPC: smtp, sealing, audit serving",
            (health(ctl) or (0, 0, ""))[2])
    reply = harness.send_one(smtp, "bob@agency-b.test", "sealed after the ceremony", mail_from="alice@appliance.test",
                             timeout=60)
    c.check(b"250 2.0.0" in reply, "after the ceremony, mail for the partner is accepted", reply[-300:])
    for subject in (early, "sealed after the ceremony"):
        check_sealed(c, sink, root, site, subject)
    return ctl, crt


def main():
    a = harness.args()
    c = harness.Checker("image_boot")
    root = harness.tempdir(a.keep)
    out = os.path.join(root, "image")
    if os.environ.get("MAILSEAL_IMAGE_DIR"):   # an image built before (developers): its state partition copied
        src = os.environ["MAILSEAL_IMAGE_DIR"]
        deb = None   # no package to update to: the update part is left out
        os.makedirs(out)
        for f in ("root.img", "vmlinuz", "initrd.img", "tree"):   # read only
            os.symlink(os.path.join(src, f), os.path.join(out, f))
        shutil.copy(os.path.join(src, "var.img"), out)
    else:
        build = os.path.dirname(os.path.dirname(os.path.realpath(a.mailseald)))
        r = sh(["cmake", "--build", build, "--target", "package"], timeout=900)
        debs = sorted(f for f in os.listdir(build) if re.fullmatch(r"mailseal_[\d.]+_amd64\.deb", f))
        c.check(r.returncode == 0 and debs, "the package is built", r.stderr[-600:])
        deb = os.path.join(build, debs[-1])
        started = time.time()
        r = sh([os.path.join(SRC, "image", "build"), out], env=dict(os.environ, MAILSEAL_DEB=deb), timeout=2400)
        c.check(r.returncode == 0 and os.path.exists(f"{out}/root.img"),
                f"image/build makes the image ({time.time() - started:.0f} s)", r.stdout[-1500:] + r.stderr[-1500:])
        if r.returncode != 0:
            c.finish()
    tree = f"{out}/tree"
    inspect_rootfs(c, tree)

    # The site's configuration on the state partition (/var/lib/mailseal/mailseald.conf, the
    # file /etc/mailseal/mailseald.conf links to), owned by mailseald's user.
    sink = harness.Sink(root)
    uid = gid = None
    with open(f"{tree}/etc/passwd") as f:
        for line in f:
            p = line.split(":")
            if p[0] == "mailseal":
                uid, gid = int(p[2]), int(p[3])
    c.check(uid is not None, "the package made the mailseal user", uid)
    # The site's public material (what an installer puts on the state partition with the
    # configuration): the operators' CA and an operator's certificate, three custodians, the CA
    # that certifies the domain keys, a partner gateway's DCA certificate.
    site = os.path.join(root, "site")
    os.makedirs(site)
    sh_ok(c, "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout mgmt-ca.key "
             "-out mgmt-ca.crt -subj /CN=site-operators-ca -days 2", site)
    issue_ec(site, "so-1", "mgmt-ca")
    issue_ec(site, "admin-1", "mgmt-ca")
    for i in (1, 2, 3):
        sh_ok(c, f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout custodian-{i}.key "
                 f"-out custodian-{i}.crt -subj /CN=custodian-{i} -days 2", site)
    sh_ok(c, "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -subj /CN=Site-Domain-CA -days 30", site)
    issue_rsa(site, "partner-dca", "/CN=domain-confidentiality-authority@agency-b.test",
              ENC_EXT + "subjectAltName=email:domain-confidentiality-authority@agency-b.test\n")
    custodians = "".join(f'custodians {{ name: "custodian-{i}" cert_file: "/var/lib/mailseal/site/custodian-{i}.crt" }} '
                         for i in (1, 2, 3))
    conf = os.path.join(root, "mailseald.conf")
    with open(conf, "w") as f:
        f.write('hostname: "gw.appliance.test"\nlisten { address: "0.0.0.0:25" }\nlisten { address: "0.0.0.0:2525" }\n'
                'spool_dir: "/var/spool/mailseal"\ntrusted_networks: "10.0.2.0/24"\nuser: "mailseal"\n'
                'local_domains: "appliance.test"\n'
                f'delivery {{ relay_host: "[10.0.2.2]:{sink.port}" min_backoff_s: 5 max_backoff_s: 10 }}\n'
                'hsm { module_path: "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so" token_label: "mailseal" '
                'pin_file: "/var/lib/mailseal/token.pin" }\n'
                'smime { dsa_key_label: "dsa" dca_key_label: "dca" trust_anchors_file: "/var/lib/mailseal/site/ca.crt" '
                'partners { domain: "agency-b.test" dca_cert_file: "/var/lib/mailseal/site/partner-dca.crt" } }\n'
                'control { listen: "0.0.0.0:8443" cert_file: "/var/lib/mailseal/mgmt.crt" key_label: "mgmt" '
                'client_ca_file: "/var/lib/mailseal/site/mgmt-ca.crt" roles { common_name: "so-1" role: "security-officer" } '
                'roles { common_name: "admin-1" role: "administrator" } '
                'audit { log_path: "/var/lib/mailseal/audit/log" heads_path: "/var/lib/mailseal/audit/heads" key_label: "audit" } '
                f'ceremony {{ threshold: 2 keys_only_in_ceremony: true {custodians}}} }}\n')
    var = f"{out}/var.img"
    cmds = ["mkdir /lib/mailseal/site", "mkdir /lib/mailseal/audit"]
    for d in ("site", "audit"):
        cmds += [f"set_inode_field /lib/mailseal/{d} uid {uid}", f"set_inode_field /lib/mailseal/{d} gid {gid}",
                 f"set_inode_field /lib/mailseal/{d} mode 040700"]
    files = [(conf, "mailseald.conf")] + [(os.path.join(site, f), f"site/{f}") for f in
                                          ("mgmt-ca.crt", "ca.crt", "partner-dca.crt",
                                           *(f"custodian-{i}.crt" for i in (1, 2, 3)))]
    for src, dst in files:
        cmds += [f"write {src} /lib/mailseal/{dst}", f"set_inode_field /lib/mailseal/{dst} uid {uid}",
                 f"set_inode_field /lib/mailseal/{dst} gid {gid}", f"set_inode_field /lib/mailseal/{dst} mode 0100600"]
    cmdfile = os.path.join(root, "debugfs.cmds")
    with open(cmdfile, "w") as f:
        f.write("\n".join(cmds) + "\n")
    r = sh(["debugfs", "-w", "-f", cmdfile, var])
    c.check(r.returncode == 0 and "rror" not in r.stderr and "not found" not in r.stderr,
            "the configuration and the site's certificates are on the state partition (debugfs)", r.stderr[-600:])

    ntp_answers = ntp_server(c, root)
    ctl = crt = None
    smtp, closed, mgmt, mgmt_on_mail = harness.free_port(), harness.free_port(), harness.free_port(), harness.free_port()
    console = os.path.join(root, "console.log")
    ports = dict(smtp=smtp, closed=closed, mgmt=mgmt, mgmt_on_mail=mgmt_on_mail)
    qemu, mon = boot(root, out, var, console, ports)
    booted = time.time()
    got = harness.eventually(lambda: banner(smtp).startswith(b"220") or None, 600, "the guest's SMTP banner")
    c.check(got is not None, f"the appliance boots and mailseald answers on the forwarded SMTP port "
            f"({time.time() - booted:.0f} s under TCG)", open(console, errors="replace").read()[-2000:])
    if got:
        reply = harness.send_one(smtp, "bob@partner.test", "through the appliance", timeout=60)
        c.check(b"250 2.0.0" in reply, "a message is accepted through the forwarded port", reply[-300:])
        arrived = harness.eventually(lambda: next((m for m in sink.messages() if b"through the appliance" in m), None),
                                     120, "relayed to the host's sink")
        c.check(arrived is not None and b"by gw.appliance.test (mailseal)" in arrived,
                "and relayed to the sink on the host", (arrived or b"")[:400])
        c.check(not banner(closed).startswith(b"220"),
                "port 2525, where mailseald also listens, is closed from outside (nftables default-deny)")
        ctl, crt = first_boot(c, a, root, site, console, sink, smtp, mgmt, mgmt_on_mail)
        if ctl and deb:
            before_update(c, ctl, root, sink, smtp)

    c.check(harness.eventually(lambda: ntp_answers() > 0 or None, 180, "the guest asked for the time"),
            "the guest's timesyncd got the time from chrony on the host", str(ntp_answers()))

    power_off(c, qemu, mon, console)
    jdir = os.path.join(root, "journal")
    os.makedirs(jdir)
    r = sh(["debugfs", "-R", f"rdump /log/journal {jdir}", var])
    journal = sh(["journalctl", "-D", os.path.join(jdir, "journal"), "--no-pager", "-o", "short"]).stdout
    c.check("Reached target multi-user.target" in journal or "Reached target Multi-User System" in journal,
            "the persistent journal on the state partition shows multi-user reached", journal[-800:])
    c.check(re.search(r"systemd-timesyncd\[\d+\]: (Initial clock synchronization|Contacted time server 10\.0\.2\.2)",
                      journal) is not None,
            "the journal says timesyncd synchronised to the NTP server (SM-10)",
            "\n".join(l for l in journal.splitlines() if "timesyncd" in l)[-600:])
    failed = [l for l in journal.splitlines() if re.search(r"Failed to start|Failed with result|failed with result", l)]
    c.check(not failed, "no unit failed (systemctl --failed would be empty)", "\n".join(failed[:10]))
    running = re.search(r"mailseald: running with user=(\S+) capabilities=\"?([^\"\s]*)\"? no_new_privs=(\d) seccomp=(\S+)",
                        journal)
    c.check(running is not None and running.group(1) == "mailseal" and running.group(2) == "cap_net_bind_service=eip"
            and running.group(3) == "1" and running.group(4) == "filter",
            "mailseald ran as mailseal with cap_net_bind_service only, no_new_privs and a seccomp filter",
            running.group(0) if running else "\n".join(l for l in journal.splitlines() if "mailseald" in l)[-800:])
    # After binding port 25 it gives the capability up: what /proc/<pid>/status said then.
    dropped = re.search(r"mailseald: privileges dropped (.*)", journal)
    f = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', dropped.group(1))) if dropped else {}
    c.check(dropped is not None and f.get("user") == "mailseal" and f.get("uid") == ",".join([str(uid)] * 4)
            and f.get("capprm") == f.get("capeff") == f.get("capamb") == f.get("capinh") == "0" * 16
            and f.get("capbnd") == "0000000000000400" and f.get("no_new_privs") == "1" and f.get("seccomp") == "filter",
            "once port 25 is bound: no capability left (bounding set: cap_net_bind_service, the unit's), "
            "as /proc/<pid>/status showed it (README: Privileges)",
            dropped.group(0) if dropped else "\n".join(l for l in journal.splitlines() if "mailseald" in l)[-800:])
    c.check(re.search(r"Started mailseald.service|Started .*mailseal secure-email gateway", journal) is not None,
            "systemd saw mailseald ready (Type=notify)")
    c.check("token 'mailseal' initialised" in journal and "audit key 'audit': made inside the token" in journal
            and "management TLS key 'mgmt': made inside the token" in journal,
            "the journal has the provisioning: token initialised, audit and management keys made inside it",
            "\n".join(l for l in journal.splitlines() if "provision" in l)[-800:])
    token_files(c, root, tree, var, journal)
    if ctl and deb:
        update(c, a, root, out, var, deb, sink.port, crt, site)
    c.finish()


if __name__ == "__main__":
    main()
