"""Helpers for mailseal's integration tests: real peers on loopback, started on free ports and
stopped by PID (also when a test fails).

Peers: mailseald (the binary under test), Postfix (a private instance), smtp-sink (Postfix's
test sink, which writes every message it accepts to a file), swaks.
"""
import argparse
import atexit
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

_cleanups = []


def cleanup_all():
    while _cleanups:
        fn = _cleanups.pop()
        try:
            fn()
        except Exception as e:  # keep cleaning up
            print(f"cleanup: {e}", file=sys.stderr)


atexit.register(cleanup_all)


def args():
    p = argparse.ArgumentParser()
    p.add_argument("--mailseald", required=True)
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--keygen", help="mailseal-keygen (tests that make token keys)")
    p.add_argument("--mailsealctl", help="the management CLI (control tests)")
    p.add_argument("--audit", help="mailseal-audit (control tests)")
    p.add_argument("--provision", help="mailseal-provision (first-boot tests)")
    return p.parse_args()


def tempdir(keep=False):
    d = tempfile.mkdtemp(prefix="mailseal-it-")
    os.chmod(d, 0o755)  # the postfix user must be able to enter it
    if not keep:
        _cleanups.insert(0, lambda: shutil.rmtree(d, ignore_errors=True))
    return d


_GIVEN_PORTS = set()


def free_port():
    """A port free now and never handed out before in this test process: the kernel may return
    the same ephemeral port to two bind(0) calls when nothing listens on it in between, and two
    daemons configured before either starts would then share a port (integration.pki_certrequest
    once routed gateway A's mail to itself that way)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port
    raise RuntimeError("no fresh free port after 100 tries")


def wait_port(port, timeout=10.0, host="127.0.0.1"):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


def rss_kib(pid):
    """The resident set of a process, in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_for(pred, timeout, what, interval=0.1):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for: {what}")


def eventually(pred, timeout, what, interval=0.1):
    """wait_for that reports instead of raising: pred's value, or None (and a line saying what
    was not reached) when the deadline passes — for checks that are counted, not fatal."""
    try:
        return wait_for(pred, timeout, what, interval)
    except AssertionError as e:
        print(e)
        return None


class Sink:
    """smtp-sink writing each accepted message to DIR/<file>."""

    def __init__(self, root, extra=(), port=None, host="127.0.0.1", dump=True):
        self.port = port or free_port()
        self.dir = os.path.join(root, f"sink-{host}-{self.port}")
        os.makedirs(self.dir, exist_ok=True)   # a sink started again on its port keeps its files
        shutil.chown(self.dir, "postfix")
        dump_args = ["-d", os.path.join(self.dir, "%M.")] if dump else []
        self.proc = subprocess.Popen(
            ["smtp-sink", "-u", "postfix", *dump_args, *extra, f"{host}:{self.port}", "1024"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _cleanups.append(self.stop)
        wait_port(self.port, host=host)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _open_files(self):
        """The files smtp-sink has open now: the messages it is still receiving."""
        fds = f"/proc/{self.proc.pid}/fd"
        names = set()
        try:
            entries = os.listdir(fds)
        except OSError:      # smtp-sink has exited: nothing is being written
            return names
        for fd in entries:
            try:
                names.add(os.readlink(os.path.join(fds, fd)))
            except OSError:  # closed meanwhile
                pass
        return names

    def messages(self):
        """Every message smtp-sink has finished receiving. It writes a file as the message
        arrives, so a file it still holds open is a message in transit and is left out (a test
        that counts files would otherwise count one whose headers or body are not there yet)."""
        names = sorted(os.listdir(self.dir))
        busy = self._open_files()
        out = []
        for name in names:
            path = os.path.join(self.dir, name)
            if path in busy:
                continue
            with open(path, "rb") as f:
                out.append(f.read())
        return out


# The account mailseald drops to once its listeners are bound (issue #18: the same privilege
# drop outside the image as inside it). Tests run as root, so every daemon the harness starts
# begins as root and becomes this user.
DAEMON_USER = "mailseal"


def ensure_daemon_user():
    """The system account the package's postinst makes (no home, no shell, locked), made here
    when the machine running the tests has none."""
    try:
        pwd.getpwnam(DAEMON_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", DAEMON_USER], check=True)
    return DAEMON_USER


def give_to_daemon_user(top):
    """Everything root made under `top` (keys, PIN files, token directories, configuration)
    becomes the daemon user's, as the package and the key ceremony leave them on an appliance.
    Files of other users (the sinks' postfix) stay theirs."""
    pw = pwd.getpwnam(DAEMON_USER)
    for d, dirs, files in os.walk(top):
        for n in [d] + [os.path.join(d, f) for f in files]:
            try:
                if os.lstat(n).st_uid == 0:
                    os.lchown(n, pw.pw_uid, pw.pw_gid)
            except FileNotFoundError:
                pass


class Mailseald:
    def __init__(self, binary, root, relay_port=None, extra="", name="gw", trusted="127.0.0.0/8",
                 delivery_extra="", local_domain="agency-a.test", env=None, hostname="gw.test",
                 user=None):
        self.binary = binary
        self.env = env
        self.top = root
        self.user = (ensure_daemon_user() if os.geteuid() == 0 else "") if user is None else user
        self.root = os.path.join(root, name)
        os.makedirs(self.root, exist_ok=True)
        self.spool = os.path.join(self.root, "spool")
        self.config = os.path.join(self.root, "mailseald.conf")
        self.log = os.path.join(self.root, "mailseald.log")
        self.port = free_port()
        relay = f'relay_host: "127.0.0.1:{relay_port}"' if relay_port else ""
        with open(self.config, "w") as f:
            f.write(f"""hostname: "{hostname}"
listen {{ address: "127.0.0.1:{self.port}" }}
spool_dir: "{self.spool}"
trusted_networks: "{trusted}"
local_domains: "{local_domain}"
delivery {{
  {relay}
  min_backoff_s: 1
  max_backoff_s: 2
  queue_scan_interval_ms: 200
  connect_timeout_ms: 2000
  command_timeout_ms: 10000
  {delivery_extra}
}}
{extra}
{f'user: "{self.user}"' if self.user else ""}
""")
        self.proc = None
        _cleanups.append(self.kill)

    def prepare(self):
        """What start() does before it runs the binary: the files become the daemon user's."""
        if self.user:
            give_to_daemon_user(self.top)

    def start(self):
        self.prepare()
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([self.binary, "--config", self.config], stdout=logf, stderr=logf,
                                     env=self.env)
        logf.close()
        end = time.time() + 10
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mailseald exited {self.proc.returncode}:\n{self.read_log()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.recv(100)
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mailseald did not start listening")

    def stop(self, timeout=20):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        return self.proc.returncode

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def read_log(self):
        with open(self.log, "r", errors="replace") as f:
            return f.read()

    def drained(self):
        """No message waits in incoming/, active/ or deferred/ (held mail does not count)."""
        return not (self.queue_files("active") or self.queue_files("deferred") or self.queue_files("incoming"))

    def queue_files(self, state):
        d = os.path.join(self.spool, state)
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def spool_body(self, state, name):
        """A spooled message's body as it was received. With a token the spool is encrypted at
        rest (issue #19): mailseal-spool reads it through the token's data keys."""
        return self._spool_tool("cat", state, name)

    def stored_file(self, relative):
        """A file of the spool directory as mailseald reads it (the certificate store's files
        are sealed at rest with a token, issue #19)."""
        return self._spool_tool("open", "", relative)

    def spool_envelope(self, state, name):
        """A spooled message's envelope (protobuf text format, with its delivery records)."""
        return self._spool_tool("envelope", state, name)

    def _spool_tool(self, what, state, name):
        path = os.path.join(self.spool, state, name)
        tool = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(self.binary))), "tools", "mailseal-spool")
        r = subprocess.run([tool, "--config", self.config, what, path], capture_output=True, env=self.env, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"mailseal-spool: {r.stderr.decode(errors='replace')}")
        return r.stdout


class Postfix:
    """A private Postfix instance that relays everything to relay_port (TESTING.md recipe)."""

    def __init__(self, root, relay_port, extra_main="", extra_master="", host="127.0.0.1", relay_host="127.0.0.1",
                 netns=None):
        """host: the address it listens on; relay_host: where it relays; netns: run it inside this
        network namespace (host and relay_host are then that namespace's addresses)."""
        self.netns = netns
        self.host = host
        self.dir = os.path.join(root, f"postfix-{free_port()}")
        self.port = free_port()
        conf, queue, data = (os.path.join(self.dir, x) for x in ("conf", "queue", "data"))
        for d in (conf, queue, data):
            os.makedirs(d)
        os.chmod(self.dir, 0o755)
        shutil.chown(data, "postfix")
        with open("/etc/postfix/master.cf") as f:
            master = f.read()
        master = re.sub(r"^smtp\s+inet\s.*$", f"{host}:{self.port} inet n - n - - smtpd", master,
                        count=1, flags=re.M)
        with open(os.path.join(conf, "master.cf"), "w") as f:
            f.write(master + extra_master)
        with open(os.path.join(conf, "main.cf"), "w") as f:
            f.write(f"""compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
myhostname = peer.test
mydestination =
inet_interfaces = {host}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8 {host}/32
relayhost = [{relay_host}]:{relay_port}
smtpd_recipient_restrictions = permit_mynetworks, reject
maillog_file_prefixes = /var, /dev/stdout, /tmp
maillog_file = {self.dir}/maillog
message_size_limit = 104857600
{extra_main}
""")
        self.conf = conf
        r = subprocess.run(self._in_ns(["postfix", "-c", conf, "start"]), capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"postfix start failed: {r.stdout}{r.stderr}")
        _cleanups.append(self.stop)
        if netns:
            probe = f"import socket; socket.create_connection(('{host}', {self.port}), timeout=1).recv(10)"
            wait_for(lambda: subprocess.run(self._in_ns(["python3", "-c", probe]), capture_output=True).returncode == 0,
                     20, "postfix in the namespace listening")
        else:
            wait_port(self.port, host=host)

    def _in_ns(self, cmd):
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd

    def stop(self):
        subprocess.run(self._in_ns(["postfix", "-c", self.conf, "stop"]), capture_output=True)
        pid_file = os.path.join(self.dir, "queue", "pid", "master.pid")
        try:
            with open(pid_file) as f:
                pid = int(f.read().strip())
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


def send_one(port, rcpt, subject, mail_from="alice@agency-a.test", timeout=10.0):
    """One message (Subject `subject`, body "body <subject>") in its own session; the server's
    replies, or the connection error as bytes — for fault tests, where a refusal is an answer."""
    try:
        return smtp_exchange(port, [
            f"EHLO client.test\r\nMAIL FROM:<{mail_from}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode(),
            f"From: {mail_from}\r\nSubject: {subject}\r\n\r\nbody {subject}\r\n.\r\nQUIT\r\n".encode()],
            timeout=timeout)
    except OSError as e:
        return str(e).encode()


def send_classified(port, marker, rcpt="x@plain.test"):
    """The "never in clear" probe of the fault tests (issue #13): a message the policy must
    protect (a default trigger word in the Subject) for a recipient no certificate covers, so
    it must be held — never delivered in clear, whatever fault follows. `marker` is in its
    body. Returns the server's replies."""
    return smtp_exchange(port, [
        f"EHLO probe.test\r\nMAIL FROM:<alice@agency-a.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode(),
        f"From: alice@agency-a.test\r\nTo: {rcpt}\r\nSubject: [RESTRICTED] probe\r\n\r\n{marker}\r\n.\r\nQUIT\r\n".encode()])


def never_in_clear(c, gw, sinks, marker):
    """Checks that the probe sent by send_classified is held and that no sink ever got it."""
    leaked = [m for s in sinks for m in (s.messages() if callable(s.messages) else s.messages) if marker.encode() in m]
    c.check(not leaked, "never in clear: the classified probe reached no next hop", str(len(leaked)))
    held = eventually(lambda: any(marker.encode() in gw.spool_body("hold", f)
                                  for f in gw.queue_files("hold")) or None, 20, "probe held")
    c.check(held is not None, "the classified probe is held (policy: protect, no certificate)")


def smtp_exchange(port, lines, timeout=10.0):
    """Sends raw bytes (a list of chunks) and returns everything the server said."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    out = b""
    try:
        out += s.recv(4096)
        for chunk in lines:
            s.sendall(chunk)
            time.sleep(0.05)
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except (ConnectionResetError, BrokenPipeError, socket.timeout, OSError):
        pass
    finally:
        s.close()
    return out


class Checker:
    """Collects named checks; prints 'N passed, N failed' and exits non-zero on failure."""

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = 0

    def check(self, cond, what, detail=""):
        if cond:
            self.passed += 1
            print(f"ok   {what}")
        else:
            self.failed += 1
            print(f"FAIL {what}" + (f"\n     {detail}" if detail else ""))
        return cond

    def finish(self):
        print(f"{self.name}: {self.passed} passed, {self.failed} failed")
        cleanup_all()
        sys.exit(1 if self.failed or not self.passed else 0)
