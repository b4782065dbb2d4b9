// The CRL cache (dataplane/pki/crl_cache.h), issue #15: what it takes in and what it refuses
// (a replayed older CRL, a CRL of another issuer, one without cRLNumber, garbage), when it
// fetches again (before nextUpdate; backing off after failures), that it survives a restart on
// disk, and that a store it is attached to decides revocation with it. The fetch function is
// replaced by one that serves prepared bodies — the real HTTP path is
// integration.pki_revocation; Fetch is driven against a loopback HTTP peer for the faults
// (a huge body, a slow drip, a 404).
#include "dataplane/pki/crl_cache.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <ctime>
#include <map>

namespace mailseal::pki {
namespace {

struct Ca {
  X509Ptr cert;
  std::shared_ptr<EVP_PKEY> key;
};

Ca MakeCa(const char* cn) {
  std::shared_ptr<EVP_PKEY> key(EVP_EC_gen("P-256"), EVP_PKEY_free);
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -86400);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400 * 30);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn), -1, -1, 0);
  X509_set_issuer_name(x, X509_get_subject_name(x));
  X509_set_pubkey(x, key.get());
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, x, x, nullptr, nullptr, 0);
  for (auto [nid, v] : {std::pair<int, const char*>{NID_basic_constraints, "critical,CA:TRUE"},
                        {NID_key_usage, "critical,keyCertSign,cRLSign"}, {NID_subject_key_identifier, "hash"}}) {
    X509_EXTENSION* e = X509V3_EXT_conf_nid(nullptr, &ctx, nid, v);
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
  }
  X509_sign(x, key.get(), EVP_sha256());
  return {Own(x), key};
}

X509Ptr MakeLeaf(const Ca& ca, long serial, const std::string& url) {
  std::shared_ptr<EVP_PKEY> key(EVP_EC_gen("P-256"), EVP_PKEY_free);
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("dca@agency-b.test"), -1, -1, 0);
  X509_set_issuer_name(x, X509_get_subject_name(ca.cert.get()));
  X509_set_pubkey(x, key.get());
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, ca.cert.get(), x, nullptr, nullptr, 0);
  std::string dp = "URI:" + url;
  for (auto [nid, v] : {std::pair<int, const char*>{NID_key_usage, "critical,keyEncipherment"},
                        {NID_ext_key_usage, "emailProtection"}, {NID_subject_alt_name, "email:dca@agency-b.test"},
                        {NID_subject_key_identifier, "hash"}, {NID_authority_key_identifier, "keyid:always"},
                        {NID_crl_distribution_points, dp.c_str()}}) {
    X509_EXTENSION* e = X509V3_EXT_conf_nid(nullptr, &ctx, nid, v);
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
  }
  X509_sign(x, ca.key.get(), EVP_sha256());
  return Own(x);
}

std::string CrlDer(const Ca& ca, long number, const std::vector<X509*>& revoked, long next_s = 3600) {
  X509_CRL* crl = X509_CRL_new();
  X509_CRL_set_version(crl, 1);
  X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca.cert.get()));
  ASN1_TIME* last = X509_gmtime_adj(nullptr, -60);
  ASN1_TIME* next = X509_gmtime_adj(nullptr, next_s);
  X509_CRL_set1_lastUpdate(crl, last);
  X509_CRL_set1_nextUpdate(crl, next);
  for (X509* r : revoked) {
    X509_REVOKED* rv = X509_REVOKED_new();
    X509_REVOKED_set_serialNumber(rv, X509_get_serialNumber(r));
    X509_REVOKED_set_revocationDate(rv, last);
    X509_CRL_add0_revoked(crl, rv);
  }
  if (number >= 0) {
    ASN1_INTEGER* n = ASN1_INTEGER_new();
    ASN1_INTEGER_set(n, number);
    X509_CRL_add1_ext_i2d(crl, NID_crl_number, n, 0, 0);
    ASN1_INTEGER_free(n);
  }
  X509_CRL_sort(crl);
  X509_CRL_sign(crl, ca.key.get(), EVP_sha256());
  unsigned char* der = nullptr;
  int len = i2d_X509_CRL(crl, &der);
  std::string s(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  X509_CRL_free(crl);
  ASN1_TIME_free(last);
  ASN1_TIME_free(next);
  return s;
}

constexpr const char* kUrl = "http://crl.agency-b.test/ca.crl";

class CrlCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mailseal-crl-XXXXXX";
    dir_ = mkdtemp(tmpl);
    ca_ = MakeCa("Partner CA");
    leaf_ = MakeLeaf(ca_, 77, kUrl);
  }
  void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }
  std::unique_ptr<CrlCache> Open() {
    CrlCache::Options o;
    o.dir = dir_ + "/crls";
    o.fetch = [this](const std::string& url, const FetchLimits&) -> Result<std::string> {
      ++fetches_[url];
      if (serve_.empty()) return UnavailableError(url + ": Connection refused");
      return serve_;
    };
    auto c = CrlCache::Open(std::move(o));
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return std::move(c.value());
  }
  Verdict Check(CrlCache* cache) {
    X509_STORE* store = X509_STORE_new();
    X509_STORE_add_cert(store, ca_.cert.get());
    cache->Attach(store, Revocation::kWhereNamed);
    Request r;
    r.leaf = leaf_.get();
    r.purpose = Purpose::kSmimeEncrypt;
    Outcome o = Validate(store, r);
    X509_STORE_free(store);
    return o.verdict;
  }
  std::string dir_, serve_;
  std::map<std::string, int> fetches_;
  Ca ca_;
  X509Ptr leaf_;
};

TEST_F(CrlCacheTest, UnknownUntilFetchedThenRevokedThenKeptAcrossARestart) {
  auto cache = Open();
  int64_t now = std::time(nullptr);
  EXPECT_EQ(Check(cache.get()), Verdict::kStatusUnknown) << "the first validation only notes the URL";
  ASSERT_EQ(cache->Entries().size(), 1u);
  EXPECT_EQ(cache->RefreshDue(now), 0u) << "the server is down";
  EXPECT_NE(cache->Entries()[0].last_error.find("Connection refused"), std::string::npos);
  EXPECT_EQ(Check(cache.get()), Verdict::kStatusUnknown);
  serve_ = CrlDer(ca_, 5, {leaf_.get()});
  EXPECT_EQ(cache->RefreshDue(now + 1), 0u) << "backing off after a failure";
  EXPECT_EQ(cache->RefreshDue(now + 10), 1u);
  EXPECT_EQ(Check(cache.get()), Verdict::kRevoked);
  cache.reset();
  serve_.clear();
  auto again = Open();
  EXPECT_EQ(Check(again.get()), Verdict::kRevoked) << "read back from disk";
}

TEST_F(CrlCacheTest, RefusesReplayOtherIssuerMissingNumberAndGarbage) {
  auto cache = Open();
  int64_t now = std::time(nullptr);
  Check(cache.get());
  serve_ = CrlDer(ca_, 9, {leaf_.get()}, /*next_s=*/60);
  ASSERT_EQ(cache->RefreshDue(now), 1u);
  EXPECT_EQ(Check(cache.get()), Verdict::kRevoked);
  // Due again in the last tenth of its validity (at most an hour early): not before.
  EXPECT_EQ(cache->RefreshDue(now + 30), 0u);
  serve_ = CrlDer(ca_, 3, {});   // an older list that does not name the leaf
  EXPECT_EQ(cache->RefreshDue(now + 58), 0u);
  EXPECT_NE(cache->Entries()[0].last_error.find("cRLNumber went back"), std::string::npos) << cache->Entries()[0].last_error;
  EXPECT_EQ(Check(cache.get()), Verdict::kRevoked) << "the replay did not un-revoke it";
  Ca other = MakeCa("Someone Else");
  serve_ = CrlDer(other, 50, {});
  EXPECT_EQ(cache->RefreshDue(now + 10000), 0u);
  EXPECT_NE(cache->Entries()[0].last_error.find("another CA"), std::string::npos) << cache->Entries()[0].last_error;
  serve_ = CrlDer(ca_, -1, {});
  EXPECT_EQ(cache->RefreshDue(now + 20000), 0u);
  EXPECT_NE(cache->Entries()[0].last_error.find("cRLNumber"), std::string::npos);
  serve_ = std::string(5000, 'x');
  EXPECT_EQ(cache->RefreshDue(now + 30000), 0u);
  EXPECT_NE(cache->Entries()[0].last_error.find("no CRL could be read"), std::string::npos);
  serve_ = CrlDer(ca_, 10, {});   // a newer list without the leaf: taken
  EXPECT_EQ(cache->RefreshDue(now + 40000), 1u);
  EXPECT_EQ(Check(cache.get()), Verdict::kValid);
}

TEST_F(CrlCacheTest, AtMostKMaxUrlsAreTracked) {
  auto cache = Open();
  X509_NAME* n = X509_get_subject_name(ca_.cert.get());
  for (size_t i = 0; i < CrlCache::kMaxUrls; ++i) EXPECT_TRUE(cache->Note("http://x.test/" + std::to_string(i), n));
  EXPECT_FALSE(cache->Note("http://x.test/one-too-many", n));
  EXPECT_EQ(cache->Entries().size(), CrlCache::kMaxUrls);
}

TEST(CrlUrls, OnlyFetchableUrisFromTheDistributionPoints) {
  Ca ca = MakeCa("CA");
  X509Ptr leaf = MakeLeaf(ca, 1, "http://crl.test/a.crl");
  std::vector<std::string> urls = CrlUrls(leaf.get());
  ASSERT_EQ(urls.size(), 1u);
  EXPECT_EQ(urls[0], "http://crl.test/a.crl");
  EXPECT_TRUE(CrlUrls(MakeLeaf(ca, 2, "file:///etc/passwd").get()).empty()) << "never a local file";
  EXPECT_FALSE(Fetch("file:///etc/passwd", FetchLimits()).ok());
}

}  // namespace
}  // namespace mailseal::pki

namespace mailseal::pki {
namespace {

// A loopback HTTP peer for the faults a real server is not asked for on demand: a body that
// never ends (a "100 MB CRL"), a slow drip, a 404.
class FaultyServer {
 public:
  enum Kind { kHuge, kDrip, kNotFound };
  explicit FaultyServer(Kind kind) : kind_(kind) {
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
  ~FaultyServer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  std::string Url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/ca.crl"; }

 private:
  void Serve() {
    int c = ::accept(fd_, nullptr, nullptr);
    if (c < 0) return;
    char buf[2048];
    (void)::recv(c, buf, sizeof buf, 0);
    // The drip announces a small body, so that only the deadline can end it; the huge body
    // announces 100 MB (refused at once) — the loop below then streams without end anyway.
    std::string head = kind_ == kNotFound ? "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                       : kind_ == kDrip   ? "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
                                          : "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
    (void)::send(c, head.data(), head.size(), MSG_NOSIGNAL);
    std::string chunk(64 * 1024, '\x30');
    for (int i = 0; kind_ != kNotFound && !stop_ && i < 2000; ++i) {
      if (kind_ == kDrip) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        if (::send(c, "0", 1, MSG_NOSIGNAL) != 1) break;
      } else if (::send(c, chunk.data(), chunk.size(), MSG_NOSIGNAL) <= 0) {
        break;
      }
    }
    ::close(c);
  }
  Kind kind_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

TEST(Fetch, AHugeBodyASlowDripAndA404AreClearErrorsWithinBounds) {
  FetchLimits limits;
  limits.max_bytes = 1 << 20;
  limits.total_timeout_ms = 1500;
  {
    FaultyServer s(FaultyServer::kHuge);
    Result<std::string> r = Fetch(s.Url(), limits);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
    EXPECT_NE(r.status().message().find("larger than 1048576 bytes"), std::string::npos) << r.status().message();
  }
  {
    FaultyServer s(FaultyServer::kDrip);
    auto t0 = std::chrono::steady_clock::now();
    Result<std::string> r = Fetch(s.Url(), limits);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10)) << "the deadline holds";
  }
  {
    FaultyServer s(FaultyServer::kNotFound);
    Result<std::string> r = Fetch(s.Url(), limits);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("HTTP 404"), std::string::npos) << r.status().message();
  }
}

}  // namespace
}  // namespace mailseal::pki
