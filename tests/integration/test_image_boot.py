#!/usr/bin/env python3
"""Issue #18: the appliance image, built by image/build and booted in qemu (TCG: KVM does not
work on these machines).

The rootfs, before booting:
- mailseal is installed from the project's package (`dpkg -L mailseal` lists its files), its
  unit enabled, and rated at most 2.0 by `systemd-analyze security` inside the image;
- no compiler, no apt lists or package caches, no private key, no password anyone could log in
  with (every account locked), no SSH server.

Booted (root read-only — qemu gives the disk read-only —, /var on the state partition, the
configuration written there; the host's sink as the next hop through qemu's user network):
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


def main():
    a = harness.args()
    c = harness.Checker("image_boot")
    root = harness.tempdir(a.keep)
    out = os.path.join(root, "image")
    if os.environ.get("MAILSEAL_IMAGE_DIR"):   # an image built before (developers): its state partition copied
        src = os.environ["MAILSEAL_IMAGE_DIR"]
        os.makedirs(out)
        for f in ("root.img", "vmlinuz", "initrd.img", "tree"):   # read only
            os.symlink(os.path.join(src, f), os.path.join(out, f))
        shutil.copy(os.path.join(src, "var.img"), out)
    else:
        build = os.path.dirname(os.path.dirname(os.path.realpath(a.mailseald)))
        r = sh(["cmake", "--build", build, "--target", "package"], timeout=900)
        debs = sorted(f for f in os.listdir(build) if re.fullmatch(r"mailseal_[\d.]+_amd64\.deb", f))
        c.check(r.returncode == 0 and debs, "the package is built", r.stderr[-600:])
        started = time.time()
        r = sh([os.path.join(SRC, "image", "build"), out],
               env=dict(os.environ, MAILSEAL_DEB=os.path.join(build, debs[-1])), timeout=2400)
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
    conf = os.path.join(root, "mailseald.conf")
    with open(conf, "w") as f:
        f.write('hostname: "gw.appliance.test"\nlisten { address: "0.0.0.0:25" }\nlisten { address: "0.0.0.0:2525" }\n'
                'spool_dir: "/var/spool/mailseal"\ntrusted_networks: "10.0.2.0/24"\nuser: "mailseal"\n'
                f'delivery {{ relay_host: "[10.0.2.2]:{sink.port}" }}\n')
    var = f"{out}/var.img"
    for cmd in (f"write {conf} /lib/mailseal/mailseald.conf",
                f"set_inode_field /lib/mailseal/mailseald.conf uid {uid}",
                f"set_inode_field /lib/mailseal/mailseald.conf gid {gid}",
                "set_inode_field /lib/mailseal/mailseald.conf mode 0100600"):
        r = sh(["debugfs", "-w", "-R", cmd, var])
        c.check(r.returncode == 0 and "rror" not in r.stderr, f"debugfs: {cmd.split()[0]}", r.stderr[-300:])

    ntp_answers = ntp_server(c, root)
    smtp, closed = harness.free_port(), harness.free_port()
    mon = os.path.join(root, "monitor.sock")
    console = os.path.join(root, "console.log")
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2", "-nodefaults",
         "-kernel", f"{out}/vmlinuz", "-initrd", f"{out}/initrd.img",
         "-append", "root=/dev/vda ro console=ttyS0 systemd.show_status=1",
         "-drive", f"file={out}/root.img,if=virtio,format=raw,readonly=on",
         "-drive", f"file={var},if=virtio,format=raw",
         "-nic", f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{smtp}-:25,hostfwd=tcp:127.0.0.1:{closed}-:2525",
         "-serial", f"file:{console}", "-display", "none", "-monitor", f"unix:{mon},server,nowait", "-no-reboot"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    harness._cleanups.append(lambda: qemu.poll() is None and qemu.kill())
    booted = time.time()

    def banner(port):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.settimeout(5)
                return s.recv(100)
        except OSError:
            return b""
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

    c.check(harness.eventually(lambda: ntp_answers() > 0 or None, 180, "the guest asked for the time"),
            "the guest's timesyncd got the time from chrony on the host", str(ntp_answers()))

    # An orderly stop — Ctrl-Alt-Del: systemd stops every unit and flushes the journal; qemu
    # exits instead of rebooting (-no-reboot) —, then the journal from the state partition.
    with socket.socket(socket.AF_UNIX) as m:
        m.connect(mon)
        m.sendall(b"sendkey ctrl-alt-delete\n")
        time.sleep(1)
    try:
        qemu.wait(300)
    except subprocess.TimeoutExpired:
        qemu.kill()
        c.check(False, "the guest stops within 300 s", open(console, errors="replace").read()[-1500:])
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
    c.finish()


if __name__ == "__main__":
    main()
