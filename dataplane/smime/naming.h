// naming.h — RFC 3183 / SEE-2.6 name mapping between a domain signature and the sender.
//
// A domain signing authority's certificate names it "domain-signing-authority@<domain>" (CN and
// rfc822Name SANs; several SANs are all honoured). A message's sender matches when the domain
// of its address equals one of those domains or is a descendant of it ("a@hr.agency-a.test"
// under "agency-a.test"); "evilagency-a.test" is not a descendant. Comparison is
// case-insensitive.
//
// SECURITY: names come from certificates in untrusted messages: they are compared only after
// the chain verified; email addresses are compared as ASCII, case-insensitively, label by label.
//
// STANDARDS: RFC 3183 §3–4, RFC 5280 §4.2.1.6 (subjectAltName), SEE-2.6.
#pragma once

#include <openssl/x509.h>

#include <string>
#include <string_view>
#include <vector>

namespace mailseal::smime {

struct NamingVerdict {
  bool ok = false;
  std::string matched_domain;   // the certificate domain that covers the sender
  std::string reason;           // why not, for the warning text and the log
};

// CheckDomainSigner: `authority` is "domain-signing-authority" or
// "domain-confidentiality-authority"; `signer_emails` the certificate's rfc822Names.
NamingVerdict CheckDomainSigner(const std::vector<std::string>& signer_emails, std::string_view sender_address,
                                std::string_view authority = "domain-signing-authority");

// AuthorityNames: what a certificate says about being `authority` for some domains (SEE-2.6
// applied whole, issue #12). The rule: its rfc822Name SANs "<authority>@<domain>" name the
// domains (all honoured), and every CN of its subject is "<authority>" (as our CSRs write it,
// one CN for several domains) or "<authority>@<one of those domains>". A certificate that
// names the authority anywhere (CN or SAN) `claims` to be one; one that claims but breaks the
// rule — only a CN, a CN of something else, a CN for a domain its SANs do not name — has a
// `problem` and no `domains`: never a domain authority, never learnt, HARD warning when it
// signs, held when it is a partner's DCA.
struct AuthorityNames {
  bool claims = false;
  std::vector<std::string> domains;   // lower case; empty when problem is set
  std::string problem;                // empty: the rule holds
};
AuthorityNames ExamineAuthority(X509* cert, std::string_view authority);

// KeyStrengthProblem: why a partner certificate's key is too weak for SEE-2.4 (RSA under 2048
// bits, EC under 256 bits, anything else), or "" when it is strong enough.
std::string KeyStrengthProblem(X509* cert);

}  // namespace mailseal::smime
