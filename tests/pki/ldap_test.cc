// ldap_test.cc — pki::Search and FilterFor against hostile LDAP peers (issue #15: "garbage LDAP
// answers, slow servers: a clear error, bounded memory and time"). The real directory (slapd)
// is in integration.pki_ldap; these are the faults slapd cannot be asked for: a server that
// never answers, one that answers garbage, one announcing a 100 MB entry, one sending entries
// without end.
#include "dataplane/pki/ldap.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

namespace mailseal::pki {
namespace {

// A BindResponse (message 1, success): what every fake answers first.
const std::string kBindOk("\x30\x0c\x02\x01\x01\x61\x07\x0a\x01\x00\x04\x00\x04\x00", 14);
// A SearchResultEntry (message 2) for "cn=x" with no attributes.
const std::string kEntry("\x30\x0d\x02\x01\x02\x64\x08\x04\x04" "cn=x" "\x30\x00", 15);

class FakeLdap {
 public:
  enum Kind { kSilent, kGarbage, kHugeEntry, kEndlessEntries };
  explicit FakeLdap(Kind kind) : kind_(kind) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(fd_, 4);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeLdap() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  std::string Server() const { return "ldap://127.0.0.1:" + std::to_string(port_); }

 private:
  void Serve() {
    int c = ::accept(fd_, nullptr, nullptr);
    if (c < 0) return;
    timeval tv{0, 200000};
    ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[4096];
    (void)::recv(c, buf, sizeof buf, 0);   // the bind request
    if (kind_ == kSilent) {
      while (!stop_) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      ::close(c);
      return;
    }
    if (kind_ == kGarbage) {
      std::string junk = "\x30\x03\x02\x01\x01this is not BER at all";
      (void)::send(c, junk.data(), junk.size(), MSG_NOSIGNAL);
    } else {
      (void)::send(c, kBindOk.data(), kBindOk.size(), MSG_NOSIGNAL);
      (void)::recv(c, buf, sizeof buf, 0);   // the search request
      if (kind_ == kHugeEntry) {
        // An entry announcing 100,000,000 bytes, then zeros for as long as anyone reads.
        std::string head("\x30\x84\x05\xf5\xe1\x00\x02\x01\x02\x64\x84\x05\xf5\xe0\xf7", 15);
        (void)::send(c, head.data(), head.size(), MSG_NOSIGNAL);
        std::string zeros(64 * 1024, '\0');
        for (int i = 0; i < 1600 && !stop_; ++i)
          if (::send(c, zeros.data(), zeros.size(), MSG_NOSIGNAL) <= 0) break;
      } else {
        for (int i = 0; i < 100000 && !stop_; ++i)
          if (::send(c, kEntry.data(), kEntry.size(), MSG_NOSIGNAL) <= 0) break;
      }
    }
    while (!stop_) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ::close(c);
  }
  Kind kind_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

LdapSearch Query(const std::string& server) {
  LdapSearch q;
  q.server = server;
  q.base = "c=NZ";
  q.filter = FilterFor("(mail=domain-confidentiality-authority@%s)", "agency-b.test");
  q.attribute = "userCertificate;binary";
  return q;
}

TEST(LdapFilter, TheDomainIsEscapedNeverSplicedRaw) {
  EXPECT_EQ(FilterFor("(mail=dca@%s)", "agency-b.test"), "(mail=dca@agency-b.test)");
  // A value trying to widen the filter stays one literal value (RFC 4515 §3).
  EXPECT_EQ(FilterFor("(mail=dca@%s)", "x)(objectClass=*"), "(mail=dca@x\\29\\28objectClass=\\2a)");
  EXPECT_EQ(FilterFor("(&(a=%s)(b=%s))", "a\\b"), "(&(a=a\\5cb)(b=a\\5cb))");
  EXPECT_EQ(FilterFor("(a=%s)", std::string("x\0y", 3)), "(a=x\\00y)");
  EXPECT_EQ(FilterFor("(a=%d)", "v"), "(a=%d)");
}

TEST(LdapSearch, NobodyListeningIsAClearErrorAtOnce) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);   // a port nobody listens on
  Result<std::vector<std::string>> r = Search(Query("ldap://127.0.0.1:" + std::to_string(ntohs(a.sin_port))), {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(r.status().message().find("Can't contact LDAP server"), std::string::npos) << r.status().message();
}

TEST(LdapSearch, ASilentServerEndsAtTheDeadline) {
  FakeLdap s(FakeLdap::kSilent);
  LdapLimits l;
  l.total_timeout_ms = 800;
  auto t0 = std::chrono::steady_clock::now();
  Result<std::vector<std::string>> r = Search(Query(s.Server()), l);
  ASSERT_FALSE(r.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5)) << "the deadline holds";
  EXPECT_NE(r.status().message().find(s.Server()), std::string::npos) << "names the server: " << r.status().message();
}

TEST(LdapSearch, GarbageIsAClearError) {
  FakeLdap s(FakeLdap::kGarbage);
  LdapLimits l;
  l.total_timeout_ms = 2000;
  Result<std::vector<std::string>> r = Search(Query(s.Server()), l);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().message();
}

TEST(LdapSearch, AHundredMegabyteEntryIsRefusedAtItsHeader) {
  FakeLdap s(FakeLdap::kHugeEntry);
  LdapLimits l;
  l.max_bytes = 1 << 20;
  l.total_timeout_ms = 5000;
  auto t0 = std::chrono::steady_clock::now();
  Result<std::vector<std::string>> r = Search(Query(s.Server()), l);
  ASSERT_FALSE(r.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(4)) << "refused, not read to the end";
}

TEST(LdapSearch, EntriesWithoutEndStopAtTheBound) {
  FakeLdap s(FakeLdap::kEndlessEntries);
  LdapLimits l;
  l.max_entries = 64;
  l.total_timeout_ms = 5000;
  Result<std::vector<std::string>> r = Search(Query(s.Server()), l);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("more than 64 entries"), std::string::npos) << r.status().message();
}

TEST(FetchLdapUrl, UrlsWithoutServerOrAttributeAreRefused) {
  EXPECT_FALSE(FetchLdapUrl("ldap:///cn=CA,c=NZ?certificateRevocationList;binary", {}).ok());
  EXPECT_FALSE(FetchLdapUrl("ldap://127.0.0.1:1/cn=CA,c=NZ", {}).ok());
  EXPECT_FALSE(FetchLdapUrl("ldap://127.0.0.1:1/cn=CA,c=NZ?x?" "?!1.2.3=critical", {}).ok());
  Result<std::string> r = FetchLdapUrl("not a url", {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mailseal::pki
