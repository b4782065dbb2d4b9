#!/usr/bin/env python3
"""Issue #18 (first part): the Debian package the appliance installs, and its systemd unit.

- `cmake --build BUILD --target package` makes mailseal_<version>_amd64.deb (CPack): it holds
  exactly mailseald, mailseal-provision, mailseal-spool, mailsealctl, mailseal-audit, the units and the documentation — no test
  helper, no key, no configuration with secrets —, its binaries are stripped, its Depends come
  from the binaries' libraries, and its postinst makes the `mailseal` system user and the spool
  and state directories only that user may enter.
- The unit (Type=notify, watchdog, ExecReload=SIGHUP, User=mailseal, one capability, the
  sandbox) is rated by `systemd-analyze security --offline` at most 2.0 in the package's own
  file tree; the check is not a formality: the same unit without its sandbox fails it.
"""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402


def sh(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def main():
    a = harness.args()
    c = harness.Checker("image_package")
    root = harness.tempdir(a.keep)
    build = os.path.dirname(os.path.dirname(os.path.realpath(a.mailseald)))   # BUILD/dataplane/mailseald
    r = sh(["cmake", "--build", build, "--target", "package"], timeout=900)
    debs = sorted(f for f in os.listdir(build) if re.fullmatch(r"mailseal_[\d.]+_amd64\.deb", f))
    c.check(r.returncode == 0 and debs, "the package is built (CPack DEB)", r.stdout[-800:] + r.stderr[-800:])
    if not debs:
        c.finish()
    deb = os.path.join(build, debs[-1])

    info = sh(["dpkg-deb", "-I", deb]).stdout
    depends = re.search(r"^ Depends: (.*)$", info, re.M)
    c.check(depends is not None and all(x in depends.group(1) for x in ("libssl3", "libsystemd0", "libgrpc++", "passwd")),
            "Depends comes from the binaries' libraries (dpkg-shlibdeps)", depends.group(1) if depends else info)
    files = sorted(l.split()[-1].lstrip(".") for l in sh(["dpkg-deb", "-c", deb]).stdout.splitlines()
                   if not l.startswith("d"))
    want = ["/usr/bin/mailseal-audit", "/usr/bin/mailsealctl", "/usr/lib/systemd/system/mailseald.service",
            "/usr/lib/systemd/system/mailseal-provision.service", "/usr/lib/systemd/system/mailseal-token.service",
            "/usr/sbin/mailseald", "/usr/sbin/mailseal-provision", "/usr/sbin/mailseal-spool", "/usr/share/doc/mailseal/README.md",
            "/usr/share/doc/mailseal/dpdk.conf.example", "/usr/share/doc/mailseal/mailseald.conf.example"]
    c.check(files == sorted(want), "the package holds the daemon, the first-boot provisioner, the spool reader, the CLI, the audit "
            "verifier, the units and the documentation — nothing else (no test helper, no key)", "\n".join(files))

    tree = os.path.join(root, "tree")
    c.check(sh(["dpkg-deb", "-x", deb, tree]).returncode == 0, "the package unpacks")
    for b in ("usr/sbin/mailseald", "usr/bin/mailsealctl"):
        out = sh(["file", "-b", os.path.join(tree, b)]).stdout if sh(["which", "file"]).returncode == 0 else ""
        syms = sh(["readelf", "-S", os.path.join(tree, b)]).stdout
        c.check(".debug_info" not in syms, f"{b} is stripped", out)
    control = os.path.join(root, "control")
    sh(["dpkg-deb", "-e", deb, control])
    postinst = open(os.path.join(control, "postinst")).read()
    c.check("useradd --system" in postinst and "install -d -m 0700 -o mailseal -g mailseal" in postinst,
            "postinst makes the mailseal system user and its 0700 spool and state directories", postinst)
    keyish = [p for p in files if re.search(r"\.(key|pem|pin|p12)$", p)]
    c.check(not keyish, "no key, certificate or PIN file in the package", keyish)

    unit = os.path.join(tree, "usr/lib/systemd/system/mailseald.service")
    text = open(unit).read()
    for k in ("Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID", "User=mailseal",
              "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes", "ProtectSystem=strict",
              "ReadWritePaths=/var/spool/mailseal /var/lib/mailseal", "SystemCallFilter=@system-service",
              "MemoryDenyWriteExecute=yes", "PrivateTmp=yes"):
        c.check(k in text, f"the unit says {k}")
    r = sh(["systemd-analyze", "security", "--offline=yes", f"--root={tree}", "--threshold=20",
            "mailseald.service"], cwd=tree)
    score = re.search(r"Overall exposure level for mailseald.service: ([\d.]+)", r.stdout)
    c.check(r.returncode == 0 and score is not None and float(score.group(1)) <= 2.0,
            f"systemd-analyze security rates the unit at most 2.0 ({score.group(1) if score else '?'})",
            r.stdout[-1500:] + r.stderr[-500:])
    # The same unit without its sandbox is refused by the same check.
    bare = "\n".join(l for l in text.splitlines()
                     if not re.match(r"(Protect|Private|Restrict|SystemCall|Capability|Ambient|NoNewPriv|Memory|"
                                     r"Lock|ProcSubset|RemoveIPC|Keyring|Device|UMask|User=|Group=)", l))
    weak_dir = os.path.join(root, "weak", "usr/lib/systemd/system")
    os.makedirs(weak_dir)
    with open(os.path.join(weak_dir, "mailseald.service"), "w") as f:
        f.write(bare)
    r = sh(["systemd-analyze", "security", "--offline=yes", f"--root={os.path.join(root, 'weak')}", "--threshold=20",
            "mailseald.service"], cwd=root)
    c.check(r.returncode != 0, "the check fails a unit without the sandbox (it can fail)", r.stdout[-400:])
    c.finish()


if __name__ == "__main__":
    main()
