#!/usr/bin/env python3
"""Issue #2: `mailseald --check-config FILE` validates and exits; a bad config is refused at
start with file:line:column and the field, exit non-zero, and the spool is not touched.
Also: SIGHUP reloads policy, and a bad reload keeps the running config."""
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402


def main():
    a = harness.args()
    c = harness.Checker("config_cli")
    root = harness.tempdir(a.keep)
    spool = os.path.join(root, "spool-never")
    bad = os.path.join(root, "bad.conf")
    with open(bad, "w") as f:
        f.write(f'listen {{ address: "127.0.0.1:2525" }}\nspool_dir: "{spool}"\n'
                'delivery {\n  relay_host: "no-port-here"\n}\n')
    for mode in ("--check-config", "--config"):
        r = subprocess.run([a.mailseald, mode, bad], capture_output=True, text=True, timeout=10)
        c.check(r.returncode == 2 and f"{bad}:4:3: field 'relay_host'" in r.stderr,
                f"{mode} with a bad config: exit 2 and file:line:column + field", r.stderr)
    c.check(not os.path.exists(spool), "the spool was not touched")

    typo = os.path.join(root, "typo.conf")
    with open(typo, "w") as f:
        f.write('listen { address: "127.0.0.1:2525" }\nrequre_tls: true\n')
    r = subprocess.run([a.mailseald, "--check-config", typo], capture_output=True, text=True)
    c.check(r.returncode == 2 and f"{typo}:2:" in r.stderr and "requre_tls" in r.stderr,
            "unknown field: refused with its line", r.stderr)

    # Domain security settings are checked too (issue #4), naming the field, touching nothing.
    base = f'listen {{ address: "127.0.0.1:2525" }}\nspool_dir: "{spool}"\ndelivery {{}}\n'
    for body, want in [
        ('smime { dsa_key_label: "dsa" }\n', "field 'smime': needs 'hsm'"),
        ('hsm { module_path: "/m.so" token_label: "t" pin_file: "/p" }\n'
         'smime { dsa_key_label: "dsa" dsa_cert_file: "/no/dsa.crt" dca_key_label: "dca" '
         'dca_cert_file: "/no/dca.crt" trust_anchors_file: "/no/ca.crt" }\n', "field 'smime.dsa_cert_file'"),
        # The certificate files may be left out (then the token's are used); the labels may not.
        ('hsm { module_path: "/m.so" token_label: "t" pin_file: "/p" }\nsmime { dsa_key_label: "dsa" }\n',
         "field 'smime.dca_key_label': required")]:
        sm = os.path.join(root, "smime.conf")
        with open(sm, "w") as f:
            f.write(base + body)
        r = subprocess.run([a.mailseald, "--check-config", sm], capture_output=True, text=True)
        c.check(r.returncode == 2 and want in r.stderr, f"S/MIME settings refused: {want}", r.stderr)
    c.check(not os.path.exists(spool), "the spool was still not touched")

    r = subprocess.run([a.mailseald, "--check-config", "/nonexistent.conf"], capture_output=True, text=True)
    c.check(r.returncode == 2 and "/nonexistent.conf: cannot be read (No such file or directory)" in r.stderr,
            "missing file: clear error", r.stderr)
    r = subprocess.run([a.mailseald], capture_output=True, text=True)
    c.check(r.returncode == 2 and "usage" in r.stderr, "no arguments: usage, exit 2")

    sink = harness.Sink(root)
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port).start()
    r = subprocess.run([a.mailseald, "--check-config", gw.config], capture_output=True, text=True)
    c.check(r.returncode == 0 and "OK" in r.stdout, "--check-config on a good file: exit 0", r.stdout + r.stderr)

    # SIGHUP: a broken file is refused and the old policy keeps serving.
    with open(gw.config) as f:
        good_text = f.read()
    with open(gw.config, "w") as f:
        f.write(good_text + "\nbogus_field: 1\n")
    gw.proc.send_signal(signal.SIGHUP)
    harness.wait_for(lambda: "reload refused" in gw.read_log(), 5, "reload refused")
    c.check(gw.proc.poll() is None, "bad reload refused, daemon keeps running")
    # A good reload that stops trusting loopback: relay is then denied.
    with open(gw.config, "w") as f:
        f.write(good_text.replace('trusted_networks: "127.0.0.0/8"', 'trusted_networks: "10.1.0.0/16"'))
    gw.proc.send_signal(signal.SIGHUP)
    harness.wait_for(lambda: "policy reloaded" in gw.read_log(), 5, "policy reloaded")
    time.sleep(0.2)
    out = harness.smtp_exchange(gw.port, [b"EHLO x\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@partner.test>\r\nQUIT\r\n"])
    c.check(b"554 5.7.1" in out, "reloaded policy applies to new connections", out.decode(errors="replace"))
    c.check(gw.stop() == 0, "clean stop")
    c.finish()


if __name__ == "__main__":
    main()
