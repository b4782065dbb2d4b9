// csr.cc — see csr.h. STANDARDS: RFC 2986 (PKCS#10), RFC 5280 (SAN, key usage), RFC 3183.
#include "hsm/csr.h"

#include "dataplane/base/openssl_error.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>

#include <cctype>

namespace mailseal::hsm {

const char* AuthorityName(Purpose p) {
  return p == Purpose::kDcaEncrypt ? "domain-confidentiality-authority" : "domain-signing-authority";
}

namespace {
bool IsAddress(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}
}  // namespace

Result<std::string> BuildCsrPem(EVP_PKEY* key, const CsrRequest& r) {
  const bool tls = r.purpose == Purpose::kTls;
  if (!key) return InvalidArgumentError("a CSR needs the key that signs it");
  if (r.purpose != Purpose::kDsaSign && r.purpose != Purpose::kDcaEncrypt && !tls)
    return InvalidArgumentError("a CSR is for a DSA (signing), DCA (encryption) or TLS key");
  if (r.domains.empty()) return InvalidArgumentError(tls ? "a TLS CSR needs at least one host name" : "a CSR needs at least one served domain");
  for (const std::string& d : r.domains) {
    if (tls && IsAddress(d)) continue;   // the management API is often reached by address
    if (d.empty() || d.size() > 253) return InvalidArgumentError(StrCat("bad domain '", d, "'"));
    for (unsigned char c : d)
      if (!(std::isalnum(c) || c == '-' || c == '.')) return InvalidArgumentError(StrCat("bad domain '", d, "'"));
  }
  if (!r.country.empty() && r.country.size() != 2) return InvalidArgumentError("country must be two letters");
  // TLS server keys (issue #16): CN is the first name, every name a dNSName (or iPAddress).
  const std::string cn = tls ? r.domains.front() : AuthorityName(r.purpose);
  X509_REQ* req = X509_REQ_new();
  X509_NAME* name = X509_NAME_new();
  auto add = [&](const char* field, const std::string& v) {
    return X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(v.c_str()), -1, -1, 0);
  };
  bool ok = X509_REQ_set_version(req, 0) == 1;
  if (!r.country.empty()) ok = ok && add("C", r.country);
  if (!r.organization.empty()) ok = ok && add("O", r.organization);
  ok = ok && add("CN", cn) && X509_REQ_set_subject_name(req, name) == 1 && X509_REQ_set_pubkey(req, key) == 1;

  STACK_OF(X509_EXTENSION)* exts = sk_X509_EXTENSION_new_null();
  std::string san;
  for (const std::string& d : r.domains)
    san += tls ? StrCat(san.empty() ? "" : ",", IsAddress(d) ? "IP:" : "DNS:", d)
               : StrCat(san.empty() ? "" : ",", "email:", cn, "@", d);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, nullptr, nullptr, req, nullptr, 0);
  const char* ku = tls ? (EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA ? "critical,digitalSignature,keyEncipherment"
                                                                  : "critical,digitalSignature")
                 : r.purpose == Purpose::kDsaSign ? "critical,digitalSignature,nonRepudiation"
                                                  : "critical,keyEncipherment,keyAgreement";
  for (auto [nid, value] : {std::pair<int, std::string>{NID_subject_alt_name, san},
                            std::pair<int, std::string>{NID_key_usage, ku},
                            std::pair<int, std::string>{NID_ext_key_usage, tls ? "serverAuth,clientAuth" : "emailProtection"}}) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
    if (!ext) {
      ok = false;
      break;
    }
    sk_X509_EXTENSION_push(exts, ext);
  }
  ok = ok && X509_REQ_add_extensions(req, exts) == 1;
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  X509_NAME_free(name);
  // The signature is made by the token through the engine.
  ok = ok && X509_REQ_sign(req, key, EVP_sha256()) > 0;
  std::string out;
  if (ok) {
    BIO* bio = BIO_new(BIO_s_mem());
    PEM_write_bio_X509_REQ(bio, req);
    out = base::BioString(bio);
    BIO_free(bio);
  }
  X509_REQ_free(req);
  if (!ok) {
    return InternalError(base::OpenSslError("building the CSR failed"));
  }
  return out;
}

Result<std::string> BuildAuditCsrPem(EVP_PKEY* key, const std::string& domain) {
  X509_REQ* req = X509_REQ_new();
  std::string cn = "mailseal-audit." + domain;
  X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_REQ_set_pubkey(req, key);
  std::string out;
  if (X509_REQ_sign(req, key, EVP_sha256()) > 0) {
    BIO* b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509_REQ(b, req);
    out = base::BioString(b);
    BIO_free(b);
  }
  X509_REQ_free(req);
  if (out.empty()) return InternalError(base::OpenSslError("the audit CSR could not be signed in the token"));
  return out;
}

}  // namespace mailseal::hsm
