#!/usr/bin/env python3
"""Issue #18, first boot: mailseal-provision makes what an appliance needs before its first key
ceremony, from mailseald's own configuration (the image runs it as mailseal-provision.service;
integration.image_boot runs it there). Here on the host, against SoftHSM:

1. With no token and no PIN file (a first boot): a free slot is initialised with the
   configured label; the user PIN goes to hsm.pin_file (0400, owned by mailseald's user), the
   SO PIN to so.pin beside it (0400, root); neither PIN is in the output or in argv.
2. The audit key and the management API's key are made inside the token (P-256), and a
   self-signed management certificate for the host name, signed inside the token, is written
   to control.cert_file and printed with its SHA-256 fingerprint.
3. A second run changes nothing: same token, same keys, same certificate.
4. mailseald starts with that configuration: the management API answers with that
   certificate (mailsealctl trusts it with --ca and --server-name), and its token holds only
   the audit and management keys — no domain key is made outside the ceremony.
5. A first boot cut short before or after the token was made is finished by the next run.
6. Fail safe: the token gone but the PIN file there (a real HSM unreachable, not a first
   boot) is refused and no new token is made.
"""
import json
import os
import re
import shutil
import stat
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_control_api import issue  # noqa: E402
from test_smime_gateways import MODULE, run  # noqa: E402


def main():
    a = harness.args()
    c = harness.Checker("provision")
    root = harness.tempdir(a.keep)
    provision = a.provision
    tokens = os.path.join(root, "tokens")
    os.makedirs(tokens)
    conf = os.path.join(root, "softhsm2.conf")
    with open(conf, "w") as f:
        f.write(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = dict(os.environ, SOFTHSM2_CONF=conf)
    m = os.path.join(root, "site")
    os.makedirs(m)
    run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout mgmt-ca.key -out mgmt-ca.crt "
        "-subj /CN=mgmt-ca -days 2", m)
    issue(m, "so-1", "mgmt-ca")
    state = os.path.join(root, "state")
    os.makedirs(state)
    pin, so_pin, cert = f"{state}/token.pin", f"{state}/so.pin", f"{state}/mgmt.crt"
    api_port = harness.free_port()
    extra = (f'hsm {{ module_path: "{MODULE}" token_label: "appliance" pin_file: "{pin}" }}\n'
             f'control {{ listen: "127.0.0.1:{api_port}" cert_file: "{cert}" key_label: "mgmt" '
             f'client_ca_file: "{m}/mgmt-ca.crt" roles {{ common_name: "so-1" role: "security-officer" }} '
             f'audit {{ log_path: "{root}/audit.log" heads_path: "{root}/audit.heads" key_label: "audit" }} }}\n')
    gw = harness.Mailseald(a.mailseald, root, name="gw", env=env, hostname="gw.appliance.test", extra=extra)

    def provision_run():
        return subprocess.run([provision, gw.config], capture_output=True, text=True, env=env, timeout=120)

    # A first boot cut short before the token was made (PINs written as .pending, no token):
    # still a first boot for the next run, which writes new PINs over them.
    for f in (pin, so_pin):
        with open(f + ".pending", "w") as fh:
            fh.write("stale")
        os.chmod(f + ".pending", 0o400)

    # 1 and 2: a first boot.
    r = provision_run()
    out = r.stdout + r.stderr
    c.check(r.returncode == 0 and "token 'appliance' initialised" in out, "first run: the token is initialised", out)
    user = gw.user or "root"
    for path, owner, what in ((pin, user, "user PIN"), (so_pin, "root", "SO PIN")):
        st = os.stat(path) if os.path.exists(path) else None
        c.check(st is not None and stat.S_IMODE(st.st_mode) == 0o400 and
                __import__("pwd").getpwuid(st.st_uid).pw_name == owner,
                f"the {what} is in {os.path.basename(path)}, mode 0400, owned by {owner}",
                oct(st.st_mode) if st else "missing")
    pins = [open(p).read().strip() for p in (pin, so_pin) if os.path.exists(p)]
    c.check(len(pins) == 2 and all(len(p) == 32 for p in pins) and pins[0] != pins[1],
            "the PINs are random (128 bits each, different)")
    c.check(pins and not any(p in out for p in pins), "neither PIN is in the output")
    c.check(not os.path.exists(pin + ".pending") and not os.path.exists(so_pin + ".pending") and "stale" not in pins,
            "a first boot interrupted before the token was made is simply done again (new PINs, no .pending left)")
    c.check("audit key 'audit': made inside the token" in out and "management TLS key 'mgmt': made inside the token" in out,
            "the audit and management keys are made inside the token", out)
    fp = re.search(r"fingerprint: ([0-9A-F:]{95})", out)
    r2 = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-fingerprint", "-sha256", "-ext",
                         "subjectAltName,extendedKeyUsage"], capture_output=True, text=True)
    c.check(fp is not None and f"={fp.group(1)}" in r2.stdout and "DNS:gw.appliance.test" in r2.stdout
            and "TLS Web Server Authentication" in r2.stdout and "-----BEGIN CERTIFICATE-----" in out,
            "a self-signed management certificate for the host name is written and printed with its fingerprint",
            r2.stdout + r2.stderr)
    r3 = subprocess.run(["openssl", "verify", "-CAfile", cert, cert], capture_output=True, text=True)
    c.check(r3.returncode == 0, "its signature (made inside the token) verifies", r3.stdout + r3.stderr)
    token_files = sorted(os.path.relpath(os.path.join(d, f), tokens) for d, _, fs in os.walk(tokens) for f in fs)

    # 3. Idempotent.
    with open(cert) as f:
        first_cert = f.read()
    r = provision_run()
    out = r.stdout + r.stderr
    c.check(r.returncode == 0 and "token 'appliance': present" in out and "on the token already" in out
            and f"{cert} exists" in out, "a second run finds everything made and makes nothing", out)
    after = sorted(os.path.relpath(os.path.join(d, f), tokens) for d, _, fs in os.walk(tokens) for f in fs)
    with open(cert) as f:
        same = f.read() == first_cert
    c.check(same and after == token_files and [open(p).read().strip() for p in (pin, so_pin)] == pins,
            "same certificate, same PINs, no new object on the token")
    # Cut short after the token was made: the PINs are still .pending; the next run puts them in place.
    for f in (pin, so_pin):
        os.rename(f, f + ".pending")
    r = provision_run()
    out = r.stdout + r.stderr
    c.check(r.returncode == 0 and "put in place" in out and [open(p).read().strip() for p in (pin, so_pin)] == pins
            and not os.path.exists(pin + ".pending"),
            "a first boot interrupted after the token was made is finished by the next run (the PINs put in place)", out)

    # 4. mailseald with it.
    so_owner = os.stat(so_pin).st_uid
    gw.start()
    harness.wait_for(lambda: "management API listening" in gw.read_log(), 20, "API up")

    def ctl(*args):
        r = subprocess.run([a.mailsealctl, "--server", f"127.0.0.1:{api_port}", "--server-name", "gw.appliance.test",
                            "--cert", f"{m}/so-1.crt", "--key", f"{m}/so-1.key", "--ca", cert, *args],
                           capture_output=True, text=True, timeout=60)
        return r.returncode, r.stdout, r.stderr
    rc, o, e = ctl("health")
    c.check(rc == 0 and "SERVING" in o, "mailseald serves the management API with the provisioned identity "
            "(mailsealctl --ca mgmt.crt --server-name gw.appliance.test)", o + e)
    rc_wrong = subprocess.run([a.mailsealctl, "--server", f"127.0.0.1:{api_port}", "--server-name", "other.test",
                               "--cert", f"{m}/so-1.crt", "--key", f"{m}/so-1.key", "--ca", cert, "health"],
                              capture_output=True, text=True, timeout=60).returncode
    c.check(rc_wrong != 0, "a name the certificate does not carry is refused (--server-name is checked, not ignored)")
    rc, o, e = ctl("-o", "json", "keys", "list")
    labels = {k["label"] for k in json.loads(o).get("keys", [])} if rc == 0 else None
    c.check(labels == {"audit", "mgmt"}, "the token holds the audit and management keys only: no domain key",
            str(labels) + e)
    c.check(gw.stop() == 0, "clean stop")
    os.chown(so_pin, so_owner, 0)   # the harness gave the test's files to the daemon user

    # 6. A missing token is not replaced once the PIN file exists.
    shutil.rmtree(tokens)
    os.makedirs(tokens)
    r = provision_run()
    out = r.stdout + r.stderr
    c.check(r.returncode != 0 and "not a first boot" in out and not os.listdir(tokens),
            "token gone, PIN file there: refused (the HSM is unreachable), no new token made", out)
    c.finish()


if __name__ == "__main__":
    main()
