// RFC 3183 / SEE-2.6 name mapping rule.
#include "dataplane/smime/naming.h"

#include <gtest/gtest.h>

namespace mailseal::smime {
namespace {

TEST(Naming, SenderDomainEqualOrDescendant) {
  std::vector<std::string> san = {"domain-signing-authority@agency-a.test", "Domain-Signing-Authority@Other.TEST"};
  EXPECT_TRUE(CheckDomainSigner(san, "alice@agency-a.test").ok);
  NamingVerdict sub = CheckDomainSigner(san, "bob@hr.Agency-A.test");
  EXPECT_TRUE(sub.ok);
  EXPECT_EQ(sub.matched_domain, "agency-a.test");
  EXPECT_TRUE(CheckDomainSigner(san, "carol@other.test").ok) << "every rfc822Name is honoured";
  NamingVerdict evil = CheckDomainSigner(san, "mallory@evilagency-a.test");
  EXPECT_FALSE(evil.ok);
  EXPECT_EQ(evil.reason, "sender domain evilagency-a.test is not covered by the signing certificate (agency-a.test, other.test)");
  EXPECT_FALSE(CheckDomainSigner(san, "x@test").ok) << "a parent domain is not covered";
}

TEST(Naming, OnlyAuthorityNamesCount) {
  NamingVerdict user = CheckDomainSigner({"alice@agency-a.test"}, "alice@agency-a.test");
  EXPECT_FALSE(user.ok);
  EXPECT_EQ(user.reason, "the signing certificate names no domain-signing-authority");
  EXPECT_FALSE(CheckDomainSigner({"domain-confidentiality-authority@agency-a.test"}, "a@agency-a.test").ok)
      << "an encryption authority does not sign";
  EXPECT_TRUE(CheckDomainSigner({"domain-confidentiality-authority@agency-a.test"}, "a@agency-a.test",
                                "domain-confidentiality-authority").ok);
  EXPECT_FALSE(CheckDomainSigner({"domain-signing-authority@agency-a.test"}, "no-domain").ok);
}

}  // namespace
}  // namespace mailseal::smime
