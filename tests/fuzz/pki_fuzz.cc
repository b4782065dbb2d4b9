// fuzz_pki: certificates and CRLs from outside (messages, LDAP, HTTP bodies, operators) through
// the validator's readers and checks (issue #15): any bytes, DER or PEM, must give a verdict or
// a clear error — no crash, no leak, bounded work (at most 64 certificates, 256 CRLs read).
// Also the other readers of network input about certificates (issue #16): MTA-STS policy bodies
// and TXT records, LDAP filter escaping, DANE matching of the certificates read against a TLSA
// record made of the input.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "dataplane/pki/fetch.h"
#include "dataplane/pki/ldap.h"
#include "dataplane/pki/validator.h"
#include "dataplane/tls/dane.h"
#include "dataplane/tls/mta_sts.h"

using namespace mailseal::pki;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  (void)mailseal::tls::ParseStsPolicy(in);
  (void)mailseal::tls::StsTxtId(in);
  (void)mailseal::tls::StsMxMatches(in.substr(0, size / 2), in.substr(size / 2));
  (void)FilterFor("(mail=domain-confidentiality-authority@%s)", std::string(in.substr(0, 300)));
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
  if (size >= 4) {   // a TLSA record from the input's first bytes, matched against what was read
    mailseal::tls::Tlsa t{static_cast<uint8_t>(data[0] % 4), static_cast<uint8_t>(data[1] % 3),
                          static_cast<uint8_t>(data[2] % 4), std::string(in.substr(3, 64))};
    std::vector<X509*> chain;
    for (const X509Ptr& c : *certs) chain.push_back(c.get());
    (void)mailseal::tls::CheckDane({t}, chain, {"mx.example"});
  }
  for (const X509Ptr& c : *certs) {
    (void)CrlUrls(c.get());
    (void)OcspUrls(c.get());
    (void)Describe(c.get());
  }
  return 0;
}
