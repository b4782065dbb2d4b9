// naming.cc — see naming.h.
#include "dataplane/smime/naming.h"

#include <cctype>

namespace mailseal::smime {
namespace {
std::string Lower(std::string_view s) {
  std::string o(s);
  for (char& c : o) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return o;
}
}  // namespace

NamingVerdict CheckDomainSigner(const std::vector<std::string>& signer_emails, std::string_view sender_address,
                                std::string_view authority) {
  NamingVerdict v;
  size_t at = sender_address.rfind('@');
  if (at == std::string_view::npos || at + 1 >= sender_address.size()) {
    v.reason = "the sender address has no domain";
    return v;
  }
  std::string sender_domain = Lower(sender_address.substr(at + 1));
  std::string prefix = Lower(authority) + "@";
  std::string covered;
  for (const std::string& e : signer_emails) {
    std::string email = Lower(e);
    if (email.compare(0, prefix.size(), prefix) != 0) continue;  // not a domain authority name
    std::string d = email.substr(prefix.size());
    if (d.empty()) continue;
    covered += (covered.empty() ? "" : ", ") + d;
    if (sender_domain == d ||
        (sender_domain.size() > d.size() && sender_domain.compare(sender_domain.size() - d.size(), d.size(), d) == 0 &&
         sender_domain[sender_domain.size() - d.size() - 1] == '.')) {
      v.ok = true;
      v.matched_domain = d;
      return v;
    }
  }
  v.reason = covered.empty() ? "the signing certificate names no " + std::string(authority)
                             : "sender domain " + sender_domain + " is not covered by the signing certificate (" +
                                   covered + ")";
  return v;
}

}  // namespace mailseal::smime
