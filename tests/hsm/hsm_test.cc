// HSM layer against a real SoftHSM 2 token (issue #3; REQUIREMENTS.md §6 SEE-2.4b: private keys
// never leave the HSM in clear).
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <sys/stat.h>

#include <atomic>
#include <fstream>
#include <thread>
#include <vector>

#include "hsm/csr.h"
#include "hsm/keys.h"
#include "hsm/openssl_bridge.h"
#include "hsm/token_key.h"
#include "hsm/token_manager.h"
#include "tests/hsm/softhsm_fixture.h"

namespace mailseal::hsm {
namespace {
using testing::SoftHsmTest;

bool Verify(EVP_PKEY* pub, SignMechanism m, const std::string& data, const std::string& sig) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_PKEY_CTX* pctx = nullptr;
  bool sha384 = m == SignMechanism::kRsaPkcs1Sha384 || m == SignMechanism::kEcdsaSha384;
  bool ok = EVP_DigestVerifyInit(ctx, &pctx, sha384 ? EVP_sha384() : EVP_sha256(), nullptr, pub) == 1;
  if (ok && m == SignMechanism::kRsaPssSha256) {
    ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
         EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, 32) == 1;
  }
  ok = ok && EVP_DigestVerify(ctx, reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                              reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1;
  EVP_MD_CTX_free(ctx);
  return ok;
}

TEST_F(SoftHsmTest, GeneratedPrivateKeysAreSensitiveAndNeverExtractable) {
  Result<KeyPair> rsa = GenerateKeyPair(*session_, {KeyType::kRsa2048, Purpose::kDsaSign, "dsa-sign"});
  ASSERT_TRUE(rsa.ok()) << rsa.status().ToString();
  Result<KeyPair> ec = GenerateKeyPair(*session_, {KeyType::kEcP256, Purpose::kAudit, "audit"});
  ASSERT_TRUE(ec.ok()) << ec.status().ToString();
  for (const KeyPair& k : {*rsa, *ec}) {
    EXPECT_TRUE(*BoolAttribute(*session_, k.priv, CKA_SENSITIVE));
    EXPECT_TRUE(*BoolAttribute(*session_, k.priv, CKA_ALWAYS_SENSITIVE));
    EXPECT_FALSE(*BoolAttribute(*session_, k.priv, CKA_EXTRACTABLE));
    EXPECT_TRUE(*BoolAttribute(*session_, k.priv, CKA_NEVER_EXTRACTABLE));
    EXPECT_TRUE(*BoolAttribute(*session_, k.priv, CKA_PRIVATE));
    EXPECT_TRUE(*BoolAttribute(*session_, k.priv, CKA_LOCAL)) << "generated on the token";
    EXPECT_EQ(k.id.size(), 9u);
    EXPECT_EQ(*Attribute(*session_, k.pub, CKA_ID), std::string(k.id.begin(), k.id.end())) << "pair shares CKA_ID";
  }
  EXPECT_EQ(rsa->id[0], static_cast<uint8_t>(Purpose::kDsaSign));
  // Purpose limits use: a signing key cannot decrypt.
  EXPECT_FALSE(*BoolAttribute(*session_, rsa->priv, CKA_DECRYPT));
  // Asking for the secret fails with the PKCS#11 reason in the message.
  Result<std::string> d = Attribute(*session_, rsa->priv, CKA_PRIVATE_EXPONENT);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(d.status().message(), "C_GetAttributeValue failed: CKR_ATTRIBUTE_SENSITIVE");
  EXPECT_FALSE(Attribute(*session_, ec->priv, CKA_VALUE).ok());
}

TEST_F(SoftHsmTest, Pkcs11ToolSeesTheAttributesAndCannotExtract) {
  ASSERT_TRUE(GenerateKeyPair(*session_, {KeyType::kRsa2048, Purpose::kDsaSign, "dsa-sign"}).ok());
  ASSERT_TRUE(GenerateKeyPair(*session_, {KeyType::kEcP384, Purpose::kDcaEncrypt, "dca-ec"}).ok());
  std::string base = StrCat("pkcs11-tool --module ", testing::kSoftHsmModule, " --token-label ", testing::kTokenLabel,
                            " --login --pin ", testing::kTestUserPin);
  int rc = 0;
  std::string list = Run(base + " --list-objects --type privkey", &rc);
  ASSERT_EQ(rc, 0) << list;
  EXPECT_NE(list.find("label:      dsa-sign"), std::string::npos) << list;
  EXPECT_NE(list.find("label:      dca-ec"), std::string::npos) << list;
  size_t access = 0, pos = 0;
  while ((pos = list.find("Access:     sensitive, always sensitive, never extractable, local", pos)) != std::string::npos) {
    ++access;
    ++pos;
  }
  EXPECT_EQ(access, 2u) << list;
  // pkcs11-tool's own extraction attempt gets nothing (it reads CKA_VALUE-style attributes,
  // which the token refuses for sensitive keys).
  std::string out = Run(base + " --read-object --type privkey --label dsa-sign -o " + dir_ + "/stolen.der", &rc);
  struct stat st {};
  EXPECT_TRUE(stat((dir_ + "/stolen.der").c_str(), &st) != 0 || st.st_size == 0) << out;
  // Nor does asking the token for the private exponent through pkcs11-tool's attribute dump.
  out = Run(base + " --list-objects --type privkey --label dsa-sign --verbose", &rc);
  EXPECT_EQ(out.find("privateExponent"), std::string::npos) << out;
}

TEST_F(SoftHsmTest, SignaturesVerifyWithOpenSsl) {
  struct Case {
    KeyType type;
    SignMechanism mech;
  } cases[] = {{KeyType::kRsa2048, SignMechanism::kRsaPkcs1Sha256}, {KeyType::kRsa2048, SignMechanism::kRsaPssSha256},
               {KeyType::kRsa3072, SignMechanism::kRsaPkcs1Sha384}, {KeyType::kEcP256, SignMechanism::kEcdsaSha256},
               {KeyType::kEcP384, SignMechanism::kEcdsaSha384}};
  int i = 0;
  for (const Case& c : cases) {
    Result<KeyPair> k = GenerateKeyPair(*session_, {c.type, Purpose::kDsaSign, "k" + std::to_string(i++)});
    ASSERT_TRUE(k.ok()) << k.status().ToString();
    Result<EVP_PKEY*> pub = PublicKey(*session_, k->pub);
    ASSERT_TRUE(pub.ok()) << pub.status().ToString();
    std::string data = "mail to sign " + std::to_string(i);
    Result<std::string> sig = Sign(*session_, k->priv, c.mech, data);
    ASSERT_TRUE(sig.ok()) << sig.status().ToString();
    EXPECT_TRUE(Verify(*pub, c.mech, data, *sig)) << KeyTypeName(c.type);
    EXPECT_FALSE(Verify(*pub, c.mech, data + "x", *sig)) << "a changed message must not verify";
    EVP_PKEY_free(*pub);
  }
}

TEST_F(SoftHsmTest, DecryptOaepAndPkcs1ForLegacyMail) {
  Result<KeyPair> k = GenerateKeyPair(*session_, {KeyType::kRsa2048, Purpose::kDcaEncrypt, "dca"});
  ASSERT_TRUE(k.ok());
  Result<EVP_PKEY*> pub = PublicKey(*session_, k->pub);
  ASSERT_TRUE(pub.ok());
  for (DecryptMechanism m : {DecryptMechanism::kRsaOaepSha256, DecryptMechanism::kRsaOaepSha1, DecryptMechanism::kRsaPkcs1}) {
    std::string cek(32, '\x5a');
    EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(*pub, nullptr);
    ASSERT_EQ(EVP_PKEY_encrypt_init(ctx), 1);
    if (m == DecryptMechanism::kRsaPkcs1) {
      EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING);
    } else {
      EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING);
      const EVP_MD* md = m == DecryptMechanism::kRsaOaepSha1 ? EVP_sha1() : EVP_sha256();
      EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md);
      EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md);
    }
    size_t len = 0;
    ASSERT_EQ(EVP_PKEY_encrypt(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(cek.data()), cek.size()), 1);
    std::string ct(len, '\0');
    ASSERT_EQ(EVP_PKEY_encrypt(ctx, reinterpret_cast<unsigned char*>(ct.data()), &len,
                               reinterpret_cast<const unsigned char*>(cek.data()), cek.size()), 1);
    EVP_PKEY_CTX_free(ctx);
    ct.resize(len);
    Result<std::string> pt = Decrypt(*session_, k->priv, m, ct);
    if (m == DecryptMechanism::kRsaOaepSha256 && !pt.ok()) {
      // SoftHSM 2.6 limitation (keys.h): a clear, typed refusal the caller can fall back on.
      EXPECT_EQ(pt.status().code(), StatusCode::kInvalidArgument);
      EXPECT_EQ(pt.status().message(), "C_Decrypt(CKM_RSA_PKCS_OAEP) init failed: CKR_ARGUMENTS_BAD");
      continue;
    }
    ASSERT_TRUE(pt.ok()) << pt.status().ToString();
    EXPECT_EQ(*pt, cek);
    ct[10] ^= 1;
    EXPECT_FALSE(Decrypt(*session_, k->priv, m, ct).ok()) << "tampered ciphertext";
  }
  EVP_PKEY_free(*pub);
}

TEST_F(SoftHsmTest, ErrorsNameTheCallAndTheCode) {
  Result<std::unique_ptr<Session>> s = Session::Open(module_.get(), slot_);
  ASSERT_TRUE(s.ok());
  session_.reset();  // log everyone out: the token's login state is shared by our sessions
  (*s)->fn()->C_Logout((*s)->handle());
  Status st = (*s)->Login(Secret("wrong-pin"));
  EXPECT_EQ(st.code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(st.message(), "C_Login(CKU_USER) failed: CKR_PIN_INCORRECT");
  Result<CK_SLOT_ID> none = module_->FindToken("no-such-token");
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
  EXPECT_NE(none.status().message().find("no-such-token"), std::string::npos);
  EXPECT_EQ(Module::Load("/nonexistent/module.so").status().code(), StatusCode::kFailedPrecondition);
  Status again = module_->InitializeToken(slot_, testing::kTokenLabel, Secret(testing::kTestSoPin), Secret("x"));
  EXPECT_EQ(again.code(), StatusCode::kFailedPrecondition) << "an initialised token is never wiped by accident";
}

TEST_F(SoftHsmTest, DuplicateLabelIsRefused) {
  ASSERT_TRUE(GenerateKeyPair(*session_, {KeyType::kEcP256, Purpose::kDsaSign, "same"}).ok());
  Result<KeyPair> again = GenerateKeyPair(*session_, {KeyType::kEcP256, Purpose::kDsaSign, "same"});
  EXPECT_EQ(again.status().code(), StatusCode::kAlreadyExists);
  Result<KeyPair> found = FindKeyPair(*session_, "same");
  ASSERT_TRUE(found.ok());
  EXPECT_EQ(found->purpose, Purpose::kDsaSign);
}

TEST_F(SoftHsmTest, OnlyBackupWrappableKeysLeaveWrappedAndComeBackWorking) {
  // CKA_TRUSTED needs the SO: a user session is refused.
  Result<CK_OBJECT_HANDLE> trusted = GenerateAesKey(*session_, "trusted-kek", Purpose::kBackup, 256, /*trusted=*/true);
  EXPECT_EQ(trusted.status().code(), StatusCode::kPermissionDenied) << trusted.status().ToString();
  Result<CK_OBJECT_HANDLE> kek = GenerateAesKey(*session_, "backup-kek", Purpose::kBackup);
  ASSERT_TRUE(kek.ok()) << kek.status().ToString();
  EXPECT_FALSE(Attribute(*session_, *kek, CKA_VALUE).ok()) << "the wrapping key never leaves in clear";
  KeyPairSpec spec{KeyType::kRsa2048, Purpose::kDsaSign, "dsa-backupable", /*backup_wrappable=*/true};
  Result<KeyPair> k = GenerateKeyPair(*session_, spec);
  ASSERT_TRUE(k.ok());
  Result<KeyPair> fixed = GenerateKeyPair(*session_, {KeyType::kRsa2048, Purpose::kDsaSign, "dsa-fixed"});
  ASSERT_TRUE(fixed.ok());
  Result<std::string> refused = WrapKey(*session_, *kek, fixed->priv);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kPermissionDenied) << refused.status().ToString();

  Result<std::string> wrapped = WrapKey(*session_, *kek, k->priv);
  ASSERT_TRUE(wrapped.ok()) << wrapped.status().ToString();
  Result<CK_OBJECT_HANDLE> restored =
      UnwrapPrivateKey(*session_, *kek, *wrapped, CKK_RSA, "dsa-restored", k->id, Purpose::kDsaSign);
  ASSERT_TRUE(restored.ok()) << restored.status().ToString();
  EXPECT_FALSE(*BoolAttribute(*session_, *restored, CKA_EXTRACTABLE));
  Result<EVP_PKEY*> pub = PublicKey(*session_, k->pub);
  ASSERT_TRUE(pub.ok());
  Result<std::string> sig = Sign(*session_, *restored, SignMechanism::kRsaPkcs1Sha256, "restored");
  ASSERT_TRUE(sig.ok());
  EXPECT_TRUE(Verify(*pub, SignMechanism::kRsaPkcs1Sha256, "restored", *sig));
  EVP_PKEY_free(*pub);
  std::string bad = *wrapped;
  bad[5] ^= 1;
  EXPECT_FALSE(UnwrapPrivateKey(*session_, *kek, bad, CKK_RSA, "dsa-bad", k->id, Purpose::kDsaSign).ok())
      << "a damaged backup is refused";
}

TEST_F(SoftHsmTest, CsrIsSignedInTheHsmWithRfc3183Names) {
  Result<KeyPair> k = GenerateKeyPair(*session_, {KeyType::kRsa2048, Purpose::kDsaSign, "dsa-sign"});
  ASSERT_TRUE(k.ok());
  Result<std::unique_ptr<OpenSslBridge>> bridge = OpenSslBridge::Open(testing::kSoftHsmModule, Secret(testing::kTestUserPin));
  ASSERT_TRUE(bridge.ok()) << bridge.status().ToString();
  Result<EVP_PKEY*> priv = (*bridge)->LoadPrivateKey(testing::kTokenLabel, "dsa-sign");
  ASSERT_TRUE(priv.ok()) << priv.status().ToString();
  CsrRequest req{Purpose::kDsaSign, {"agency-a.test", "sub.agency-a.test"}, "Agency A", "NZ"};
  Result<std::string> pem = BuildCsrPem(*priv, req);
  ASSERT_TRUE(pem.ok()) << pem.status().ToString();
  std::string f = dir_ + "/dsa.csr";
  std::ofstream(f) << *pem;
  int rc = 0;
  std::string v = Run("openssl req -verify -noout -in " + f, &rc);
  EXPECT_EQ(rc, 0) << v;
  EXPECT_NE(v.find("verify OK"), std::string::npos) << v;
  std::string text = Run("openssl req -noout -text -in " + f, &rc);
  EXPECT_NE(text.find("Subject: C = NZ, O = Agency A, CN = domain-signing-authority"), std::string::npos) << text;
  EXPECT_NE(text.find("email:domain-signing-authority@agency-a.test, email:domain-signing-authority@sub.agency-a.test"),
            std::string::npos) << text;
  EXPECT_NE(text.find("Digital Signature, Non Repudiation"), std::string::npos) << text;
  // The CSR carries the token's public key.
  Result<EVP_PKEY*> pub = PublicKey(*session_, k->pub);
  ASSERT_TRUE(pub.ok());
  EXPECT_EQ(EVP_PKEY_eq(*pub, *priv), 1);
  EVP_PKEY_free(*pub);
  EVP_PKEY_free(*priv);
  EXPECT_EQ(BuildCsrPem(*priv, {Purpose::kAudit, {"a.test"}, "", ""}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(BuildCsrPem(nullptr, {Purpose::kTls, {"a.test"}, "", ""}).status().code(), StatusCode::kInvalidArgument);
}

// Issue #16: the SMTP server's and the API's TLS keys get CSRs with host names and addresses,
// signed in the token; hostile names never reach the request.
TEST_F(SoftHsmTest, TlsCsrNamesHostsAndAddressesForServerUse) {
  Result<KeyPair> k = GenerateKeyPair(*session_, {KeyType::kEcP256, Purpose::kTls, "smtp-tls"});
  ASSERT_TRUE(k.ok());
  Result<EVP_PKEY*> priv = TokenPrivateKey(session_.get(), *k);
  ASSERT_TRUE(priv.ok()) << priv.status().ToString();
  Result<std::string> pem = BuildCsrPem(*priv, {Purpose::kTls, {"gw-a.agency-a.test", "10.9.0.1", "fd00::1"}, "", ""});
  ASSERT_TRUE(pem.ok()) << pem.status().ToString();
  std::string f = dir_ + "/tls.csr";
  std::ofstream(f) << *pem;
  int rc = 0;
  std::string v = Run("openssl req -verify -noout -text -in " + f, &rc);
  EXPECT_EQ(rc, 0) << v;
  EXPECT_NE(v.find("CN = gw-a.agency-a.test"), std::string::npos) << v;
  EXPECT_NE(v.find("DNS:gw-a.agency-a.test, IP Address:10.9.0.1, IP Address:FD00:0:0:0:0:0:0:1"), std::string::npos) << v;
  EXPECT_NE(v.find("TLS Web Server Authentication, TLS Web Client Authentication"), std::string::npos) << v;
  EXPECT_EQ(v.find("Key Encipherment"), std::string::npos) << "an EC key signs only: " << v;
  for (std::string bad : {"a b.test", "x.test,DNS:evil.test", "", "a\nb"})
    EXPECT_EQ(BuildCsrPem(*priv, {Purpose::kTls, {bad}, "", ""}).status().code(), StatusCode::kInvalidArgument) << bad;
  EVP_PKEY_free(*priv);
}

TEST_F(SoftHsmTest, SessionPoolServesConcurrentWorkers) {
  Result<KeyPair> k = GenerateKeyPair(*session_, {KeyType::kEcP256, Purpose::kDsaSign, "pool"});
  ASSERT_TRUE(k.ok());
  Result<std::unique_ptr<SessionPool>> pool = SessionPool::Open(module_.get(), slot_, 2, Secret(testing::kTestUserPin));
  ASSERT_TRUE(pool.ok()) << pool.status().ToString();
  std::atomic<int> good{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        SessionPool::Lease l = (*pool)->Acquire();
        if (Sign(*l, k->priv, SignMechanism::kEcdsaSha256, "x").ok()) good++;
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(good.load(), 200);
}

// Issue #16: a TLS server key in the token, shared by the threads that do handshakes. Each
// signature leases a session of the manager's pool; the key is the certificate's or nothing.
TEST_F(SoftHsmTest, SharedTokenKeySignsFromManyThreadsAndOnlyAsTheCertificatesKey) {
  Result<KeyPair> k = GenerateKeyPair(*session_, {KeyType::kRsa2048, Purpose::kTls, "smtp-tls"});
  Result<KeyPair> other = GenerateKeyPair(*session_, {KeyType::kRsa2048, Purpose::kTls, "other-tls"});
  ASSERT_TRUE(k.ok() && other.ok());
  Result<EVP_PKEY*> pub = PublicKey(*session_, k->pub);
  Result<EVP_PKEY*> other_pub = PublicKey(*session_, other->pub);
  ASSERT_TRUE(pub.ok() && other_pub.ok());
  std::string pin_file = dir_ + "/user.pin";
  std::ofstream(pin_file) << testing::kTestUserPin << "\n";
  ::chmod(pin_file.c_str(), 0600);
  TokenManager tm({testing::kSoftHsmModule, testing::kTokenLabel, "", pin_file, 2});
  ASSERT_TRUE(tm.Tick()) << tm.last_error();

  Result<std::unique_ptr<SharedTokenKey>> key = SharedTokenKey::Create(&tm, "smtp-tls", *pub);
  ASSERT_TRUE(key.ok()) << key.status().ToString();
  EXPECT_TRUE((*key)->Check().ok());
  std::atomic<int> good{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        std::string data = "handshake " + std::to_string(t * 100 + i);
        EVP_MD_CTX* ctx = EVP_MD_CTX_new();
        EVP_PKEY_CTX* pctx = nullptr;
        unsigned char sig[512];
        size_t len = sizeof sig;
        bool pss = (i % 2) == 0;   // TLS 1.3 signs with PSS, TLS 1.2 may use PKCS#1 v1.5
        bool ok = EVP_DigestSignInit(ctx, &pctx, EVP_sha256(), nullptr, (*key)->pkey()) == 1 &&
                  (!pss || (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
                            EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, 32) == 1)) &&
                  EVP_DigestSign(ctx, sig, &len, reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1;
        EVP_MD_CTX_free(ctx);
        if (ok && Verify(*pub, pss ? SignMechanism::kRsaPssSha256 : SignMechanism::kRsaPkcs1Sha256, data,
                         std::string(reinterpret_cast<char*>(sig), len)))
          good++;
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(good.load(), 40) << "every signature from the token, verified with the certificate's key";

  Result<std::unique_ptr<SharedTokenKey>> wrong = SharedTokenKey::Create(&tm, "smtp-tls", *other_pub);
  ASSERT_TRUE(wrong.ok());
  Status st = (*wrong)->Check();
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.ToString();
  EXPECT_NE(st.message().find("not the certificate's key"), std::string::npos) << st.message();
  Result<std::unique_ptr<SharedTokenKey>> missing = SharedTokenKey::Create(&tm, "no-such-key", *pub);
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE((*missing)->Check().ok());
  EXPECT_FALSE(SharedTokenKey::Create(nullptr, "smtp-tls", *pub).ok()) << "no token, no token key";
  EVP_PKEY_free(*pub);
  EVP_PKEY_free(*other_pub);
}

TEST(Secret, FileMustBePrivateAndIsTrimmed) {
  char tmpl[] = "/tmp/mailseal-pin-XXXXXX";
  int fd = mkstemp(tmpl);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "s3cret\n", 7), 7);
  close(fd);
  chmod(tmpl, 0644);
  Result<Secret> loose = ReadSecretFile(tmpl);
  EXPECT_EQ(loose.status().code(), StatusCode::kPermissionDenied);
  chmod(tmpl, 0600);
  Result<Secret> ok = ReadSecretFile(tmpl);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->Reveal(), "s3cret");
  // The owner the daemon names is the one it must have (issue #18: read after the drop).
  EXPECT_TRUE(ReadSecretFile(tmpl, ::geteuid()).ok());
  Result<Secret> someone_else = ReadSecretFile(tmpl, ::geteuid() + 4242);
  EXPECT_EQ(someone_else.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(someone_else.status().message().find("must be owned by uid"), std::string::npos);
  if (::geteuid() == 0 && chown(tmpl, 4242, 4242) == 0) {
    EXPECT_TRUE(ReadSecretFile(tmpl).ok()) << "root's tools read the daemon user's PIN file";
    EXPECT_FALSE(ReadSecretFile(tmpl, 0).ok()) << "but the daemon, told to own it, does not";
    EXPECT_TRUE(ReadSecretFile(tmpl, 4242).ok());
  }
  unlink(tmpl);
  EXPECT_FALSE(ReadSecretFile("/nonexistent-pin").ok());
}

}  // namespace
}  // namespace mailseal::hsm

namespace mailseal::hsm {
namespace {
using DataKeyTest = testing::SoftHsmTest;

TEST_F(DataKeyTest, DataKeysAreWrappedUnderATokenKekForSpoolAndArchive) {
  Result<CK_OBJECT_HANDLE> kek = GenerateAesKey(*session_, "spool-kek", Purpose::kSpool);
  Result<CK_OBJECT_HANDLE> other = GenerateAesKey(*session_, "archive-kek", Purpose::kArchive);
  ASSERT_TRUE(kek.ok() && other.ok());
  Result<Secret> dk = NewDataKey();
  ASSERT_TRUE(dk.ok());
  Result<std::string> wrapped = WrapDataKey(*session_, *kek, *dk);
  ASSERT_TRUE(wrapped.ok()) << wrapped.status().ToString();
  EXPECT_EQ(wrapped->size(), 40u) << "RFC 5649 output for a 256-bit key";
  EXPECT_EQ(wrapped->find(std::string(dk->Reveal())), std::string::npos);
  Result<Secret> back = UnwrapDataKey(*session_, *kek, *wrapped);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->Reveal(), dk->Reveal());
  EXPECT_FALSE(UnwrapDataKey(*session_, *other, *wrapped).ok()) << "another KEK cannot open it";
  std::string bad = *wrapped;
  bad[3] ^= 1;
  EXPECT_FALSE(UnwrapDataKey(*session_, *kek, bad).ok()) << "a damaged wrapped key is refused";
  EXPECT_EQ(Attribute(*session_, *kek, CKA_VALUE).status().code(), StatusCode::kPermissionDenied)
      << "the KEK itself never leaves the token";
}

// The spool's key wrap (issue #19): RFC 3394 computed from the token's AES-ECB, so that it
// also works through p11-kit's RPC. Checked against RFC 3394 §4.6 (256-bit KEK, 256-bit key)
// with a session KEK of known value, and against OpenSSL's own RFC 3394 (EVP_aes_256_wrap).
TEST_F(DataKeyTest, KeyWrapFromBlockOperationsIsRfc3394) {
  auto hex = [](const char* h) {
    std::string out;
    for (size_t i = 0; h[i] && h[i + 1]; i += 2) out.push_back(static_cast<char>(std::stoi(std::string(h + i, 2), nullptr, 16)));
    return out;
  };
  std::string kek_value = hex("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F");
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = CKK_AES;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_KEY_TYPE, &kt, sizeof kt}, {CKA_TOKEN, &no, sizeof no},
                      {CKA_ENCRYPT, &yes, sizeof yes}, {CKA_DECRYPT, &yes, sizeof yes},
                      {CKA_VALUE, kek_value.data(), kek_value.size()}};
  CK_OBJECT_HANDLE kek = CK_INVALID_HANDLE;
  ASSERT_EQ(session_->fn()->C_CreateObject(session_->handle(), t, 6, &kek), CKR_OK);
  Secret data(hex("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F"));
  Result<std::string> w = KwWrapDataKey(*session_, kek, data);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(*w, hex("28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21"));
  Result<Secret> back = KwUnwrapDataKey(*session_, kek, *w);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->Reveal(), data.Reveal());
  std::string bad = *w;
  bad[10] ^= 1;
  EXPECT_EQ(KwUnwrapDataKey(*session_, kek, bad).status().code(), StatusCode::kDataLoss);
  // A KEK made for it on the token: never extractable; another KEK cannot unwrap.
  Result<CK_OBJECT_HANDLE> k1 = GenerateAesBlockKek(*session_, "spool-kek-1", Purpose::kSpool);
  Result<CK_OBJECT_HANDLE> k2 = GenerateAesBlockKek(*session_, "spool-kek-2", Purpose::kSpool);
  ASSERT_TRUE(k1.ok() && k2.ok());
  Result<Secret> dk = NewDataKey();
  Result<std::string> w1 = KwWrapDataKey(*session_, *k1, *dk);
  ASSERT_TRUE(w1.ok());
  EXPECT_EQ(KwUnwrapDataKey(*session_, *k2, *w1).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(Attribute(*session_, *k1, CKA_VALUE).status().code(), StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace mailseal::hsm
