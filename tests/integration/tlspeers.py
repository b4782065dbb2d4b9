"""Helpers for the authenticated-delivery tests (issue #16): a test CA, server certificates it
issues, and real Postfix next hops (each with its own certificate and an smtp-sink behind it)."""
import os
import subprocess

import harness


def sh(cmd, cwd):
    """Runs a shell command in `cwd`; its stdout. Fails the test with its output otherwise."""
    r = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True)
    assert r.returncode == 0, f"{cmd}: {r.stdout}{r.stderr}"
    return r.stdout


def make_ca(pki, cn):
    """A conforming CA certificate and key, pki/ca.crt and pki/ca.key."""
    os.makedirs(pki, exist_ok=True)
    sh(f"openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -subj /CN={cn} -days 2 "
       "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign", pki)


def issue(pki, name, dns_names, usage="serverAuth", key_mode=0o644):
    """pki/<name>.crt issued by pki/ca for `dns_names` (none: no subjectAltName), and its key
    (readable by the postfix user unless `key_mode` says otherwise)."""
    sh(f"openssl req -new -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj /CN={dns_names[0] if dns_names else name}", pki)
    with open(os.path.join(pki, f"{name}.ext"), "w") as f:
        if dns_names:
            f.write(f"subjectAltName = {','.join('DNS:' + d for d in dns_names)}\n")
        f.write(f"extendedKeyUsage = {usage}\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
                "basicConstraints = CA:FALSE\n")
    sh(f"openssl x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile {name}.ext "
       f"-out {name}.crt", pki)
    os.chmod(os.path.join(pki, f"{name}.key"), key_mode)


def self_signed(pki, name, dns_names, key_mode=0o644):
    """pki/<name>.crt, self-signed for `dns_names`, and its key."""
    sh(f"openssl req -x509 -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.crt -subj /CN={dns_names[0]} "
       f"-addext subjectAltName={','.join('DNS:' + d for d in dns_names)} -days 2", pki)
    os.chmod(os.path.join(pki, f"{name}.key"), key_mode)


def postfix_hops(root, pki, names):
    """One Postfix per name presenting pki/<name>.crt on STARTTLS, each relaying to its own sink:
    {name: (postfix, sink)}."""
    hops = {}
    for name in names:
        os.makedirs(os.path.join(root, f"in-{name}"))
        sink = harness.Sink(os.path.join(root, f"in-{name}"))
        pf = harness.Postfix(root, sink.port, extra_main=(
            f"smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {pki}/{name}.crt\n"
            f"smtpd_tls_key_file = {pki}/{name}.key\nsmtpd_tls_received_header = yes\n"))
        hops[name] = (pf, sink)
    return hops


def received(hops, name, subject):
    """The messages hop `name`'s sink got with this Subject."""
    return [m for m in hops[name][1].messages() if f"Subject: {subject}".encode() in m]


def send_each(c, gw, domains):
    """One message to user@<domain> for each domain, Subject "to-<first label's suffix>"."""
    for d in domains:
        r = harness.send_one(gw.port, f"user@{d}", f"to-{d.split('.')[0].split('-')[-1]}")
        c.check(b"250 2.0.0" in r, f"accepted for {d}")
