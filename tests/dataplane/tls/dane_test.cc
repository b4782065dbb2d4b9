// dane_test.cc — RFC 7672 record matching (tls/dane.h): which records are usable for SMTP, and
// DANE-EE matching by certificate and by key, full and hashed, against the certificate a peer
// would send. DANE-TA with a real chain and Postfix: integration.delivery_tls_dane.
#include "dataplane/tls/dane.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "tests/common/self_signed.h"

namespace mailseal::tls {
namespace {

X509* Load(const std::string& name) {
  char tmpl[] = "/tmp/dane-test-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  std::string cert = dir + "/c.pem", key = dir + "/k.pem";
  test_support::WriteSelfSigned(cert, key, name);
  FILE* f = std::fopen(cert.c_str(), "r");
  X509* x = PEM_read_X509(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  unlink(cert.c_str());
  unlink(key.c_str());
  rmdir(dir.c_str());
  return x;
}

std::string Der(X509* x, bool spki) {
  unsigned char* p = nullptr;
  int n = spki ? i2d_PUBKEY(X509_get0_pubkey(x), &p) : i2d_X509(x, &p);
  std::string s(reinterpret_cast<char*>(p), static_cast<size_t>(n));
  OPENSSL_free(p);
  return s;
}

std::string Sha(const std::string& d, const EVP_MD* md) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(d.data(), d.size(), out, &n, md, nullptr);
  return std::string(reinterpret_cast<char*>(out), n);
}

TEST(Dane, OnlyDaneTaAndDaneEeRecordsAreUsableForSmtp) {
  EXPECT_TRUE(Usable({3, 1, 1, "x"}));
  EXPECT_TRUE(Usable({2, 0, 2, "x"}));
  EXPECT_FALSE(Usable({0, 0, 1, "x"})) << "PKIX-TA is unusable for SMTP (RFC 7672 §3.1.3)";
  EXPECT_FALSE(Usable({1, 1, 1, "x"})) << "PKIX-EE is unusable for SMTP";
  EXPECT_FALSE(Usable({3, 2, 1, "x"})) << "unknown selector";
  EXPECT_FALSE(Usable({3, 1, 3, "x"})) << "unknown matching type";
  EXPECT_FALSE(Usable({3, 1, 1, ""}));
}

TEST(Dane, DaneEeMatchesTheLeafByCertificateOrKeyFullOrHashed) {
  X509* leaf = Load("mx.example");
  X509* other = Load("mx.example");   // same name, another key: a man in the middle
  std::vector<X509*> chain = {leaf};
  for (Tlsa r : {Tlsa{3, 0, 0, Der(leaf, false)}, Tlsa{3, 1, 0, Der(leaf, true)},
                 Tlsa{3, 0, 1, Sha(Der(leaf, false), EVP_sha256())}, Tlsa{3, 1, 1, Sha(Der(leaf, true), EVP_sha256())},
                 Tlsa{3, 1, 2, Sha(Der(leaf, true), EVP_sha512())}}) {
    DaneCheck ok = CheckDane({r}, chain, {"mx.example"});
    EXPECT_TRUE(ok.ok) << int{r.selector} << " " << int{r.matching} << ": " << ok.reason;
    DaneCheck bad = CheckDane({r}, {other}, {"mx.example"});
    EXPECT_FALSE(bad.ok) << "another key with the same name does not match";
  }
  // DANE-EE ignores names: the record is the authentication (RFC 7672 §3.1.1).
  EXPECT_TRUE(CheckDane({{3, 1, 1, Sha(Der(leaf, true), EVP_sha256())}}, chain, {"elsewhere.example"}).ok);
  // Unusable records never authenticate, even when they match.
  EXPECT_FALSE(CheckDane({{1, 1, 1, Sha(Der(leaf, true), EVP_sha256())}}, chain, {"mx.example"}).ok);
  EXPECT_FALSE(CheckDane({{3, 1, 1, "x"}}, {}, {"mx.example"}).ok) << "no certificate sent";
  X509_free(leaf);
  X509_free(other);
}

}  // namespace
}  // namespace mailseal::tls
