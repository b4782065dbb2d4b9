// naming.h — RFC 3183 / SEE-2.6 name mapping between a domain signature and the sender.
//
// A domain signing authority's certificate names it "domain-signing-authority@<domain>" (CN and
// rfc822Name SANs; several SANs are all honoured). A message's sender matches when the domain
// of its address equals one of those domains or is a descendant of it ("a@hr.agency-a.test"
// under "agency-a.test"); "evilagency-a.test" is not a descendant. Comparison is
// case-insensitive.
#pragma once

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

}  // namespace mailseal::smime
