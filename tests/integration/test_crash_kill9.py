#!/usr/bin/env python3
"""Issue #2 acceptance: kill -9 mailseald in a loop while clients send 500 messages.

Every message that got 250 must be delivered (nothing acknowledged is ever lost). Duplicates
are allowed only from the usual MTA windows, and are counted and reported:
 - delivery side: a crash between the next hop's 250 and the removal of the queue file
   (same queue id delivered twice);
 - receive side: a crash after the message was durable but before the client read our 250,
   so the client sent it again (different queue ids for one Message-ID).
"""
import os
import random
import re
import socket
import sys
import threading
import time
from collections import Counter, defaultdict

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

N = 500
SENDERS = 8


def send_one(port, i, to="partner.test", host="127.0.0.1"):
    """One SMTP transaction; True only when the server answered 250 to the end of data."""
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.settimeout(5)
            f = s.makefile("rb")

            def reply():
                while True:
                    line = f.readline()
                    if not line:
                        raise ConnectionError("closed")
                    if line[3:4] != b"-":
                        return line

            if not reply().startswith(b"220"):
                return False
            s.sendall(b"EHLO load.test\r\n")
            reply()
            s.sendall(f"MAIL FROM:<s{i}@agency-a.test>\r\nRCPT TO:<r{i}@{to}>\r\nDATA\r\n".encode())
            if not (reply().startswith(b"250") and reply().startswith(b"250") and reply().startswith(b"354")):
                return False
            body = f"Message-ID: <kill-{i}@agency-a.test>\r\nSubject: kill {i}\r\n\r\n" + ("line %d\r\n" % i) * 200
            s.sendall(body.encode() + b".\r\n")
            ok = reply().startswith(b"250 2.0.0 Ok: queued as")
            try:
                s.sendall(b"QUIT\r\n")
            except OSError:
                pass
            return ok
    except (OSError, ConnectionError):
        return False


def kill_and_restart(gw):
    """kill -9 the daemon and start it again (retrying while its port is still taken)."""
    gw.proc.kill()
    gw.proc.wait()
    for _ in range(50):
        try:
            gw.start()
            return
        except RuntimeError:
            time.sleep(0.1)


def flood_with_kills(gw, n, senders=SENDERS, to="partner.test"):
    """Sends n messages from `senders` threads, retrying what did not get 250, while a killer
    thread kill -9s and restarts gw every 0.2-0.7 s. Returns (acked set, number of kills)."""
    acked = set()
    lock = threading.Lock()
    todo = list(range(n))
    done = threading.Event()

    def sender():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            if send_one(gw.port, i, to):
                with lock:
                    acked.add(i)
                time.sleep(0.12)  # spread the 500 over ~10 s so that many kills land mid-flow
            else:
                with lock:
                    todo.append(i)  # like a real MTA: try again later
                time.sleep(0.05)

    kills = 0

    def killer():
        nonlocal kills
        rnd = random.Random(9)
        while not done.is_set():
            time.sleep(rnd.uniform(0.2, 0.7))
            if done.is_set():
                break
            kill_and_restart(gw)
            kills += 1

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    k = threading.Thread(target=killer)
    k.start()
    for t in threads:
        t.start()
    deadline = time.time() + 300
    for t in threads:
        t.join(max(1, deadline - time.time()))
    done.set()
    k.join()
    return acked, kills


def main():
    a = harness.args()
    c = harness.Checker("crash_kill9")
    root = harness.tempdir(a.keep)
    sink = harness.Sink(root)
    gw = harness.Mailseald(a.mailseald, root, relay_port=sink.port).start()

    acked, kills = flood_with_kills(gw, N)
    c.check(len(acked) == N, f"all {N} messages eventually got 250 ({len(acked)}) across {kills} kill -9s")
    c.check(kills >= 5, f"the daemon was killed while mail flowed ({kills} times)")
    if gw.proc.poll() is not None:
        gw.start()

    harness.eventually(gw.drained, 120, "queue drained after the last restart")
    delivered = defaultdict(list)
    for m in sink.messages():
        mid = re.search(rb"Message-ID: <kill-(\d+)@", m)
        qid = re.search(rb"by gw\.test \(mailseal\) with ESMTP id (\w+)", m)
        if mid:
            delivered[int(mid.group(1))].append(qid.group(1).decode() if qid else "?")
    lost = sorted(acked - set(delivered))
    c.check(not lost, f"no acknowledged message lost ({len(lost)} lost)", f"lost: {lost[:20]}")
    same_qid = sum(n - 1 for qids in delivered.values() for n in Counter(qids).values() if n > 1)
    new_qid = sum(len(set(q)) - 1 for q in delivered.values() if len(set(q)) > 1)
    print(f"duplicates: {same_qid} from a crash between next-hop 250 and queue-file removal, "
          f"{new_qid} from a crash between commit and the client reading 250 (client re-sent)")
    c.check(same_qid + new_qid <= N // 5, f"duplicates stay within the crash windows ({same_qid + new_qid})")
    c.check(not gw.queue_files("corrupt"), "kill -9 never produced a corrupt queue file")
    c.check(gw.stop() == 0, "clean stop at the end")
    c.finish()


if __name__ == "__main__":
    main()
