"""A small interpreter of OpenSMTPD's smtpscript language (regress/smtp), enough for the 69
cases in ../shared/testdata/smtp-opensmtpd-regress (issue #13). Written here from the
language's README and the scripts; the original C tool is not used.

Language: `proc NAME { ... }`, `test-case [name "N"] { ... }`, `call NAME`, `repeat N { ... }`,
`writeln "text"` (sends text + CRLF), `expect smtp [ok|helo|tempfail|permfail]`,
`expect disconnect`, `starttls`. Semantics (README.txt beside the scripts): "ok" is a one-line
2xx/3xx reply; "helo" 2xx/3xx, multi-line allowed; "tempfail" 4xx; "permfail" 5xx; plain
"expect smtp" any complete reply. Each test case gets a fresh connection.
"""
import socket
import ssl

def tokenize(text):
    """Words, braces and quoted strings (which may span lines: the newline is part of the
    string, as in OpenSMTPD's scripts); '#' starts a comment at the start of a line."""
    out, i, n, line_start = [], 0, len(text), True
    while i < n:
        ch = text[i]
        if ch == "\n":
            line_start = True
            i += 1
        elif ch in " \t\r":
            i += 1
        elif ch == "#" and line_start:
            while i < n and text[i] != "\n":
                i += 1
        elif ch == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                    buf.append({"n": "\n", "r": "\r", "t": "\t"}.get(text[j], text[j]))
                else:
                    buf.append(text[j])
                j += 1
            out.append(("str", "".join(buf)))
            i, line_start = j + 1, False
        elif ch in "{}":
            out.append(("sym", ch))
            i, line_start = i + 1, False
        else:
            j = i
            while j < n and text[j] not in " \t\r\n{}\"":
                j += 1
            out.append(("sym", text[i:j]))
            i, line_start = j, False
    return out


class Parser:
    def __init__(self, tokens):
        self.t = tokens
        self.i = 0

    def peek(self):
        return self.t[self.i] if self.i < len(self.t) else (None, None)

    def take(self, want=None):
        kind, val = self.peek()
        if want is not None and val != want:
            raise SyntaxError(f"expected {want!r}, got {val!r} at token {self.i}")
        self.i += 1
        return val

    def block(self):
        self.take("{")
        body = []
        while self.peek()[1] != "}":
            if self.peek()[0] is None:
                raise SyntaxError("unterminated block")
            body.append(self.statement())
        self.take("}")
        return body

    def statement(self):
        word = self.take()
        if word == "writeln":
            return ("writeln", self.take())
        if word == "expect":
            what = self.take()
            if what == "disconnect":
                return ("expect", "disconnect", None)
            kind = None
            if self.peek()[1] in ("ok", "helo", "tempfail", "permfail"):
                kind = self.take()
            return ("expect", "smtp", kind)
        if word == "call":
            return ("call", self.take())
        if word == "repeat":   # repeat N { ... } or repeat N STATEMENT
            n = int(self.take())
            return ("repeat", n, self.block() if self.peek()[1] == "{" else [self.statement()])
        if word == "starttls":
            return ("starttls",)
        raise SyntaxError(f"unknown statement {word!r}")

    def script(self):
        procs, cases = {}, []
        while self.peek()[0] is not None:
            word = self.take()
            if word == "proc":
                name = self.take()
                procs[name] = self.block()
            elif word == "test-case":
                name = None
                while self.peek()[1] != "{":
                    key = self.take()
                    if key == "name":
                        name = self.take()
                cases.append((name, self.block()))
            else:
                raise SyntaxError(f"unexpected {word!r} at top level")
        return procs, cases


def parse(text):
    return Parser(tokenize(text)).script()


class Failure(Exception):
    pass


class Session:
    def __init__(self, port, timeout=10.0, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.transcript = []

    def read_reply(self):
        """One complete reply (all its lines); None on disconnect."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                try:
                    data = self.sock.recv(65536)
                except (ConnectionResetError, socket.timeout):
                    data = b""
                if not data:
                    return None if not lines else lines
                self.buf += data
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            self.transcript.append(b"S: " + line)
            if len(line) < 4 or line[3:4] != b"-":
                return lines

    def run(self, body, procs):
        for st in body:
            op = st[0]
            if op == "writeln":
                self.transcript.append(b"C: " + st[1].encode())
                try:
                    self.sock.sendall(st[1].encode() + b"\r\n")
                except OSError as e:
                    raise Failure(f"send failed: {e}")
            elif op == "call":
                self.run(procs[st[1]], procs)
            elif op == "repeat":
                for _ in range(st[1]):
                    self.run(st[2], procs)
            elif op == "starttls":
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                self.sock = ctx.wrap_socket(self.sock)
                self.buf = b""
            elif op == "expect":
                reply = self.read_reply()
                if st[1] == "disconnect":
                    # A disconnect may come after a last reply (a 421): skip replies until EOF.
                    while reply is not None:
                        reply = self.read_reply()
                    continue
                if reply is None:
                    raise Failure(f"expected a reply ({st[2] or 'any'}), got a disconnect")
                code = reply[-1][:3]
                kind = st[2]
                ok = {None: lambda: code[:1] in b"2345",
                      "ok": lambda: code[:1] in b"23" and len(reply) == 1,
                      "helo": lambda: code[:1] in b"23",
                      "tempfail": lambda: code[:1] == b"4",
                      "permfail": lambda: code[:1] == b"5"}[kind]()
                if not ok:
                    raise Failure(f"expected {kind or 'a reply'}, got {reply[-1].decode(errors='replace')}")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def run_case(port, body, procs, host="127.0.0.1"):
    """None when the case passes, else why (with the last lines of the transcript)."""
    s = Session(port, host=host)
    try:
        s.run(body, procs)
        return None
    except Failure as e:
        tail = b"\n".join(s.transcript[-6:]).decode(errors="replace")
        return f"{e}\n{tail}"
    finally:
        s.close()
