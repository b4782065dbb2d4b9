#!/usr/bin/env python3
"""Issue #18: the privilege drop, outside the image (REQUIREMENTS.md §8 CARD image, SEE-2.4b).

mailseald is started as root — as every test of this project starts it — with `user:
"mailseal"`, a listener on a privileged port, a token, S/MIME and the management API. It must:
- bind the privileged port, then run as mailseal: every uid and gid of the process and of every
  thread is mailseal's, no capability in any set (inheritable, permitted, effective, bounding,
  ambient), no_new_privs, a seccomp filter (read from /proc/<pid>/status and each task's);
- still do its work as that user: mail for a partner leaves sealed, the token signs, the
  management API answers healthy, SIGHUP reloads, the spool's files are mailseal's;
- refuse a management port it could no longer bind, and a user that is root or unknown,
  before starting (file and field named);
- started as root without `user`, say so with a warning (and still set no_new_privs and the
  filter).
"""
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_control_api import control_pki  # noqa: E402
from test_smime_gateways import make_pki, send, smime_conf  # noqa: E402

ZERO = "0000000000000000"


def status_fields(path):
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def privileged_port():
    """A port below 1024 nothing listens on (only root may bind it)."""
    for port in range(900, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port below 1024")


def main():
    a = harness.args()
    c = harness.Checker("privileges")
    if os.geteuid() != 0:
        print("privileges: SKIPPED (the drop starts as root; the test command runs as root)")
        return
    root = harness.tempdir(a.keep)
    user = harness.ensure_daemon_user()
    pw = pwd.getpwnam(user)
    ca_dir, [(da, env_a, pin_a), (db, _env_b, _pin_b)] = make_pki(root, a.keygen, [("gw-a", "agency-a.test"),
                                                                                   ("gw-b", "agency-b.test")])
    m = control_pki(root, a.keygen, da, env_a, pin_a, ca_dir, ("admin-1",))
    sink = harness.Sink(root)       # agency-b's gateway, as far as A can tell
    api_port = harness.free_port()
    control = (f'control {{ listen: "127.0.0.1:{api_port}" cert_file: "{m}/server.crt" key_file: "{m}/server.key" '
               f'client_ca_file: "{m}/mgmt-ca.crt" roles {{ common_name: "admin-1" role: "administrator" }} '
               f'audit {{ log_path: "{root}/a/audit/audit.log" heads_path: "{root}/a/audit/audit.heads" '
               f'key_label: "audit" }} }}')
    os.makedirs(os.path.join(root, "a", "audit"))
    gw = harness.Mailseald(a.mailseald, root, name="a", env=env_a, hostname="gw-a.test",
                           delivery_extra=f'routes {{ domain: "agency-b.test" next_hop: "127.0.0.1:{sink.port}" }}',
                           extra=smime_conf("gw-a", da, pin_a, ca_dir,
                                            f'partners {{ domain: "agency-b.test" dca_cert_file: "{db}/dca.crt" }}')
                           + control)
    low = privileged_port()
    with open(gw.config) as f:
        conf = f.read().replace(f'address: "127.0.0.1:{gw.port}"', f'address: "127.0.0.1:{low}"')
    with open(gw.config, "w") as f:
        f.write(conf)
    gw.port = low
    c.check(gw.user == user and f'user: "{user}"' in conf, "the harness starts every mailseald as root with user: mailseal")
    gw.start()
    harness.wait_for(lambda: "management API listening" in gw.read_log(), 20, "API up")
    log = gw.read_log()

    # Bound as root, then dropped.
    c.check(re.search(rf'listening address=127.0.0.1:{low}', log) is not None,
            f"the listener on port {low} (below 1024) was bound before the drop")
    dropped = re.search(r"privileges dropped (.*)", log)
    c.check(dropped is not None and f"user={user}" in dropped.group(1) and re.search(r'capabilities="?="? ', dropped.group(1))
            and "no_new_privs=1" in dropped.group(1) and "seccomp=filter" in dropped.group(1) and "from=root" in dropped.group(1),
            "the log says: privileges dropped user=mailseal capabilities== no_new_privs=1 seccomp=filter from=root",
            dropped.group(0) if dropped else log[-800:])
    order = [log.find("listening address"), log.find("privileges dropped"), log.find("security module ready"),
             log.find("queue recovered")]
    c.check(all(x >= 0 for x in order) and order == sorted(order),
            "order: listeners bound, then the drop, then token and spool opened as the user", str(order))

    # /proc/<pid>/status of the process and of every thread.
    pid = gw.proc.pid
    st = status_fields(f"/proc/{pid}/status")
    ids = f"{pw.pw_uid}\t{pw.pw_uid}\t{pw.pw_uid}\t{pw.pw_uid}"
    gids = f"{pw.pw_gid}\t{pw.pw_gid}\t{pw.pw_gid}\t{pw.pw_gid}"
    c.check(st.get("Uid") == ids and st.get("Gid") == gids,
            "real, effective, saved and filesystem uid and gid are mailseal's", f"Uid {st.get('Uid')} Gid {st.get('Gid')}")
    c.check(all(st.get(k) == ZERO for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")),
            "no capability in any set, the bounding set included (README: the kernel back end keeps none)",
            " ".join(f"{k}={st.get(k)}" for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")))
    c.check(st.get("NoNewPrivs") == "1" and st.get("Seccomp") == "2", "no_new_privs and a seccomp filter",
            f"NoNewPrivs={st.get('NoNewPrivs')} Seccomp={st.get('Seccomp')}")
    tasks = os.listdir(f"/proc/{pid}/task")
    bad = []
    for t in tasks:
        ts = status_fields(f"/proc/{pid}/task/{t}/status")
        if ts.get("Uid") != ids or ts.get("CapPrm") != ZERO or ts.get("CapEff") != ZERO or ts.get("Seccomp") != "2" \
                or ts.get("NoNewPrivs") != "1":
            bad.append((t, ts.get("Name"), ts.get("Uid"), ts.get("CapPrm"), ts.get("Seccomp")))
    c.check(len(tasks) > 5 and not bad, f"every one of its {len(tasks)} threads is the same", str(bad[:5]))

    # It still does its work as mailseal.
    secret = b"Figures for the minister, not for the wire."
    r = send(gw.port, "alice@agency-a.test", ["bob@agency-b.test"],
             b"From: alice@agency-a.test\r\nTo: bob@agency-b.test\r\nSubject: privsep\r\n\r\n" + secret + b"\r\n")
    c.check(b"250 2.0.0" in r, "mail accepted on the privileged port after the drop", r[-200:])
    got = harness.eventually(lambda: sink.messages() or None, 30, "the sealed copy at the partner")
    c.check(got is not None and b"application/pkcs7-mime" in got[0] and secret not in got[0],
            "it leaves sealed: the token, opened as mailseal, signed and the DCA certificate encrypted",
            (got or [b""])[0][:300])
    owners = set()
    for d, _dirs, files in os.walk(gw.spool):
        for n in [d] + [os.path.join(d, f) for f in files]:
            owners.add(os.lstat(n).st_uid)
    for d, _dirs, files in os.walk(os.path.join(root, "a", "audit")):
        for n in files:
            owners.add(os.lstat(os.path.join(d, n)).st_uid)
    c.check(owners == {pw.pw_uid}, "everything it wrote (spool, audit trail) is mailseal's", str(owners))
    r = subprocess.run([a.mailsealctl, "--server", f"127.0.0.1:{api_port}", "--cert", f"{m}/admin-1.crt",
                        "--key", f"{m}/admin-1.key", "--ca", f"{m}/mgmt-ca.crt", "health"],
                       capture_output=True, text=True, timeout=30)
    c.check(r.returncode == 0 and "SERVING" in r.stdout and "NOT_SERVING" not in r.stdout,
            "the management API, started after the drop, reports healthy", r.stdout + r.stderr)
    gw.proc.send_signal(signal.SIGHUP)
    c.check(harness.eventually(lambda: "policy reloaded" in gw.read_log(), 15, "reloaded") is not None,
            "SIGHUP reloads after the drop (the configuration is read again as mailseal)",
            gw.read_log()[-600:])
    c.check(gw.stop() == 0, "clean stop as mailseal (the last tree head signed)")
    c.check("shutdown tree head signed" in gw.read_log(), "the audit key still signs at shutdown")

    # Refused before anything starts.
    cases = {
        "a management port below 1024": (conf.replace(f"127.0.0.1:{api_port}", "127.0.0.1:999"),
                                         "field 'control.listen': port 999 is below 1024"),
        "user root": (conf.replace(f'user: "{user}"', 'user: "root"'), "field 'user': must not be root"),
        "an unknown user": (conf.replace(f'user: "{user}"', 'user: "no-such-mailseal-user"'),
                            "field 'user': no user 'no-such-mailseal-user'"),
    }
    for what, (text, why) in cases.items():
        path = os.path.join(root, "a", "refused.conf")
        with open(path, "w") as f:
            f.write(text)
        chk = subprocess.run([a.mailseald, "--check-config", path], capture_output=True, text=True, timeout=30, env=env_a)
        run = subprocess.run([a.mailseald, "--config", path], capture_output=True, text=True, timeout=30, env=env_a)
        c.check(chk.returncode == 2 and run.returncode == 2 and why in chk.stderr and why in run.stderr,
                f"{what}: refused by --check-config and at start (exit 2), the field named", chk.stderr + run.stderr)

    # Root without `user`: a warning, and still no_new_privs and the filter.
    plain = harness.Mailseald(a.mailseald, root, name="asroot", user="")
    plain.start()
    time.sleep(0.2)
    st = status_fields(f"/proc/{plain.proc.pid}/status")
    log = plain.read_log()
    c.check("still running as root: set 'user'" in log, "root without 'user' is warned about", log[-600:])
    c.check(st.get("NoNewPrivs") == "1" and st.get("Seccomp") == "2",
            "root without 'user' still runs with no_new_privs and the filter")
    c.check(plain.stop() == 0, "clean stop")
    c.finish()


if __name__ == "__main__":
    main()
