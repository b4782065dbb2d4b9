#!/usr/bin/env python3
"""Issue #16: SMTP MTA Strict Transport Security (RFC 8461). REQUIREMENTS.md §4 (SM-5,
SM-6.1); the issue's acceptance: "an HTTPS server serving an MTA-STS policy: enforce refuses a
hop not matching the policy's MX patterns or with a bad certificate; testing mode delivers and
reports". RFC 8460 reports are written for the operator: one per policy domain and period,
with the successful and failed sessions and the failures' result types.

A real HTTPS server (Python's http.server over TLS, certificate from the test CA) serves each
domain's policy at https://mta-sts.<domain>/.well-known/mta-sts.txt; the _mta-sts TXT records
come from the delivery resolver's local data; real Postfix instances are the next hops.
- agency-m.test, enforce, mx mx1.agency-m.test, whose certificate the CA issued: delivered,
  verified.
- agency-n.test, enforce, mx mx.agency-n.test — but the hop is rogue.agency-n.test: nothing
  sent to it.
- agency-o.test, enforce, mx mx.agency-o.test — the hop answers with a self-signed certificate:
  nothing sent.
- agency-p.test, testing, the same bad hop: delivered, and the log says enforce would have
  refused it.
"""
import http.server
import json
import os
import re
import ssl
import sys
import threading

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from tlspeers import issue, make_ca, postfix_hops, received, self_signed, send_each  # noqa: E402

POLICIES = {
    "agency-m.test": "version: STSv1\nmode: enforce\nmx: mx1.agency-m.test\nmax_age: 86400\n",
    "agency-n.test": "version: STSv1\nmode: enforce\nmx: mx.agency-n.test\nmax_age: 86400\n",
    "agency-o.test": "version: STSv1\nmode: enforce\nmx: *.agency-o.test\nmax_age: 86400\n",
    "agency-p.test": "version: STSv1\nmode: testing\nmx: mx.agency-p.test\nmax_age: 86400\n",
}


class PolicyServer:
    """HTTPS on a free loopback port; the Host header picks the policy."""

    def __init__(self, cert, key):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                host = self.headers.get("Host", "").split(":")[0]
                domain = host[len("mta-sts."):] if host.startswith("mta-sts.") else ""
                body = POLICIES.get(domain)
                if self.path != "/.well-known/mta-sts.txt" or body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *a):
                pass
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        harness._cleanups.append(self.httpd.shutdown)


def main():
    a = harness.args()
    c = harness.Checker("delivery_tls_mta_sts")
    root = harness.tempdir(a.keep)
    pki = os.path.join(root, "pki")
    make_ca(pki, "Web-PKI-Test-CA")
    issue(pki, "mx1", ["mx1.agency-m.test", "rogue.agency-n.test"])
    issue(pki, "www", [f"mta-sts.{d}" for d in POLICIES])
    self_signed(pki, "mitm", ["mx.agency-o.test", "mx.agency-p.test"])
    www = PolicyServer(f"{pki}/www.crt", f"{pki}/www.key")
    hops = postfix_hops(root, pki, ("mx1", "mitm"))
    p1, pm = hops["mx1"][0].port, hops["mitm"][0].port
    route = {"m": ("mx1.agency-m.test", p1), "n": ("rogue.agency-n.test", p1), "o": ("mx.agency-o.test", pm),
             "p": ("mx.agency-p.test", pm)}
    conf = "".join(f'routes {{ domain: "agency-{d}.test" next_hop: "{h}:{p}" }}\n' for d, (h, p) in route.items())
    conf += "".join(f'dns_local_data: "{h}. A 127.0.0.1"\n' for h, _ in route.values())
    conf += "".join(f'dns_local_data: "_mta-sts.{d}. TXT \\"v=STSv1; id=20261201\\""\n' for d in POLICIES)
    conf += "".join(f'mta_sts_connect_to: "mta-sts.{d}:443:127.0.0.1:{www.port}"\n' for d in POLICIES)
    reports = os.path.join(root, "tlsrpt")
    conf += f'mta_sts: true tls_ca_file: "{pki}/ca.crt" max_lifetime_s: 600 tls_report_dir: "{reports}" tls_report_period_s: 2'
    gw = harness.Mailseald(a.mailseald, root, name="gw", local_domain="agency-a.test", hostname="gw-a.test",
                           delivery_extra=conf)
    gw.start()
    send_each(c, gw, [f"agency-{d}.test" for d in route])

    def got(name, subject):
        return received(hops, name, subject)

    c.check(harness.eventually(lambda: got("mx1", "to-m"), 30, "m delivered"),
            "enforce: the MX the policy names, with a certificate valid for its name, gets the mail", gw.read_log()[-1500:])
    log = gw.read_log()
    c.check(re.search(r"to=user@agency-m.test .*verified as mx1.agency-m.test \(MTA-STS enforce\)", log) is not None,
            "the delivery log says the hop was verified under MTA-STS",
            "\n".join(l for l in log.splitlines() if "agency-m" in l)[-400:])
    c.check(harness.eventually(lambda: got("mitm", "to-p"), 30, "p delivered"), "testing: delivered to the bad hop anyway")
    c.check(harness.eventually(lambda: re.search(r"MTA-STS testing: the hop would fail enforce .*destination=agency-p.test",
                                                 gw.read_log()), 30, "testing reported"),
            "testing: the log says enforce would have refused the hop", gw.read_log()[-800:])
    c.check(harness.eventually(lambda: re.search(r"to=user@agency-n.test .*4\.7\.5 MTA-STS \(enforce\): rogue.agency-n.test is "
                                                 r"not an MX the policy of agency-n.test names", gw.read_log()), 30, "n refused"),
            "enforce: a hop the policy does not name gets nothing (even with a valid certificate)",
            "\n".join(l for l in gw.read_log().splitlines() if "agency-n" in l)[-600:])
    c.check(harness.eventually(lambda: re.search(r"to=user@agency-o.test .*4\.7\.5 TLS level verify: mx.agency-o.test .*not "
                                                 r"authenticated", gw.read_log()), 30, "o refused"),
            "enforce: a hop with a certificate not from the CAs gets nothing",
            "\n".join(l for l in gw.read_log().splitlines() if "agency-o" in l)[-600:])
    c.check(not got("mx1", "to-n") and not got("mitm", "to-o"), "refused hops never saw the mail")

    def report_for(domain, want):
        for name in sorted(os.listdir(reports)) if os.path.isdir(reports) else []:
            if name.endswith(f"_{domain}.json"):
                with open(os.path.join(reports, name)) as f:
                    r = json.load(f)
                if want(r["policies"][0]):
                    return r
        return None
    m = harness.eventually(lambda: report_for("agency-m.test", lambda p: p["summary"]["total-successful-session-count"] >= 1),
                           30, "report for agency-m")
    c.check(m is not None and m["policies"][0]["policy"]["policy-type"] == "sts"
            and "mx: mx1.agency-m.test" in m["policies"][0]["policy"]["policy-string"],
            "an RFC 8460 report for agency-m: sts policy, a successful session", m)
    n = harness.eventually(lambda: report_for("agency-n.test", lambda p: p["summary"]["total-failure-session-count"] >= 1),
                           30, "report for agency-n")
    c.check(n is not None and n["policies"][0]["failure-details"][0]["result-type"] == "validation-failure"
            and n["policies"][0]["failure-details"][0]["receiving-mx-hostname"] == "rogue.agency-n.test",
            "the report for agency-n counts the refused hop with its result type", n)
    o = harness.eventually(lambda: report_for("agency-o.test", lambda p: p["summary"]["total-failure-session-count"] >= 1),
                           30, "report for agency-o")
    c.check(o is not None and o["policies"][0]["failure-details"][0]["result-type"] == "certificate-not-trusted"
            and o["policies"][0]["failure-details"][0]["receiving-ip"] == "127.0.0.1",
            "the report for agency-o says the certificate was not trusted", o)
    c.check(gw.stop() == 0, "clean stop")
    c.finish()


if __name__ == "__main__":
    main()
