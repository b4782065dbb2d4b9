#!/usr/bin/env python3
"""Issue #18, privilege separation: the token in a process of its own.

On the appliance (image/systemd/mailseal-token.service) the token holder is p11-kit's PKCS#11
server (Debian's p11-kit) running as its own account; mailseald loads only p11-kit's client
module and reaches the token over a Unix socket only its user may connect to. Here the same on
the host, with SoftHSM:

- gateway A's token files belong to `mailseal-token` (0700): mailseald's user cannot read them,
  and mailseald's address space holds p11-kit's client, never the token's module (libsofthsm2);
- A signs and seals through the holder (partner B opens and verifies: smime=pass) and opens
  and verifies what B seals to it;
- the holder killed: A says the security module is unavailable and answers new mail with 4xx
  (fail closed); the holder started again: A re-opens the token by itself and mail flows.
"""
import os
import pwd
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_smime_gateways import MODULE, make_pki, send, smime_conf  # noqa: E402

CLIENT = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
HOLDER_USER = "mailseal-token"


def ensure_user(name):
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", name], check=True)
    return pwd.getpwnam(name)


class Holder:
    """p11-kit server as the holder's account, serving the token directory of `env`; its socket
    given to mailseald's user (what mailseal-token.service does)."""

    def __init__(self, root, env):
        self.dir = os.path.join(root, "holder")
        os.makedirs(self.dir, exist_ok=True)
        holder = pwd.getpwnam(HOLDER_USER)
        os.chown(self.dir, holder.pw_uid, holder.pw_gid)
        self.socket = os.path.join(self.dir, "pkcs11")
        self.env = env
        self.proc = None
        harness._cleanups.append(self.stop)

    def start(self):
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        self.proc = subprocess.Popen(
            ["setpriv", f"--reuid={HOLDER_USER}", f"--regid={HOLDER_USER}", "--clear-groups", "--no-new-privs",
             "p11-kit", "server", "--foreground", "--provider", MODULE, "--name", self.socket, "pkcs11:"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "server.log"), "a"),
            start_new_session=True)
        harness.wait_for(lambda: os.path.exists(self.socket), 10, "the holder's socket")
        daemon = pwd.getpwnam(harness.ensure_daemon_user())
        os.chown(self.socket, daemon.pw_uid, daemon.pw_gid)

    def stop(self):
        """The server and the children it forked for each connection (the whole holder)."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


def main():
    a = harness.args()
    c = harness.Checker("token_holder")
    if os.geteuid() != 0:
        c.check(False, "runs as root (it makes the holder's account and switches to it)")
        c.finish()
    root = harness.tempdir(a.keep)
    holder_pw = ensure_user(HOLDER_USER)
    ca_dir, [(da, env_a, pin_a), (db, env_b, pin_b)] = make_pki(root, a.keygen, [("gw-a", "agency-a.test"),
                                                                                  ("gw-b", "agency-b.test")])
    # A's token files become the holder's alone (the provisioning unit does this on the appliance).
    tokens = os.path.join(da, "tokens")
    for d, dirs, files in os.walk(tokens):
        for n in [d] + [os.path.join(d, f) for f in files]:
            os.chown(n, holder_pw.pw_uid, holder_pw.pw_gid)
            os.chmod(n, 0o700 if os.path.isdir(n) else 0o600)
    os.chmod(da, 0o755)   # the holder reads softhsm2.conf there; the tokens below stay closed
    holder = Holder(root, env_a)
    holder.start()

    sink_a, sink_b = harness.Sink(root), harness.Sink(root)
    gb = harness.Mailseald(a.mailseald, root, relay_port=sink_b.port, name="b", local_domain="agency-b.test",
                           env=env_b, hostname="gw-b.test",
                           extra=smime_conf("gw-b", db, pin_b, ca_dir,
                                            f'partners {{ domain: "agency-a.test" dca_cert_file: "{da}/dca.crt" }}'))
    hsm_a = smime_conf("gw-a", da, pin_a, ca_dir,
                       f'partners {{ domain: "agency-b.test" dca_cert_file: "{db}/dca.crt" }}').replace(MODULE, CLIENT)
    hsm_a = hsm_a.replace("health_interval_ms: 500", "health_interval_ms: 300")
    ga = harness.Mailseald(a.mailseald, root, relay_port=sink_a.port, name="a", env=dict(
        os.environ, P11_KIT_SERVER_ADDRESS=f"unix:path={holder.socket}"), hostname="gw-a.test",
        delivery_extra=f'routes {{ domain: "agency-b.test" next_hop: "127.0.0.1:{gb.port}" }}', extra=hsm_a)
    with open(gb.config) as f:
        text = f.read()
    with open(gb.config, "w") as f:
        f.write(text.replace("delivery {", f'delivery {{\n  routes {{ domain: "agency-a.test" next_hop: "127.0.0.1:{ga.port}" }}', 1))
    gb.start()
    ga.start()
    harness.wait_for(lambda: "security module ready" in ga.read_log(), 20, "A's token opened through the holder")
    c.check(f"module={CLIENT}" in ga.read_log(), "A opened its token through p11-kit's client module")

    # What A's process can reach.
    r = subprocess.run(["runuser", "-u", harness.DAEMON_USER, "--", "cat", *[os.path.join(d, f) for d, _, fs in
                                                                          os.walk(tokens) for f in fs][:1]],
                       capture_output=True, text=True)
    c.check(r.returncode != 0 and "Permission denied" in r.stderr,
            "mailseald's user cannot read the token's files (the holder's, 0600 in 0700 directories)", r.stderr)
    with open(f"/proc/{ga.proc.pid}/maps") as f:
        maps = f.read()
    c.check("libsofthsm2" not in maps and "p11-kit-client" in maps,
            "mailseald's address space has p11-kit's client module, not the token's (libsofthsm2)")

    # Both directions through the holder.
    def through(gw, sender, rcpt, sink, marker, what):
        out = send(gw.port, sender, [rcpt], f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {marker}\r\n\r\n{marker}\r\n".encode())
        got = harness.eventually(lambda: [m for m in sink.messages() if marker.encode() + b"\n" in m] or None, 30, what)
        c.check(b"250 2.0.0" in out and got is not None and b"smime=pass" in got[0], what,
                out[-200:] + (got or [b""])[0][:400] + ga.read_log()[-600:].encode())
    through(ga, "alice@agency-a.test", "bob@agency-b.test", sink_b, "HELD-BY-THE-HOLDER-OUT",
            "A signed and sealed through the holder: B opens and verifies it (smime=pass)")
    through(gb, "bob@agency-b.test", "alice@agency-a.test", sink_a, "HELD-BY-THE-HOLDER-IN",
            "A decrypted B's sealed mail through the holder and verified it (smime=pass)")

    # The holder gone: fail closed; back: A resumes by itself.
    holder.stop()
    down = harness.eventually(lambda: "security module unavailable" in ga.read_log() or None, 20, "outage seen")
    c.check(down is not None, "the holder killed: A says the security module is unavailable", ga.read_log()[-600:])
    out = harness.send_one(ga.port, "bob@agency-b.test", "while the holder is down")
    c.check(b"451" in out or b"452" in out or b"421" in out, "and answers new mail with 4xx (fail closed)", out[-300:])
    holder.start()
    back = harness.eventually(lambda: "security module back" in ga.read_log() or None, 30, "token re-opened")
    c.check(back is not None, "the holder started again: A re-opens the token by itself", ga.read_log()[-800:])
    through(ga, "alice@agency-a.test", "bob@agency-b.test", sink_b, "HELD-BY-THE-HOLDER-AFTER",
            "mail is sealed through the holder again")
    for g in (ga, gb):
        c.check(g.stop() == 0, "clean stop")
    c.finish()


if __name__ == "__main__":
    main()
