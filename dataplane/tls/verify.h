// verify.h — authenticated delivery (issue #16): a destination's TLS security level and the
// check of the next hop's certificate through the one validator (pki/validator.h).
//
// Levels, as Postfix's smtp_tls_security_level: none (no STARTTLS), may (STARTTLS when offered,
// the certificate not checked: RFC 7435), encrypt (TLS required, not authenticated), verify
// (TLS required, and the server's certificate must chain to the configured CAs for TLS server
// authentication and carry, as a DNS-ID, the MX host name or the recipient domain — RFC 7817 §3
// with RFC 6125's rules: a wildcard only as the whole left-most label). A hop that fails what
// its level needs is not sent anything (4.7.5, retried, then a DSN that says why).
//
// SECURITY: the peer's chain is outside input; it is judged by pki::Validate (bounded, the
// managed trust list only, never the system store).
//
// STANDARDS: RFC 3207, RFC 7435, RFC 7817, RFC 6125, RFC 5280.
#pragma once

#include <openssl/x509.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "dataplane/base/status.h"
#include "dataplane/pki/validator.h"

namespace mailseal::tls {

// kDane: RFC 7672 — where the next hop's TLSA records are DNSSEC-secure and usable, TLS is
// required and the certificate must match them (dane.h); where they are secure but all
// unusable, TLS is required unauthenticated; where there are none or the MX or TLSA answers
// are insecure, as may. A bogus answer defers (an attack or a broken zone).
enum class Level { kNone = 0, kMay = 1, kEncrypt = 2, kDane = 3, kVerify = 4 };

// ParseLevel: "none", "may", "encrypt", "dane", "verify" (and the older "never" = none,
// "opportunistic" = may).
Result<Level> ParseLevel(std::string_view s);
const char* LevelName(Level l);

struct PeerCheck {
  bool ok = false;
  std::string matched;   // the name the certificate carried
  std::string reason;    // why not, naming the certificate and what is wrong
};

// CheckPeer: the server's chain (leaf first, as sent) against `trust` for TLS server
// authentication, carrying one of `names` (tried in order).
PeerCheck CheckPeer(const pki::TrustList& trust, const std::vector<X509*>& chain, const std::vector<std::string>& names,
                    int64_t at_unix = 0);

}  // namespace mailseal::tls
