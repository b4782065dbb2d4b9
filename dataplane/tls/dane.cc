// dane.cc — see dane.h.
#include "dataplane/tls/dane.h"

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "dataplane/base/strings.h"
#include "dataplane/pki/validator.h"

namespace mailseal::tls {
namespace {

// Associated: what a record of this selector and matching type compares with (RFC 6698 §2.1).
std::string Associated(X509* cert, uint8_t selector, uint8_t matching) {
  unsigned char* der = nullptr;
  int n = selector == 0 ? i2d_X509(cert, &der) : i2d_PUBKEY(X509_get0_pubkey(cert), &der);
  if (n <= 0) return "";
  std::string bytes(reinterpret_cast<char*>(der), static_cast<size_t>(n));
  OPENSSL_free(der);
  if (matching == 0) return bytes;
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), md, &len, matching == 1 ? EVP_sha256() : EVP_sha512(), nullptr) != 1) return "";
  return std::string(reinterpret_cast<char*>(md), len);
}

std::string Name(const Tlsa& r) {
  return StrCat(r.usage == 2 ? "DANE-TA" : "DANE-EE", " ", int{r.usage}, " ", int{r.selector}, " ", int{r.matching});
}

}  // namespace

bool Usable(const Tlsa& r) {
  return (r.usage == 2 || r.usage == 3) && r.selector <= 1 && r.matching <= 2 && !r.data.empty();
}

DaneCheck CheckDane(const std::vector<Tlsa>& records, const std::vector<X509*>& chain,
                    const std::vector<std::string>& names) {
  DaneCheck out;
  if (chain.empty() || !chain.front()) {
    out.reason = "the server sent no certificate";
    return out;
  }
  std::string ta_reason;
  for (const Tlsa& r : records) {
    if (!Usable(r)) continue;
    if (r.usage == 3) {
      if (Associated(chain.front(), r.selector, r.matching) == r.data) {
        out.ok = true;
        out.how = Name(r);
        return out;
      }
      continue;
    }
    // DANE-TA: a certificate the server sent (its issuers, or the leaf itself when self-issued).
    for (size_t i = 0; i < chain.size(); ++i) {
      if (Associated(chain[i], r.selector, r.matching) != r.data) continue;
      pki::TrustList ta;
      if (Status st = ta.AddAnchor(chain[i]); !st.ok()) {
        ta_reason = StrCat("the certificate ", Name(r), " names cannot be a trust anchor: ", st.message());
        continue;
      }
      for (const std::string& name : names) {
        pki::Request q;
        q.leaf = chain.front();
        for (size_t k = 1; k < chain.size() && k <= static_cast<size_t>(pki::kMaxUntrusted); ++k) q.untrusted.push_back(chain[k]);
        q.purpose = pki::Purpose::kTlsServer;
        q.host = base::AsciiLower(name);
        pki::Outcome o = pki::Validate(ta, q);
        if (o.ok()) {
          out.ok = true;
          out.how = StrCat(Name(r), " (", pki::SubjectOf(chain[i]), "), name ", q.host);
          return out;
        }
        ta_reason = o.reason;
      }
    }
  }
  out.reason = ta_reason.empty() ? "no certificate the server sent matches its TLSA records" : ta_reason;
  return out;
}

}  // namespace mailseal::tls
