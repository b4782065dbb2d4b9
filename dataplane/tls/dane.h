// dane.h — DANE for SMTP (RFC 7672): matching a next hop's certificate chain against its
// DNSSEC-validated TLSA records.
//
// Only DANE-TA(2) and DANE-EE(3) records are usable for SMTP (RFC 7672 §3.1.3); PKIX-TA(0)
// and PKIX-EE(1), unknown selectors and matching types are unusable. DANE-EE: the leaf (its
// certificate or its public key) matches — names and dates are not checked (§3.1.1).
// DANE-TA: a certificate of the chain the server sent matches, and the leaf chains to it (the
// one validator, pki::Validate, with that certificate as the only anchor) carrying one of the
// reference names (§3.2.2: the MX host name or the next-hop domain).
//
// SECURITY: the chain and the records are outside input; records come only from answers the
// resolver validated as secure (the caller's duty: io::Resolver::LookupTlsa).
//
// STANDARDS: RFC 7672, RFC 6698 §2.1, RFC 7671 (DANE operational updates).
#pragma once

#include <openssl/x509.h>

#include <cstdint>
#include <string>
#include <vector>

namespace mailseal::tls {

struct Tlsa {
  uint8_t usage = 0, selector = 0, matching = 0;
  std::string data;
};

// Usable: a DANE-TA or DANE-EE record with a known selector and matching type.
bool Usable(const Tlsa& r);

struct DaneCheck {
  bool ok = false;
  std::string how;      // "DANE-EE 3 1 1", "DANE-TA 2 0 1 (CN=... ), name mx.example"
  std::string reason;   // why not
};

// CheckDane: `chain` (leaf first, as the server sent it) against the usable records.
DaneCheck CheckDane(const std::vector<Tlsa>& records, const std::vector<X509*>& chain,
                    const std::vector<std::string>& names);

}  // namespace mailseal::tls
