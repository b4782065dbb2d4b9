// Issue #13 item 5: per-client connection limits (io::ClientLimiter) — concurrency, rate per
// minute, release, IPv6 counted by /64, and a table that never grows past its bound.
#include "dataplane/io/client_limiter.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

namespace mailseal::io {
namespace {

TEST(ClientLimiter, ConcurrencyAndRateArePerClient) {
  ClientLimiter l;
  std::string why;
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(l.Admit("192.0.2.1", 3, 100, 1000, &why));
  EXPECT_FALSE(l.Admit("192.0.2.1", 3, 100, 1000, &why));
  EXPECT_NE(why.find("3 at once"), std::string::npos) << why;
  EXPECT_TRUE(l.Admit("192.0.2.2", 3, 100, 1000, &why)) << "another client is not affected";
  l.Release("192.0.2.1");
  EXPECT_TRUE(l.Admit("192.0.2.1", 3, 100, 1000, &why)) << "a closed connection frees its place";
  // Rate: 5 a minute, whatever is open.
  ClientLimiter r;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(r.Admit("198.51.100.9", 100, 5, 1000 + i, &why));
    r.Release("198.51.100.9");
  }
  EXPECT_FALSE(r.Admit("198.51.100.9", 100, 5, 2000, &why));
  EXPECT_NE(why.find("5 a minute"), std::string::npos) << why;
  EXPECT_TRUE(r.Admit("198.51.100.9", 100, 5, 1000 + 60000, &why)) << "a new minute";
}

TEST(ClientLimiter, Ipv6CountsByPrefixAndMappedV4ByAddress) {
  sockaddr_in6 a{}, b{};
  a.sin6_family = b.sin6_family = AF_INET6;
  inet_pton(AF_INET6, "2001:db8:1:2::1", &a.sin6_addr);
  inet_pton(AF_INET6, "2001:db8:1:2:ffff::7", &b.sin6_addr);
  EXPECT_EQ(ClientLimiter::ClientKey(reinterpret_cast<sockaddr*>(&a)), "2001:db8:1:2::/64");
  EXPECT_EQ(ClientLimiter::ClientKey(reinterpret_cast<sockaddr*>(&a)),
            ClientLimiter::ClientKey(reinterpret_cast<sockaddr*>(&b)))
      << "rotating through a /64 does not escape the limit";
  inet_pton(AF_INET6, "::ffff:192.0.2.5", &a.sin6_addr);
  EXPECT_EQ(ClientLimiter::ClientKey(reinterpret_cast<sockaddr*>(&a)), "192.0.2.5");
}

TEST(ClientLimiter, TheTableIsBounded) {
  ClientLimiter l(100);
  std::string why;
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(l.Admit("10.0.0." + std::to_string(i), 5, 5, 0, &why));
  EXPECT_FALSE(l.Admit("10.0.1.1", 5, 5, 0, &why)) << "full of active clients: a new one is refused";
  for (int i = 0; i < 100; ++i) l.Release("10.0.0." + std::to_string(i));
  EXPECT_TRUE(l.Admit("10.0.1.1", 5, 5, 61000, &why)) << "idle entries make room";
  EXPECT_LE(l.clients(), 100u);
}

}  // namespace
}  // namespace mailseal::io
