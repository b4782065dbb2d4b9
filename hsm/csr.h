// csr.h — PKCS#10 certificate requests for the gateway's domain keys, signed in the HSM.
//
// Names follow RFC 3183 §4 and SEE-2.6: CN=domain-signing-authority (DSA, signing) or
// CN=domain-confidentiality-authority (DCA, encryption), and one rfc822Name SAN
// "<cn>@<domain>" for every domain the gateway serves.
//
// SECURITY: domain names come from the operator (API or CLI) and are checked (letters, digits,
// hyphens, dots; at most 253) before they enter a certificate request.
//
// STANDARDS: RFC 2986 (PKCS#10), RFC 5280 §4.2.1.3/4.2.1.12 (key usage, EKU), RFC 3183 §4.
#pragma once

#include <openssl/evp.h>

#include <string>
#include <vector>

#include "dataplane/base/status.h"
#include "hsm/keys.h"

namespace mailseal::hsm {

struct CsrRequest {
  Purpose purpose = Purpose::kDsaSign;   // kDsaSign, kDcaEncrypt or kTls
  std::vector<std::string> domains;      // served domains (kTls: host names or addresses), at least one
  std::string organization;              // O=, optional
  std::string country;                   // C=, optional (two letters)
};

// AuthorityName: "domain-signing-authority" or "domain-confidentiality-authority".
const char* AuthorityName(Purpose p);

// BuildCsrPem signs the request with `key` (an HSM key through the OpenSSL bridge). For kTls
// (the SMTP server's or management API's key, issue #16): CN = the first name, a dNSName or
// iPAddress SAN per name, serverAuth and clientAuth (partner gateways may ask for it).
Result<std::string> BuildCsrPem(EVP_PKEY* key, const CsrRequest& req);

// BuildAuditCsrPem: the request for the audit trail's tree-head signing key
// (CN=mailseal-audit.<domain>), signed with `key` in the token.
Result<std::string> BuildAuditCsrPem(EVP_PKEY* key, const std::string& domain);

}  // namespace mailseal::hsm
