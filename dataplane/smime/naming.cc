// naming.cc — see naming.h.
#include "dataplane/smime/naming.h"
#include "dataplane/base/strings.h"

#include "dataplane/base/status.h"

#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>

namespace mailseal::smime {
namespace {
}  // namespace

NamingVerdict CheckDomainSigner(const std::vector<std::string>& signer_emails, std::string_view sender_address,
                                std::string_view authority) {
  NamingVerdict v;
  size_t at = sender_address.rfind('@');
  if (at == std::string_view::npos || at + 1 >= sender_address.size()) {
    v.reason = "the sender address has no domain";
    return v;
  }
  std::string sender_domain = base::AsciiLower(sender_address.substr(at + 1));
  std::string prefix = base::AsciiLower(authority) + "@";
  std::string covered;
  for (const std::string& e : signer_emails) {
    std::string email = base::AsciiLower(e);
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

AuthorityNames ExamineAuthority(X509* cert, std::string_view authority_in) {
  AuthorityNames out;
  if (!cert) return out;
  std::string authority = base::AsciiLower(authority_in);
  std::string prefix = authority + "@";
  auto text = [](const ASN1_STRING* v) {
    return base::AsciiLower(std::string_view(reinterpret_cast<const char*>(ASN1_STRING_get0_data(v)),
                                  static_cast<size_t>(std::max(0, ASN1_STRING_length(v)))));
  };
  auto* sans = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); ++i) {
    const GENERAL_NAME* g = sk_GENERAL_NAME_value(sans, i);
    if (g->type != GEN_EMAIL) continue;
    std::string e = text(g->d.rfc822Name);
    if (e.size() > prefix.size() && e.compare(0, prefix.size(), prefix) == 0) out.domains.push_back(e.substr(prefix.size()));
  }
  GENERAL_NAMES_free(sans);
  out.claims = !out.domains.empty();
  std::vector<std::string> cns;
  X509_NAME* subject = X509_get_subject_name(cert);
  for (int i = -1; (i = X509_NAME_get_index_by_NID(subject, NID_commonName, i)) >= 0;) {
    cns.push_back(text(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i))));
    if (cns.back() == authority || cns.back().compare(0, prefix.size(), prefix) == 0) out.claims = true;
  }
  if (!out.claims) return out;
  if (out.domains.empty()) {
    out.problem = StrCat("it names ", authority, " only in its CN, without an rfc822Name (SEE-2.6)");
  } else if (cns.empty()) {
    out.problem = StrCat("its subject has no CN naming ", authority, " (SEE-2.6)");
  } else {
    for (const std::string& cn : cns) {
      bool ok = cn == authority || (cn.compare(0, prefix.size(), prefix) == 0 &&
                                    std::find(out.domains.begin(), out.domains.end(), cn.substr(prefix.size())) !=
                                        out.domains.end());
      if (!ok) {
        out.problem = StrCat("its CN '", cn, "' is not ", authority, " for a domain its rfc822Names name (SEE-2.6)");
        break;
      }
    }
  }
  if (!out.problem.empty()) out.domains.clear();
  return out;
}

std::string KeyStrengthProblem(X509* cert) {
  EVP_PKEY* k = cert ? X509_get0_pubkey(cert) : nullptr;
  if (!k) return "no public key";
  int bits = EVP_PKEY_get_bits(k);
  switch (EVP_PKEY_get_base_id(k)) {
    case EVP_PKEY_RSA:
      return bits >= 2048 ? "" : StrCat("its RSA key has ", bits, " bits (at least 2048 required, SEE-2.4)");
    case EVP_PKEY_EC:
      return bits >= 256 ? "" : StrCat("its EC key has ", bits, " bits (at least P-256 required, SEE-2.4)");
    default:
      return "its key is neither RSA nor EC (SEE-2.4)";
  }
}

}  // namespace mailseal::smime
