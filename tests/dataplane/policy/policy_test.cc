// Relay control inputs: trusted networks and local domains (open-relay prevention).
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include "dataplane/config/config.h"
#include "dataplane/policy/snapshot.h"

namespace mailseal::policy {
namespace {

sockaddr_storage Addr(const char* ip) {
  sockaddr_storage ss{};
  if (inet_pton(AF_INET, ip, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr) == 1) ss.ss_family = AF_INET;
  else if (inet_pton(AF_INET6, ip, &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr) == 1) ss.ss_family = AF_INET6;
  return ss;
}

TEST(Cidr, ContainsV4V6AndMapped) {
  Cidr c;
  ASSERT_TRUE(ParseCidr("10.1.0.0/16", &c));
  auto in = Addr("10.1.200.3"), out = Addr("10.2.0.1"), mapped = Addr("::ffff:10.1.0.9");
  EXPECT_TRUE(Contains(c, reinterpret_cast<sockaddr*>(&in)));
  EXPECT_FALSE(Contains(c, reinterpret_cast<sockaddr*>(&out)));
  EXPECT_TRUE(Contains(c, reinterpret_cast<sockaddr*>(&mapped)));
  ASSERT_TRUE(ParseCidr("fd00::/8", &c));
  auto v6 = Addr("fd12::1");
  EXPECT_TRUE(Contains(c, reinterpret_cast<sockaddr*>(&v6)));
  ASSERT_TRUE(ParseCidr("192.168.1.7", &c));
  EXPECT_EQ(c.prefix, 32);
  EXPECT_FALSE(ParseCidr("10.0.0.0/40", &c));
  EXPECT_FALSE(ParseCidr("banana", &c));
  ASSERT_TRUE(ParseCidr("10.0.0.0/9", &c));
  auto edge_in = Addr("10.127.255.255"), edge_out = Addr("10.128.0.0");
  EXPECT_TRUE(Contains(c, reinterpret_cast<sockaddr*>(&edge_in)));
  EXPECT_FALSE(Contains(c, reinterpret_cast<sockaddr*>(&edge_out)));
}

TEST(Snapshot, LocalDomainsExactAndSubdomain) {
  Result<v1::Config> cfg = config::ParseConfigText(
      "listen { address: \"127.0.0.1:1\" }\nspool_dir: \"/q\"\ndelivery {}\n"
      "local_domains: \"Agency.TEST\"\nlocal_domains: \".gov.test\"\n", "t");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  auto s = BuildSnapshot(*cfg, 1);
  EXPECT_TRUE(s->IsLocalDomain("agency.test"));
  EXPECT_FALSE(s->IsLocalDomain("sub.agency.test"));
  EXPECT_TRUE(s->IsLocalDomain("dept.gov.test"));
  EXPECT_FALSE(s->IsLocalDomain("gov.test"));
  EXPECT_FALSE(s->IsLocalDomain("evilgov.test"));
}

}  // namespace
}  // namespace mailseal::policy
