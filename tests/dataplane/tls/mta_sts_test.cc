// mta_sts_test.cc — RFC 8461 policy parsing, MX patterns, TXT ids and the cache's rules
// (tls/mta_sts.h). The HTTPS fetch and delivery: integration.delivery_tls_mta_sts.
#include "dataplane/tls/mta_sts.h"

#include <gtest/gtest.h>

namespace mailseal::tls {
namespace {

TEST(MtaSts, PoliciesParseStrictly) {
  Result<StsPolicy> p = ParseStsPolicy("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
                                       "max_age: 604800\r\nextension: ignored\r\n");
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->mode, StsPolicy::Mode::kEnforce);
  EXPECT_EQ(p->mx, (std::vector<std::string>{"mail.example.com", "*.example.net"}));
  EXPECT_EQ(p->max_age_s, 604800);
  EXPECT_FALSE(ParseStsPolicy("version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n").ok()) << "unknown version";
  EXPECT_FALSE(ParseStsPolicy("version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1\n").ok()) << "unknown mode";
  EXPECT_FALSE(ParseStsPolicy("version: STSv1\nmode: enforce\nmax_age: 1\n").ok()) << "enforce without mx";
  EXPECT_FALSE(ParseStsPolicy("version: STSv1\nmode: enforce\nmx: a.b\n").ok()) << "no max_age";
  EXPECT_FALSE(ParseStsPolicy("version: STSv1\nmode: enforce\nmx: not a host\nmax_age: 1\n").ok());
  EXPECT_FALSE(ParseStsPolicy("<html>garbage</html>").ok());
  EXPECT_FALSE(ParseStsPolicy(std::string(70000, 'x')).ok()) << "bounded";
  Result<StsPolicy> big = ParseStsPolicy("version: STSv1\nmode: testing\nmx: a.b\nmax_age: 9999999999\n");
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->max_age_s, 31557600) << "max_age is capped at a year (RFC 8461 §3.2)";
}

TEST(MtaSts, WildcardsStandForExactlyOneLabel) {
  EXPECT_TRUE(StsMxMatches("mail.example.com", "MAIL.example.com."));
  EXPECT_TRUE(StsMxMatches("*.example.net", "mx1.example.net"));
  EXPECT_FALSE(StsMxMatches("*.example.net", "a.b.example.net"));
  EXPECT_FALSE(StsMxMatches("*.example.net", "example.net"));
  EXPECT_FALSE(StsMxMatches("mail.example.com", "evilmail.example.com"));
}

TEST(MtaSts, TxtRecordsAreRecognisedOnlyWhenWellFormed) {
  EXPECT_EQ(StsTxtId("v=STSv1; id=20160831085700Z"), "20160831085700Z");
  EXPECT_EQ(StsTxtId("v=STSv1;id=abc;"), "abc");
  EXPECT_EQ(StsTxtId("v=spf1 -all"), "");
  EXPECT_EQ(StsTxtId("v=STSv1; id=bad!id"), "");
}

TEST(MtaSts, ACachedPolicyOutlivesAMissingRecordAndANewIdFetchesAgain) {
  int fetches = 0;
  std::string id = "1", body = "version: STSv1\nmode: enforce\nmx: mx.cache.test\nmax_age: 100\n";
  bool txt_fails = false;
  auto txt = [&](const std::string&) -> Result<std::vector<std::string>> {
    if (txt_fails) return UnavailableError("lookup failed");
    return std::vector<std::string>{"v=STSv1; id=" + id};
  };
  auto fetch = [&](const std::string& url) -> Result<std::string> {
    ++fetches;
    EXPECT_EQ(url, "https://mta-sts.cache.test/.well-known/mta-sts.txt");
    return body;
  };
  ASSERT_TRUE(StsPolicyFor("cache.test", txt, fetch, 1000).ok());
  ASSERT_TRUE(StsPolicyFor("cache.test", txt, fetch, 1050).ok());
  EXPECT_EQ(fetches, 1) << "same id, unexpired: from the cache";
  txt_fails = true;
  Result<StsPolicy> kept = StsPolicyFor("cache.test", txt, fetch, 1060);
  ASSERT_TRUE(kept.ok()) << "a failed TXT lookup keeps the cached policy until max_age";
  EXPECT_EQ(kept->mode, StsPolicy::Mode::kEnforce);
  EXPECT_FALSE(StsPolicyFor("cache.test", txt, fetch, 1200).ok()) << "expired and no record: none";
  txt_fails = false;
  id = "2";
  ASSERT_TRUE(StsPolicyFor("cache.test", txt, fetch, 1300).ok());
  EXPECT_EQ(fetches, 2) << "a new id fetches again";
}

}  // namespace
}  // namespace mailseal::tls
