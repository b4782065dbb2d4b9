#!/usr/bin/env python3
"""Issue #17: suites of the kernel back end whose client side is plain SMTP, run against
mailseald on the DPDK back end from the namespace, over the project's TCP.

- OpenSMTPD's 69 black-box SMTP scripts (issue #13's hostile-input conformance, with STARTTLS):
  test_opensmtpd_regress.py in client mode inside the namespace, against the DPDK listener,
  with the same configuration (local domain "localhost", the client trusted, STARTTLS offered)
  and the same decisions. Byte streams cut into other segments by another TCP must give the
  same answers.
- The SMTP smuggling payloads (issue #2's test_smuggling_limits): every bare <LF>/<CR> fake end
  of data followed by a smuggled transaction, sent whole and sent with each byte around the
  fake end in a segment of its own (TCP_NODELAY, a pause between writes): every one is refused
  with 550 5.5.2, the smuggled commands never run, and no smuggled message reaches the next
  hop; a normal message beside them is delivered.
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from test_dpdk_e2e import GW_IP, DpdkGateway  # noqa: E402
from test_smuggling_limits import ENVELOPE, FAKE_ENDS, SMUGGLED  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

SMUGGLE = r'''
import json, socket, sys, time
gw, port = sys.argv[1], int(sys.argv[2])
cases = json.loads(sys.stdin.read())
out = {}
for name, (head, fake, tail) in cases.items():
    for mode in ("whole", "split"):
        s = socket.create_connection((gw, port), timeout=20)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        got = b""
        head_b, fake_b, tail_b = head.encode("latin-1"), fake.encode("latin-1"), tail.encode("latin-1")
        if mode == "whole":
            s.sendall(head_b + fake_b + tail_b)
        else:
            s.sendall(head_b)
            for ch in fake_b:          # every byte of the fake end in a segment of its own
                time.sleep(0.05)
                s.sendall(bytes([ch]))
            time.sleep(0.05)
            s.sendall(tail_b)
        while True:
            try:
                d = s.recv(65536)
            except OSError:
                break
            if not d:
                break
            got += d
        s.close()
        out[f"{name}/{mode}"] = got.decode("latin-1")
print(json.dumps(out))
'''


def main():
    a = harness.args()
    c = harness.Checker("dpdk_suites")
    root = harness.tempdir(a.keep)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", f"{root}/tls.key", "-out", f"{root}/tls.crt", "-subj", "/CN=gw.test", "-days", "2"],
                   check=True, capture_output=True)
    os.chmod(f"{root}/tls.key", 0o600)
    d = DpdkGateway(a, c, root, local_domain="localhost",
                    extra=f'tls {{ cert_file: "{root}/tls.crt" key_file: "{root}/tls.key" }}\n')
    r = subprocess.run(["ip", "netns", "exec", d.ns, sys.executable, os.path.join(HERE, "test_opensmtpd_regress.py"),
                        "--client", f"{GW_IP}:{d.gw.port}"], capture_output=True, text=True, timeout=600)
    summary = [l for l in r.stdout.splitlines() if l.startswith("OpenSMTPD regress:")]
    print("\n".join(summary))
    failed = [l for l in r.stdout.splitlines() if l.startswith("FAIL")]
    c.check(r.returncode == 0 and summary and "69 cases" in summary[0] and summary[0].endswith(" 0 fail"),
            "OpenSMTPD's 69 SMTP scripts give the same answers over the DPDK back end as over the kernel's",
            "\n".join(failed[:10]) + r.stderr[-800:])

    # Smuggling, whole and cut at every byte of the fake end.
    cases = {name: ((ENVELOPE + b"Subject: x\r\n\r\nhello").decode("latin-1"), fake.decode("latin-1"),
                    (SMUGGLED + b"\r\n.\r\nNOOP\r\nQUIT\r\n").decode("latin-1"))
             for name, fake in FAKE_ENDS.items()}
    r = subprocess.run(["ip", "netns", "exec", d.ns, sys.executable, "-c", SMUGGLE, GW_IP, str(d.gw.port)],
                       input=json.dumps(cases), capture_output=True, text=True, timeout=300)
    outs = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else {}
    c.check(len(outs) == 2 * len(FAKE_ENDS), f"{2 * len(FAKE_ENDS)} smuggling attempts made", r.stderr[-600:])
    for key, out in sorted(outs.items()):
        c.check("550 5.5.2 Error: bare <LF> or <CR> in message text" in out and out.count("354") == 1
                and "queued as" not in out and out.rstrip().endswith("221 2.0.0 Bye"),
                f"smuggling {key}: refused with 550 5.5.2, smuggled commands never run", out[-300:])
    r = d.swaks("normal-beside-smuggling")
    c.check(r.returncode == 0 and "250 2.0.0" in r.stdout, "a normal message is accepted", r.stdout[-300:])
    c.check(harness.eventually(lambda: "normal-beside-smuggling" in d.delivered(), 60, "delivered"),
            "and delivered", sorted(d.delivered()))
    smuggled = [s for s, m in d.delivered().items() if b"SMUGGLED" in m or b"ceo@agency-a.test" in m]
    c.check(not smuggled, "no smuggled message reached the next hop", smuggled)
    c.check(d.stop() == 0, "clean stop", d.gw.read_log()[-1000:])
    c.finish()


if __name__ == "__main__":
    main()
