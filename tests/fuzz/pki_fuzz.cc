// fuzz_pki: certificates and CRLs from outside (messages, LDAP, HTTP bodies, operators) through
// the validator's readers and checks (issue #15): any bytes, DER or PEM, must give a verdict or
// a clear error — no crash, no leak, bounded work (at most 64 certificates, 256 CRLs read).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "dataplane/pki/fetch.h"
#include "dataplane/pki/validator.h"

using namespace mailseal::pki;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto certs = ParseCertificates(in, kMaxUntrusted);
  auto crls = ParseCrls(in);
  if (!certs.ok() || certs->empty()) return 0;
  TrustList trust;
  (void)trust.AddAnchor(certs->back().get());   // may be refused: not a CA certificate
  if (crls.ok())
    for (const CrlPtr& c : *crls) (void)trust.AddCrl(c.get());
  Request r;
  r.leaf = certs->front().get();
  for (size_t i = 1; i < certs->size(); ++i) r.untrusted.push_back((*certs)[i].get());
  if (crls.ok())
    for (const CrlPtr& c : *crls) r.crls.push_back(c.get());
  r.revocation = size % 2 == 0;
  r.purpose = size % 3 == 0 ? Purpose::kSmimeSign : Purpose::kAny;
  r.policy.check = size % 5 == 0;
  r.at_unix = 1700000000;
  Outcome o = Validate(trust, r);
  (void)VerdictName(o.verdict);
  for (const X509Ptr& c : *certs) {
    (void)CrlUrls(c.get());
    (void)OcspUrls(c.get());
    (void)Describe(c.get());
  }
  return 0;
}
