#!/usr/bin/env python3
"""Issue #3 + SEE-AG-4 (fail safe): when the security module disappears, mailseald answers
4xx to new mail and holds queued mail; when it comes back, mailseald re-opens it by itself
and mail flows again. The token is a real SoftHSM token; "disappearing" is its token
directory being moved away (SoftHSM then fails every call), "coming back" moving it back.
"""
import os
import re
import shutil
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
USER_PIN = "fixture-user-pin"   # test fixture, never a real PIN
SO_PIN = "fixture-so-pin"


def send(port, tag):
    return harness.smtp_exchange(port, [
        b"EHLO c.test\r\nMAIL FROM:<a@agency-a.test>\r\nRCPT TO:<b@partner.test>\r\nDATA\r\n",
        f"Subject: {tag}\r\n\r\nbody\r\n.\r\nQUIT\r\n".encode()])


def main():
    a = harness.args()
    c = harness.Checker("hsm_failsafe")
    root = harness.tempdir(a.keep)
    tokens = os.path.join(root, "tokens")
    os.makedirs(tokens)
    conf = os.path.join(root, "softhsm2.conf")
    with open(conf, "w") as f:
        f.write(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = conf
    r = subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "gw", "--so-pin", SO_PIN,
                        "--pin", USER_PIN], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    pin_file = os.path.join(root, "user.pin")
    with open(pin_file, "w") as f:
        f.write(USER_PIN + "\n")
    os.chmod(pin_file, stat.S_IRUSR | stat.S_IWUSR)

    sink_port = harness.free_port()
    hsm = (f'hsm {{ module_path: "{MODULE}" token_label: "gw" pin_file: "{pin_file}" '
           'health_interval_ms: 200 }')
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink_port, extra=hsm).start()
    harness.wait_for(lambda: "security module ready" in gw.read_log(), 10, "token opened")
    c.check(b"250 2.0.0 Ok: queued" in send(gw.port, "before-outage"), "token up: mail accepted")
    harness.wait_for(lambda: gw.queue_files("deferred"), 10, "message deferred (next hop not up yet)")

    shutil.move(tokens, tokens + ".gone")
    harness.wait_for(lambda: "security module unavailable" in gw.read_log(), 10, "outage detected")
    log = gw.read_log()
    c.check("reason=\"C_GetTokenInfo failed: CKR_" in log, "the outage is logged with the PKCS#11 reason")
    out = send(gw.port, "during-outage")
    c.check(b"451 4.3.0 Security module unavailable" in out and b"queued as" not in out,
            "token gone: new mail gets 451 4.3.0, nothing accepted", out.decode(errors="replace"))

    sink = harness.Sink(root, port=sink_port)
    time.sleep(3)
    c.check(not sink.messages(), "token gone: queued mail is held, not delivered (even with the next hop up)")
    c.check(gw.queue_files("deferred") or gw.queue_files("active"), "the held message is still queued")

    shutil.move(tokens + ".gone", tokens)
    harness.wait_for(lambda: "security module back" in gw.read_log(), 10, "recovery")
    c.check(True, "token back: mailseald re-opened it by itself")
    harness.wait_for(lambda: any(b"Subject: before-outage" in m for m in sink.messages()), 15, "held mail delivered")
    c.check(True, "the held message is delivered after recovery")
    c.check(b"250 2.0.0 Ok: queued" in send(gw.port, "after-outage"), "new mail accepted again")
    harness.wait_for(lambda: any(b"Subject: after-outage" in m for m in sink.messages()), 15, "new mail delivered")
    c.check(gw.stop() == 0, "clean stop")

    # A PIN file others can read is a configuration error: refused at start and by
    # --check-config alike (issue #12: one validation path), with the reason, PIN never shown.
    os.chmod(pin_file, 0o644)
    gw2 = harness.Mailseald(a.mailseald, root, relay_port=sink_port, extra=hsm, name="gw2")
    for mode in ("--check-config", "--config"):
        r = subprocess.run([a.mailseald, mode, gw2.config], capture_output=True, text=True, timeout=30)
        c.check(r.returncode == 2 and re.search(r"must be owned by (us|uid \d+) with mode 0600 or 0400", r.stderr),
                f"loose PIN file: {mode} refuses it (exit 2) with the reason", r.stderr)
        c.check(USER_PIN not in r.stdout + r.stderr, f"{mode}: the PIN never appears in its output")
    c.check(USER_PIN not in gw.read_log(), "the PIN never appears in the log")
    c.finish()


if __name__ == "__main__":
    main()
