// Issue #12 item 3 (Bleichenbacher class): a damaged encrypted key in a RecipientInfo is bad
// input from outside, never a token fault. With the DCA key inside a real SoftHSM token, every
// kind of damage — wrong PKCS#1 block type, no separator, a short padding string, a valid
// block with a key of the wrong length or the wrong key, random bytes, a value above the
// modulus, a ciphertext of the wrong length — is held once with the same reason, the token
// refuses no operation (so nothing is deferred and retried), and nothing tells the kinds apart.
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "dataplane/mime/canonical.h"
#include "dataplane/smime/gateway.h"
#include "hsm/keys.h"
#include "hsm/token_key.h"
#include "tests/dataplane/smime/hsm_pki_fixture.h"

namespace mailseal::smime {
namespace {
using testing::SealWithHsmTest;

std::string Base64Decode(const std::string& text) {
  std::string clean;
  for (char c : text)
    if (c != '\r' && c != '\n') clean += c;
  std::string out(clean.size(), '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(clean.data()),
                          static_cast<int>(clean.size()));
  size_t pad = clean.size() >= 2 ? (clean[clean.size() - 1] == '=') + (clean[clean.size() - 2] == '=') : 0;
  out.resize(static_cast<size_t>(std::max(0, n)) - pad);
  return out;
}

class DamagedKeyTest : public SealWithHsmTest {
 protected:
  void SetUp() override {
    SealWithHsmTest::SetUp();
    int rc = 0;
    std::string out = Run(StrCat("cd ", dir_, " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt "
                                 "-subj /CN=Test-CA -days 30"), &rc);
    ASSERT_EQ(rc, 0) << out;
    Result<hsm::KeyPair> dsa_k = hsm::GenerateKeyPair(*session_, {hsm::KeyType::kRsa2048, hsm::Purpose::kDsaSign, "dsa"});
    Result<hsm::KeyPair> dca_k = hsm::GenerateKeyPair(*session_, {hsm::KeyType::kRsa2048, hsm::Purpose::kDcaEncrypt, "dca"});
    ASSERT_TRUE(dsa_k.ok() && dca_k.ok());
    dsa_ = *hsm::TokenPrivateKey(session_.get(), *dsa_k);
    dca_ = *hsm::TokenPrivateKey(session_.get(), *dca_k);
    dsa_cert_ = IssueFor(dsa_, "dsa", hsm::Purpose::kDsaSign);
    dca_cert_ = IssueFor(dca_, "dca", hsm::Purpose::kDcaEncrypt);
    ASSERT_TRUE(dsa_cert_ && dca_cert_);
  }
  void TearDown() override {
    X509_free(dsa_cert_);
    X509_free(dca_cert_);
    EVP_PKEY_free(dsa_);
    EVP_PKEY_free(dca_);
    SealWithHsmTest::TearDown();
  }
  // Raw: m^e mod n with the DCA's public key (what a sender — or an attacker — computes).
  std::string Raw(const std::string& block) {
    EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(X509_get0_pubkey(dca_cert_), nullptr);
    std::string out(256, '\0');
    size_t len = out.size();
    EXPECT_EQ(EVP_PKEY_encrypt_init(ctx), 1);
    EXPECT_EQ(EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_NO_PADDING), 1);
    EXPECT_EQ(EVP_PKEY_encrypt(ctx, reinterpret_cast<unsigned char*>(out.data()), &len,
                               reinterpret_cast<const unsigned char*>(block.data()), block.size()),
              1);
    EVP_PKEY_CTX_free(ctx);
    EXPECT_EQ(len, 256u);
    return out;
  }
  static std::string NonZero(size_t n) {
    std::string s(n, '\0');
    RAND_bytes(reinterpret_cast<unsigned char*>(s.data()), static_cast<int>(n));
    for (char& c : s)
      if (c == 0) c = 0x5a;
    return s;
  }
  // Pkcs1: a well-formed RSAES-PKCS1-v1_5 block carrying `key`.
  static std::string Pkcs1(const std::string& key) {
    return std::string("\x00\x02", 2) + NonZero(256 - 3 - key.size()) + std::string(1, '\0') + key;
  }
  EVP_PKEY *dsa_ = nullptr, *dca_ = nullptr;
  X509 *dsa_cert_ = nullptr, *dca_cert_ = nullptr;
};

TEST_F(DamagedKeyTest, EveryKindOfDamageIsHeldOnceTheSameWayAndTheTokenSeesNoFailure) {
  const std::string msg = "From: a@agency-a.test\r\nTo: b@agency-a.test\r\nSubject: s\r\n\r\nthe content\r\n";
  SealOptions so;
  so.cipher = ContentCipher::kAes256Cbc;
  so.key_transport = KeyTransport::kRsaPkcs1;
  Result<std::string> sealed = Seal(msg, {dsa_cert_, dsa_, {}}, {dca_cert_}, so);
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  size_t body_at = sealed->find("\r\n\r\n") + 4;
  std::string head = sealed->substr(0, body_at);
  std::string der = Base64Decode(sealed->substr(body_at));
  // The encryptedKey: the RecipientInfo's OCTET STRING of the modulus' length (256 bytes).
  size_t ek = der.find(std::string("\x04\x82\x01\x00", 4));
  ASSERT_NE(ek, std::string::npos);
  ek += 4;
  auto with_key = [&](const std::string& c) {
    std::string d = der;
    d.replace(ek, 256, c);
    std::string out = head;
    mime::AppendBase64Lines(&out, d);
    return out;
  };
  // Sanity: unchanged, the token opens it.
  Result<std::unique_ptr<CertStore>> store = CertStore::Open(dir_ + "/store", dir_ + "/ca.crt", {});
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  GatewayPolicy policy;
  policy.local_domains = {"agency-a.test"};
  policy.authserv_id = "gw-a.test";
  Gateway gw(&policy, store->get());
  GatewayKeys keys{RefUp(dsa_cert_), RefUp(dca_cert_), {}, dsa_, dca_, {}, {}};
  std::vector<Output> good = gw.Process("a@agency-a.test", {"b@agency-a.test"}, with_key(der.substr(ek, 256)), keys);
  ASSERT_EQ(good[0].action, Action::kDeliver) << good[0].reason;
  ASSERT_NE(good[0].body.find("the content"), std::string::npos);

  std::string random(256, '\0');
  RAND_bytes(reinterpret_cast<unsigned char*>(random.data()), 256);
  const std::pair<const char*, std::string> kDamage[] = {
      {"block type 1", Raw(std::string("\x00\x01", 2) + std::string(221, '\xff') + std::string(1, '\0') + NonZero(32))},
      {"no separator", Raw(std::string("\x00\x02", 2) + NonZero(254))},
      {"padding string under 8 bytes", Raw(std::string("\x00\x02", 2) + NonZero(5) + std::string(1, '\0') + NonZero(248))},
      {"valid block, 16-byte key", Raw(Pkcs1(NonZero(16)))},
      {"valid block, wrong 32-byte key", Raw(Pkcs1(NonZero(32)))},
      {"random bytes", random},
      {"above the modulus", std::string(256, '\xff')},
  };
  std::string first_reason;
  uint64_t failures = hsm::TokenFailuresOnThisThread();
  for (const auto& [kind, c] : kDamage) {
    std::vector<Output> outs = gw.Process("a@agency-a.test", {"b@agency-a.test"}, with_key(c), keys);
    ASSERT_EQ(outs.size(), 1u) << kind;
    EXPECT_EQ(outs[0].action, Action::kHold) << kind << ": held, never deferred and retried: " << outs[0].reason;
    if (first_reason.empty()) first_reason = outs[0].reason;
    EXPECT_EQ(outs[0].reason, first_reason) << kind << ": the same words for every kind of damage";
    EXPECT_EQ(hsm::TokenFailuresOnThisThread(), failures) << kind << ": the token refused nothing";
  }
  EXPECT_NE(first_reason.find("cannot be decrypted for our domain"), std::string::npos) << first_reason;
  // The same damaged message opens the same way every time (implicit rejection is deterministic).
  std::vector<Output> again = gw.Process("a@agency-a.test", {"b@agency-a.test"}, with_key(random), keys);
  EXPECT_EQ(again[0].reason, first_reason);
}

TEST_F(DamagedKeyTest, CiphertextsOfTheWrongLengthNeverReachTheToken) {
  uint64_t failures = hsm::TokenFailuresOnThisThread();
  for (size_t len : {size_t{255}, size_t{257}, size_t{128}, size_t{0}}) {
    std::string c = NonZero(len);
    EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(dca_, nullptr);
    ASSERT_EQ(EVP_PKEY_decrypt_init(ctx), 1);
    ASSERT_EQ(EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING), 1);
    unsigned char out[512];
    size_t outlen = sizeof out;
    int rc = EVP_PKEY_decrypt(ctx, out, &outlen, reinterpret_cast<const unsigned char*>(c.data()), c.size());
    EVP_PKEY_CTX_free(ctx);
    if (rc == 1) {
      EXPECT_EQ(outlen, 32u) << len << ": the synthetic key, like any other damage";
    }
    EXPECT_EQ(hsm::TokenFailuresOnThisThread(), failures) << len;
  }
}

}  // namespace
}  // namespace mailseal::smime
