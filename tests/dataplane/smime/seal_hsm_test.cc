// Seal and open with the gateway's keys inside a real SoftHSM token: the DSA signs and the DCA
// decrypts through the OpenSSL bridge, so no private key ever exists outside the token
// (issue #4 with issue #3's HSM layer; SEE-2.4b).
#include <openssl/pem.h>

#include <fstream>

#include "dataplane/smime/seal.h"
#include "hsm/csr.h"
#include "hsm/keys.h"
#include "hsm/openssl_bridge.h"
#include "hsm/token_key.h"
#include "tests/hsm/custodians.h"
#include "tests/dataplane/smime/hsm_pki_fixture.h"

namespace mailseal::smime {
namespace {
using testing::SealWithHsmTest;

TEST_F(SealWithHsmTest, TokenKeysSignAndDecrypt) {
  int rc = 0;
  std::string out = Run(StrCat("cd ", dir_, " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt "
                               "-subj /CN=Test-CA -days 30"), &rc);
  ASSERT_EQ(rc, 0) << out;
  ASSERT_TRUE(hsm::GenerateKeyPair(*session_, {hsm::KeyType::kRsa2048, hsm::Purpose::kDsaSign, "dsa"}).ok());
  ASSERT_TRUE(hsm::GenerateKeyPair(*session_, {hsm::KeyType::kRsa2048, hsm::Purpose::kDcaEncrypt, "dca"}).ok());
  auto bridge = hsm::OpenSslBridge::Open(hsm::testing::kSoftHsmModule, hsm::Secret(hsm::testing::kTestUserPin));
  ASSERT_TRUE(bridge.ok()) << bridge.status().ToString();
  EVP_PKEY* dsa = *(*bridge)->LoadPrivateKey(hsm::testing::kTokenLabel, "dsa");
  EVP_PKEY* dca = *(*bridge)->LoadPrivateKey(hsm::testing::kTokenLabel, "dca");
  X509* dsa_cert = IssueFor(dsa, "dsa", hsm::Purpose::kDsaSign);
  X509* dca_cert = IssueFor(dca, "dca", hsm::Purpose::kDcaEncrypt);
  ASSERT_TRUE(dsa_cert && dca_cert);
  const std::string msg = "From: a@agency-a.test\r\nTo: b@agency-a.test\r\nSubject: hsm\r\n\r\nsealed by the token\r\n";
  Result<std::string> sealed = Seal(msg, {dsa_cert, dsa, {}}, {dca_cert});
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  X509_STORE* trust = X509_STORE_new();
  std::string ca = hsm::testing::Slurp(dir_ + "/ca.crt");
  BIO* b = BIO_new_mem_buf(ca.data(), static_cast<int>(ca.size()));
  X509* cax = PEM_read_bio_X509(b, nullptr, nullptr, nullptr);
  BIO_free(b);
  X509_STORE_add_cert(trust, cax);
  Result<Opened> o = Open(*sealed, {dca_cert, dca}, trust);
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(o->message, msg);
  EXPECT_TRUE(o->signed_ok);
  X509_free(cax);
  X509_STORE_free(trust);
  X509_free(dsa_cert);
  X509_free(dca_cert);
  EVP_PKEY_free(dsa);
  EVP_PKEY_free(dca);
}

// The crypto workers' path: keys bound to the worker's own PKCS#11 session (no engine). RSA
// DSA signs, the DCA unwraps PKCS#1 v1.5 and RSA-OAEP/SHA-256 content keys (OAEP padding is
// checked in software around the token's raw RSA), and a P-256 DSA signs with ECDSA.
TEST_F(SealWithHsmTest, SessionBoundKeysSignDecryptOaepAndEcdsa) {
  int rc = 0;
  std::string out = Run(StrCat("cd ", dir_, " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt "
                               "-subj /CN=Test-CA -days 30"), &rc);
  ASSERT_EQ(rc, 0) << out;
  Result<hsm::KeyPair> dsa_k = hsm::GenerateKeyPair(*session_, {hsm::KeyType::kRsa2048, hsm::Purpose::kDsaSign, "dsa"});
  Result<hsm::KeyPair> dca_k =
      hsm::GenerateKeyPair(*session_, {hsm::KeyType::kRsa2048, hsm::Purpose::kDcaEncrypt, "dca"});
  Result<hsm::KeyPair> ec_k = hsm::GenerateKeyPair(*session_, {hsm::KeyType::kEcP256, hsm::Purpose::kDsaSign, "dsa-ec"});
  ASSERT_TRUE(dsa_k.ok() && dca_k.ok() && ec_k.ok());
  Result<EVP_PKEY*> dsa = hsm::TokenPrivateKey(session_.get(), *dsa_k);
  Result<EVP_PKEY*> dca = hsm::TokenPrivateKey(session_.get(), *dca_k);
  Result<EVP_PKEY*> ec = hsm::TokenPrivateKey(session_.get(), *ec_k);
  ASSERT_TRUE(dsa.ok() && dca.ok() && ec.ok()) << dsa.status().ToString() << ec.status().ToString();
  X509* dsa_cert = IssueFor(*dsa, "dsa", hsm::Purpose::kDsaSign);
  X509* dca_cert = IssueFor(*dca, "dca", hsm::Purpose::kDcaEncrypt);
  X509* ec_cert = IssueFor(*ec, "dsa-ec", hsm::Purpose::kDsaSign);
  ASSERT_TRUE(dsa_cert && dca_cert && ec_cert);
  X509_STORE* trust = X509_STORE_new();
  X509_STORE_load_file(trust, (dir_ + "/ca.crt").c_str());
  const std::string msg = "From: a@agency-a.test\r\nTo: b@agency-a.test\r\nSubject: s\r\n\r\nbody\r\n";
  for (KeyTransport kt : {KeyTransport::kRsaPkcs1, KeyTransport::kRsaOaep}) {
    for (auto [cert, key] : {std::pair<X509*, EVP_PKEY*>{dsa_cert, *dsa}, {ec_cert, *ec}}) {
      SealOptions o;
      o.key_transport = kt;
      Result<std::string> sealed = Seal(msg, {cert, key, {}}, {dca_cert}, o);
      ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
      Result<Opened> opened = Open(*sealed, {dca_cert, *dca}, trust);
      ASSERT_TRUE(opened.ok()) << opened.status().ToString();
      EXPECT_EQ(opened->message, msg);
      EXPECT_TRUE(opened->signed_ok);
    }
  }
  X509_STORE_free(trust);
  for (X509* x : {dsa_cert, dca_cert, ec_cert}) X509_free(x);
  for (EVP_PKEY* k : {*dsa, *dca, *ec}) EVP_PKEY_free(k);
}

}  // namespace
}  // namespace mailseal::smime
