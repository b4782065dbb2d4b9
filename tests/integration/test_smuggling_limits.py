#!/usr/bin/env python3
"""Issue #2 acceptance: hostile input gets its RFC reply and the daemon keeps serving others.

- SMTP smuggling payloads from the 2023 research (SEC Consult, "SMTP Smuggling"): every bare
  <LF>/<CR> variant of a fake end of data, followed by a smuggled transaction. None may end
  DATA; the message is refused (550 5.5.2) and no smuggled message is ever delivered.
- An oversized command line, 10 MB over the SIZE limit (declared and undeclared), 10,000
  RCPTs, binary garbage, a silent client (idle timeout), relay from an untrusted network.
While each runs, another client's transaction must still succeed.
"""
import os
import random
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

ENVELOPE = b"EHLO evil.test\r\nMAIL FROM:<a@agency-a.test>\r\nRCPT TO:<b@partner.test>\r\nDATA\r\n"
SMUGGLED = (b"MAIL FROM:<ceo@agency-a.test>\r\nRCPT TO:<victim@partner.test>\r\nDATA\r\n"
            b"Subject: SMUGGLED\r\n\r\nsmuggled body\r\n")
FAKE_ENDS = {
    "LF.LF": b"\n.\n", "LF.CRLF": b"\n.\r\n", "CR.CRLF": b"\r.\r\n", "CRLF.CR": b"\r\n.\r",
    "CRLF.LF": b"\r\n.\n", "CR.CR": b"\r.\r", "LF.CR": b"\n.\r", "CR.LF": b"\r.\n",
}


def normal_message(port, tag):
    out = harness.smtp_exchange(port, [
        b"EHLO ok.test\r\nMAIL FROM:<ok@agency-a.test>\r\nRCPT TO:<ok@partner.test>\r\nDATA\r\n",
        f"Subject: normal {tag}\r\n\r\nfine\r\n.\r\nQUIT\r\n".encode()])
    return b"250 2.0.0 Ok: queued as" in out


def main():
    a = harness.args()
    c = harness.Checker("smuggling_limits")
    root = harness.tempdir(a.keep)
    sink = harness.Sink(root)
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port,
                           extra="limits { max_message_size: 2097152 idle_timeout_ms: 2000 }").start()

    # A background client keeps sending normal mail during every attack.
    stop = threading.Event()
    normal = {"ok": 0, "bad": 0}

    def background():
        n = 0
        while not stop.is_set():
            n += 1
            normal["ok" if normal_message(gw.port, n) else "bad"] += 1
            time.sleep(0.05)

    bg = threading.Thread(target=background)
    bg.start()

    for name, fake in FAKE_ENDS.items():
        out = harness.smtp_exchange(gw.port, [ENVELOPE + b"Subject: x\r\n\r\nhello" + fake + SMUGGLED + b"\r\n.\r\nNOOP\r\nQUIT\r\n"])
        c.check(b"550 5.5.2 Error: bare <LF> or <CR> in message text" in out and out.count(b"354") == 1
                and b"queued as" not in out and out.rstrip().endswith(b"221 2.0.0 Bye"),
                f"smuggling {name}: refused with 550 5.5.2, smuggled commands never run", out.decode(errors="replace")[-300:])

    out = harness.smtp_exchange(gw.port, [b"EHLO x\r\nNOOP " + b"A" * 5000 + b"\r\nNOOP\r\nQUIT\r\n"])
    c.check(b"500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n221" in out, "oversized command line: 500 5.5.2, session goes on")

    out = harness.smtp_exchange(gw.port, [b"EHLO x\r\nMAIL FROM:<a@agency-a.test> SIZE=12582912\r\nQUIT\r\n"])
    c.check(b"552 5.3.4 Error: message size exceeds fixed limit" in out, "SIZE= 10 MB over the limit: 552 5.3.4 at MAIL")

    big = (b"X" * 998 + b"\r\n") * (12 * 1024 * 1024 // 1000)
    out = harness.smtp_exchange(gw.port, [ENVELOPE + b"Subject: big\r\n\r\n", big, b".\r\nNOOP\r\nQUIT\r\n"], timeout=60)
    c.check(b"552 5.3.4 Error: message size exceeds fixed limit\r\n250 2.0.0 Ok\r\n" in out,
            "12 MB DATA without SIZE: 552 5.3.4 after the end, session goes on", out[-200:].decode(errors="replace"))

    rcpts = b"".join(f"RCPT TO:<r{i}@partner.test>\r\n".encode() for i in range(10000))
    out = harness.smtp_exchange(gw.port, [b"EHLO x\r\nMAIL FROM:<a@agency-a.test>\r\n", rcpts, b"RSET\r\nQUIT\r\n"], timeout=60)
    c.check(out.count(b"250 2.1.5 Ok") == 1000 and out.count(b"452 4.5.3 Error: too many recipients") == 9000
            and b"221 2.0.0 Bye" in out, "10,000 RCPTs: 1000 accepted, 9000 get 452 4.5.3, session goes on",
            f"250s={out.count(b'250 2.1.5 Ok')} 452s={out.count(b'452 4.5.3')}")

    rnd = random.Random(7)
    garbage = bytes(rnd.getrandbits(8) for _ in range(200000))
    out = harness.smtp_exchange(gw.port, [garbage])
    c.check(b"421 4.7.0 gw.test Error: too many errors" in out and b"500 5.5.2" in out,
            "binary garbage: 5xx replies and the session is closed with 421", out[:200].decode(errors="replace"))

    # A silent client is timed out; others are served meanwhile.
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.recv(100)
    t0 = time.time()
    data = s.recv(200)
    s.close()
    c.check(data.startswith(b"421 4.4.2") and 1.5 < time.time() - t0 < 6, f"silent client: 421 4.4.2 after the idle timeout ({time.time()-t0:.1f}s)")

    stop.set()
    bg.join()
    c.check(normal["ok"] >= 5 and normal["bad"] == 0,
            f"other clients kept being served during the attacks ({normal['ok']} ok, {normal['bad']} failed)")

    harness.wait_for(lambda: len(sink.messages()) >= normal["ok"], 30, "normal messages delivered")
    dumps = sink.messages()
    c.check(not any(b"SMUGGLED" in d or b"ceo@agency-a.test" in d for d in dumps),
            "no smuggled message reached the next hop")
    c.check(len(dumps) == normal["ok"], f"exactly the normal messages were delivered ({len(dumps)})")
    c.check(gw.proc.poll() is None, "mailseald is still running")
    gw.stop()

    # Relay control: an untrusted client may only mail local domains (no open relay).
    # (outside.test answered locally: the client's SPF check, SM-5b, must not depend on the DNS here)
    gw2 = harness.Mailseald(a.mailseald, root, relay_port=sink.port, name="gw2", trusted="10.99.0.0/16",
                            delivery_extra='dns_local_zones: "outside.test. static"').start()
    out = harness.smtp_exchange(gw2.port, [b"EHLO x\r\nMAIL FROM:<a@outside.test>\r\nRCPT TO:<b@partner.test>\r\n"
                                           b"RCPT TO:<b@agency-a.test>\r\nQUIT\r\n"])
    c.check(b"554 5.7.1 <b@partner.test>: Relay access denied\r\n250 2.1.5 Ok" in out,
            "untrusted client: relay denied 554 5.7.1, local domain accepted", out.decode(errors="replace"))
    gw2.stop()
    c.finish()


if __name__ == "__main__":
    main()
