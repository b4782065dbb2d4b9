#!/usr/bin/env python3
"""Issue #13 item 1 end to end (REQUIREMENTS §5, SEE-AG-1): a full spool disk during
delivery-status appends loses nothing.

mailseald's spool is on a small tmpfs (a real disk that fills up). 20 messages are accepted
while the next hop is down, so every retry appends a DEFERRED record. The disk is filled until
those appends fail (ENOSPC), then emptied; mailseald is killed (-9) and started again with the
next hop up. Before the fix, half-written records stayed in the queue files, the next append
landed behind them, and recovery moved 19 of 20 acknowledged messages to corrupt/. Now: every
acknowledged message is delivered, corrupt/ is empty.
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402


def main():
    a = harness.args()
    c = harness.Checker("faults_spool_full")
    root = harness.tempdir(a.keep)
    fs = os.path.join(root, "spoolfs")
    os.makedirs(fs)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", fs]).returncode == 0
    c.check(mounted, "a 4 MiB tmpfs for the spool (a disk that fills up)")
    try:
        relay_port = harness.free_port()   # nothing listens there yet: the next hop is down
        gw = harness.Mailseald(a.mailseald, root, relay_port=relay_port, name="gw",
                               extra="limits { min_free_spool_mib: 1 max_message_size: 100000 }")
        with open(gw.config) as f:
            text = f.read()
        with open(gw.config, "w") as f:
            f.write(text.replace(f'spool_dir: "{gw.spool}"', f'spool_dir: "{fs}/spool"'))
        gw.spool = os.path.join(fs, "spool")
        gw.start()
        c.check(b"250 2.0.0" in harness.send_classified(gw.port, "CLASSIFIED-SPOOL_FULL-PROBE"), "the classified probe is accepted")
        n = 20
        for i in range(n):
            out = harness.smtp_exchange(gw.port, [
                f"EHLO client.test\r\nMAIL FROM:<a@agency-a.test>\r\nRCPT TO:<r{i}@remote.test>\r\nDATA\r\n".encode(),
                f"From: a@agency-a.test\r\nSubject: full-{i}\r\n\r\n{'b' * (3000 + 205 * i)}\r\n.\r\nQUIT\r\n".encode()])
            c.check(b"250 2.0.0" in out, f"message {i} acknowledged", out.decode(errors="replace")[-200:])
        harness.wait_for(lambda: len(gw.queue_files("deferred")) == n, 30, "all deferred")
        # Fill the disk; the next retries' status appends fail half-way. (tmpfs allocates 4 KiB
        # pages: the messages' sizes put each file's end at a different place in its last page,
        # so their appends run out of room at different retries.)
        subprocess.run(["dd", "if=/dev/zero", f"of={fs}/fill", "bs=64k", "count=1000"], capture_output=True)
        harness.wait_for(lambda: gw.read_log().count("cannot record delivery status") >= 5, 120,
                         "status appends failing on the full disk")
        c.check(True, "status appends failed with the disk full (ENOSPC)")
        # Item 8: with the disk full a client learns it at MAIL (SIZE and free space), not
        # after sending the whole message.
        def refused_at_mail():
            out = harness.smtp_exchange(gw.port, [b"EHLO client.test\r\nMAIL FROM:<a@agency-a.test> SIZE=5000\r\nQUIT\r\n"])
            return out if b"452 4.3.1" in out else None
        out = harness.wait_for(refused_at_mail, 10, "452 at MAIL")
        c.check(b"452 4.3.1 Insufficient system storage" in out, "a full spool disk: MAIL gets 452 4.3.1", out)
        os.unlink(f"{fs}/fill")
        time.sleep(3)   # more retries, now with space again: they append after what failed
        gw.kill()       # and a crash for good measure
        sink = harness.Sink(root, port=relay_port)
        gw.start()
        got = harness.wait_for(lambda: (lambda m: m if len(m) >= n else None)(sink.messages()), 60, "all delivered")
        subjects = {line for m in got for line in m.split(b"\n") if line.startswith(b"Subject: full-")}
        c.check(len(subjects) == n, "every acknowledged message is delivered after the disk was full",
                f"{len(subjects)} of {n}")
        c.check(not gw.queue_files("corrupt"), "nothing went to corrupt/", str(gw.queue_files("corrupt")))
        harness.never_in_clear(c, gw, [sink], "CLASSIFIED-SPOOL_FULL-PROBE")
        gw.stop()
    finally:
        if mounted:
            subprocess.run(["umount", "-l", fs])
    c.finish()


if __name__ == "__main__":
    main()
