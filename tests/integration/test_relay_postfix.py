#!/usr/bin/env python3
"""Issue #2 acceptance: swaks -> mailseald -> Postfix (real, private instance) -> smtp-sink.

100 messages — plain, 8-bit UTF-8 bodies, MIME attachments (binary, base64), lines that start
with a dot, 998-octet lines — each arrives with its original bytes intact (only trace headers
are added in front). SEE-AG-1 (ordinary mail keeps flowing), SEE-AG-2 (nothing inside the
message is altered).

swaks itself shapes what it sends (it appends a blank line, and a message ending in "." ends
its DATA early), so the reference is the same message sent by swaks straight to a second sink:
both dumps must be identical from the message's first header on.
"""
import concurrent.futures
import os
import random
import re
import subprocess
import sys
from email.message import EmailMessage
from email.policy import SMTP

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402


def make_message(i, rnd):
    m = EmailMessage(policy=SMTP)
    m["From"] = f"sender{i}@agency-a.test"
    m["To"] = f"rcpt{i}@partner.test"
    m["Subject"] = f"relay test {i}"
    m["Message-ID"] = f"<relay-{i}@agency-a.test>"
    m["Date"] = "Sun, 22 Nov 2026 05:54:31 +0000"  # so that Postfix adds nothing
    kind = i % 4
    if kind == 0:
        m.set_content(f"Plain message {i}.\n.a line that starts with a dot\n..two dots\n.\n")
    elif kind == 1:
        m.set_content(f"Grüße aus Wellington — ümlaut, 日本語, message {i}\n" * 20, cte="8bit")
    elif kind == 2:
        m.set_content(f"Message {i} with an attachment.\n")
        blob = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1000, 150000)))
        m.add_attachment(blob, maintype="application", subtype="octet-stream", filename=f"blob{i}.bin")
    else:
        m.set_content(("x" * 990 + "\n") * 5 + f"long lines {i}\n")
    data = m.as_bytes()
    assert b"\r\n" in data
    return data


def main():
    a = harness.args()
    c = harness.Checker("relay_postfix")
    root = harness.tempdir(a.keep)
    sink = harness.Sink(root)
    postfix = harness.Postfix(root, sink.port)
    gw = harness.Mailseald(a.mailseald, root, relay_port=postfix.port).start()

    rnd = random.Random(2)
    originals = {}
    for i in range(100):
        data = make_message(i, rnd)
        path = os.path.join(root, f"msg{i}.eml")
        with open(path, "wb") as f:
            f.write(data)
        originals[f"<relay-{i}@agency-a.test>"] = (i, data, path)

    def send(item, port=gw.port):
        i, data, path = item
        r = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{port}", "--from", f"sender{i}@agency-a.test",
             "--to", f"rcpt{i}@partner.test", "--data", path, "--pipeline"],
            capture_output=True, text=True, timeout=60)
        return i, r.returncode, r.stdout + r.stderr

    ref_sink = harness.Sink(root)
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda it: send(it, ref_sink.port), originals.values()))
        results = list(ex.map(send, originals.values()))
    reference = {}
    for dump in ref_sink.messages():
        mid = re.search(rb"^Message-ID: (<[^>]+>)", dump, re.M | re.I)
        start = dump.find(b"From: sender")
        if mid and start >= 0:
            reference[mid.group(1).decode()] = dump[start:]
    c.check(len(reference) == 100, f"reference run (swaks -> smtp-sink) stored {len(reference)}/100")
    bad = [(i, out[-400:]) for i, rc, out in results if rc != 0 or "250 2.0.0 Ok: queued as" not in out]
    c.check(not bad, "swaks: all 100 messages got 250 from mailseald", str(bad[:2]))

    try:
        # smtp-sink writes a file as it receives it: wait until every one ends as its reference.
        def complete():
            got = sink.messages()
            ends = [m for m in got if any(m.endswith(r) for r in reference.values())]
            return len(got) >= 100 and len(ends) == len(got)
        harness.wait_for(complete, 120, "100 complete messages at the sink")
    except AssertionError as e:
        print(e)
    got = sink.messages()
    c.check(len(got) == 100, f"sink received exactly 100 messages (got {len(got)})")

    identical, mismatched = 0, []
    for dump in got:
        mid = re.search(rb"^Message-ID: (<[^>]+>)", dump, re.M | re.I)
        key = mid.group(1).decode() if mid else None
        if key not in originals:
            mismatched.append(("unknown", dump[:200]))
            continue
        i, data, _ = originals[key]
        want = reference.get(key, b"<missing reference>")
        if dump.endswith(want) and dump.find(b"From: sender") == len(dump) - len(want):
            identical += 1
            # Trace headers: Postfix's and ours, nothing else added in front of the original.
            head = dump[: len(dump) - len(want)]
            if b"by gw.test (mailseal) with ESMTP id" not in head:
                mismatched.append((i, b"no mailseal Received header"))
        else:
            mismatched.append((i, dump[-200:]))
    c.check(identical == 100 and not mismatched,
            f"byte-identical messages on arrival: {identical}/100", str(mismatched[:2]))
    # mailseald's bookkeeping (the delivery log line, removing the queue file) follows the
    # sink's 250 by a few milliseconds: wait for it with a deadline instead of reading it once
    # (issue #13 item 9: this failed on a loaded machine).
    c.check(harness.eventually(lambda: gw.read_log().count(" delivered qid=") == 100, 20, "100 deliveries logged"),
            "mailseald logged 100 deliveries with queue ids", str(gw.read_log().count(" delivered qid=")))
    c.check(harness.eventually(gw.drained, 20, "queue empty"), "mailseald queue is empty")
    c.check(gw.stop() == 0, "SIGTERM stops mailseald cleanly (exit 0)")
    c.finish()


if __name__ == "__main__":
    main()
