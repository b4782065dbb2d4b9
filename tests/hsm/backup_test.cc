// Backup on token A, restore on a fresh token B with 3 of 5 custodian shares (issue #3
// acceptance; CARD key ceremonies; SEE-2.4b keys never leave the HSM in clear).
#include <openssl/pem.h>

#include <fstream>
#include <sstream>

#include "hsm/backup.h"
#include "hsm/csr.h"
#include "hsm/openssl_bridge.h"
#include "tests/hsm/custodians.h"
#include "tests/hsm/softhsm_fixture.h"

namespace mailseal::hsm {
namespace {

class BackupTest : public testing::SoftHsmTest {
 protected:
  void SetUp() override {
    SoftHsmTest::SetUp();
    if (HasFatalFailure()) return;
    int rc = 0;
    // A test CA and five custodians with RSA keys and certificates (test fixtures).
    std::string out = Run(StrCat("cd ", dir_, " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt "
                                 "-subj /CN=Test-CA -days 30"), &rc);
    ASSERT_EQ(rc, 0) << out;
    people_ = testing::MakeCustodians(dir_, 5);
    ASSERT_EQ(people_.size(), 5u);
    for (const auto& p : people_) custodians_.push_back({p.name, p.cert_pem});
    for (auto [type, purpose, label] : {std::tuple{KeyType::kRsa2048, Purpose::kDsaSign, "dsa-sign"},
                                        std::tuple{KeyType::kRsa2048, Purpose::kDcaEncrypt, "dca-encrypt"},
                                        std::tuple{KeyType::kEcP256, Purpose::kAudit, "audit"}}) {
      Result<KeyPair> k = GenerateKeyPair(*session_, {type, purpose, label, /*backup_wrappable=*/true});
      ASSERT_TRUE(k.ok()) << k.status().ToString();
    }
  }
  Result<mailseal::v1::KeyShare> Open(const BackupBundle& b, int i /*1-based*/, int key_of = 0) {
    int k = key_of ? key_of : i;
    EVP_PKEY* key = people_[static_cast<size_t>(k - 1)].Key();
    auto r = OpenShareFile(b.share_files[static_cast<size_t>(i - 1)], key, custodians_[static_cast<size_t>(k - 1)].cert_pem);
    EVP_PKEY_free(key);
    return r;
  }
  std::unique_ptr<Session> TokenB() {
    CK_SLOT_ID b = InitToken("gw-b");
    auto s = Session::Open(module_.get(), b);
    EXPECT_TRUE(s.ok());
    EXPECT_TRUE((*s)->Login(Secret(testing::kTestUserPin)).ok());
    return std::move(s.value());
  }
  size_t Objects(Session& s) {
    CK_ULONG n = 0;
    CK_OBJECT_HANDLE h[64];
    s.fn()->C_FindObjectsInit(s.handle(), nullptr, 0);
    s.fn()->C_FindObjects(s.handle(), h, 64, &n);
    s.fn()->C_FindObjectsFinal(s.handle());
    return n;
  }
  std::vector<testing::TestCustodian> people_;
  std::vector<Custodian> custodians_;
};

TEST_F(BackupTest, RestoreWithThreeOfFiveSharesAndVerifyUnderTokenACertificate) {
  // Token A's DSA certificate, issued by the test CA from a CSR signed in the HSM.
  auto bridge = OpenSslBridge::Open(testing::kSoftHsmModule, Secret(testing::kTestUserPin));
  ASSERT_TRUE(bridge.ok()) << bridge.status().ToString();
  Result<EVP_PKEY*> dsa = (*bridge)->LoadPrivateKey(testing::kTokenLabel, "dsa-sign");
  ASSERT_TRUE(dsa.ok());
  Result<std::string> csr = BuildCsrPem(*dsa, {Purpose::kDsaSign, {"agency-a.test"}, "Agency A", "NZ"});
  EVP_PKEY_free(*dsa);
  ASSERT_TRUE(csr.ok());
  std::ofstream(dir_ + "/dsa.csr") << *csr;
  int rc = 0;
  std::string out = Run(StrCat("cd ", dir_, " && openssl x509 -req -in dsa.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
                               "-copy_extensions copy -days 30 -out dsa.crt"), &rc);
  ASSERT_EQ(rc, 0) << out;

  Result<BackupBundle> b = CreateBackup(*session_, testing::kTokenLabel, {"dsa-sign", "dca-encrypt", "audit"}, custodians_, 3);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  ASSERT_EQ(b->share_files.size(), 5u);
  EXPECT_EQ(b->backup.keys_size(), 3);
  std::string blob;
  b->backup.SerializeToString(&blob);
  // The custodians open their shares: with our code, and (custodian 2) with plain openssl.
  std::ofstream(dir_ + "/share2.cms", std::ios::binary) << b->share_files[1];
  out = Run(StrCat("cd ", dir_, " && openssl cms -decrypt -binary -inform DER -in share2.cms -recip c2.crt -inkey c2.key -out share2.bin"), &rc);
  EXPECT_EQ(rc, 0) << "a custodian needs only openssl: " << out;
  mailseal::v1::KeyShare s2;
  EXPECT_TRUE(s2.ParseFromString(testing::Slurp(dir_ + "/share2.bin")));
  EXPECT_EQ(s2.x(), 2u);
  std::vector<mailseal::v1::KeyShare> three;
  for (int i : {1, 3, 5}) {
    auto s = Open(*b, i);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    three.push_back(*s);
  }

  std::unique_ptr<Session> tb = TokenB();
  Result<std::vector<KeyPair>> restored = RestoreBackup(*tb, b->backup, three);
  ASSERT_TRUE(restored.ok()) << restored.status().ToString();
  ASSERT_EQ(restored->size(), 3u);
  // A signature made on token B verifies under token A's certificate (checked by openssl).
  Result<KeyPair> dsa_b = FindKeyPair(*tb, "dsa-sign");
  ASSERT_TRUE(dsa_b.ok());
  Result<std::string> sig = Sign(*tb, dsa_b->priv, SignMechanism::kRsaPkcs1Sha256, "signed on token B");
  ASSERT_TRUE(sig.ok());
  std::ofstream(dir_ + "/msg.txt", std::ios::binary) << "signed on token B";
  std::ofstream(dir_ + "/msg.sig", std::ios::binary) << *sig;
  out = Run(StrCat("cd ", dir_, " && openssl x509 -in dsa.crt -pubkey -noout > dsa.pub && "
                   "openssl dgst -sha256 -verify dsa.pub -signature msg.sig msg.txt"), &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("Verified OK"), std::string::npos) << out;
  // Restored keys are as protected as the originals, with the same CKA_ID.
  for (const KeyPair& k : *restored) {
    EXPECT_TRUE(*BoolAttribute(*tb, k.priv, CKA_SENSITIVE));
    EXPECT_FALSE(*BoolAttribute(*tb, k.priv, CKA_EXTRACTABLE));
    Result<KeyPair> orig = FindKeyPair(*session_, k.label);
    EXPECT_EQ(k.id, orig->id);
  }
  // The backup key itself never stays on either token.
  EXPECT_EQ(Objects(*tb), 6u) << "three key pairs, no KEK left behind";
}

TEST_F(BackupTest, TwoOfFiveRepeatedOrWrongSharesAreRefusedAndTokenUnchanged) {
  Result<BackupBundle> b = CreateBackup(*session_, testing::kTokenLabel, {"dsa-sign", "audit"}, custodians_, 3);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  std::vector<mailseal::v1::KeyShare> s;
  for (int i = 1; i <= 5; ++i) s.push_back(*Open(*b, i));
  std::unique_ptr<Session> tb = TokenB();

  auto two = RestoreBackup(*tb, b->backup, {s[0], s[3]});
  EXPECT_EQ(two.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(two.status().message(), "need 3 distinct shares, got 2");

  auto repeated = RestoreBackup(*tb, b->backup, {s[0], s[0], s[2]});
  EXPECT_EQ(repeated.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(repeated.status().message(), "share 1 given twice");

  mailseal::v1::KeyShare altered = s[1];
  std::string y = altered.y();
  y[0] ^= 0x40;
  altered.set_y(y);
  auto wrong = RestoreBackup(*tb, b->backup, {s[0], altered, s[2]});
  EXPECT_EQ(wrong.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(wrong.status().message().find("do not rebuild the backup key"), std::string::npos);

  Result<BackupBundle> other = CreateBackup(*session_, testing::kTokenLabel, {"audit"}, custodians_, 3);
  ASSERT_TRUE(other.ok());
  auto foreign = RestoreBackup(*tb, b->backup, {s[0], s[1], *Open(*other, 3)});
  EXPECT_EQ(foreign.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(foreign.status().message().find("belongs to another backup"), std::string::npos);

  EXPECT_EQ(Open(*b, 1, /*key_of=*/2).status().code(), StatusCode::kPermissionDenied)
      << "custodian 2's key does not open custodian 1's share";
  EXPECT_EQ(Objects(*tb), 0u) << "nothing changed on token B";

  // And the right three still work afterwards.
  EXPECT_TRUE(RestoreBackup(*tb, b->backup, {s[4], s[1], s[2]}).ok());
  // A second restore of the same keys is refused, not duplicated.
  auto again = RestoreBackup(*tb, b->backup, {s[0], s[1], s[2]});
  EXPECT_EQ(again.status().code(), StatusCode::kAlreadyExists);
}

TEST_F(BackupTest, KeysNotMadeBackupWrappableCannotBeBackedUp) {
  ASSERT_TRUE(GenerateKeyPair(*session_, {KeyType::kRsa2048, Purpose::kDsaSign, "fixed"}).ok());
  auto b = CreateBackup(*session_, testing::kTokenLabel, {"fixed"}, custodians_, 3);
  EXPECT_EQ(b.status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(b.status().message(), "key 'fixed': C_WrapKey(CKM_AES_KEY_WRAP_PAD) failed: CKR_KEY_UNEXTRACTABLE");
  auto bad_m = CreateBackup(*session_, testing::kTokenLabel, {"audit"}, custodians_, 6);
  EXPECT_EQ(bad_m.status().code(), StatusCode::kInvalidArgument);
  std::vector<Custodian> broken = custodians_;
  broken[2].cert_pem = "not a certificate";
  EXPECT_EQ(CreateBackup(*session_, testing::kTokenLabel, {"audit"}, broken, 3).status().message(),
            "custodian custodian-3: unreadable certificate");
}

}  // namespace
}  // namespace mailseal::hsm
