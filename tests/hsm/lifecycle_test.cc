// Key lifecycle (issue #3; SEE-2.3 certificate and key age rules, SEE-2.6 naming, SEE-1.9b
// compromise procedure).
#include <fstream>

#include "hsm/csr.h"
#include "hsm/lifecycle.h"
#include "hsm/openssl_bridge.h"
#include "tests/hsm/custodians.h"
#include "tests/hsm/softhsm_fixture.h"

namespace mailseal::hsm {
namespace {

class LifecycleTest : public testing::SoftHsmTest {
 protected:
  void SetUp() override {
    SoftHsmTest::SetUp();
    if (HasFatalFailure()) return;
    int rc = 0;
    for (const char* ca : {"ca", "other-ca"}) {
      std::string out = Run(StrCat("cd ", dir_, " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ", ca,
                                   ".key -out ", ca, ".crt -subj /CN=", ca, " -days 3650"), &rc);
      ASSERT_EQ(rc, 0) << out;
    }
    ca_pem_ = testing::Slurp(dir_ + "/ca.crt");
    auto b = OpenSslBridge::Open(testing::kSoftHsmModule, Secret(testing::kTestUserPin));
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    bridge_ = std::move(b.value());
    ASSERT_TRUE(GenerateKeyPair(*session_, {KeyType::kRsa2048, Purpose::kDsaSign, "dsa-2026"}).ok());
  }
  // Issue: a certificate for the token key `label` from `ca`, valid `days`.
  std::string Issue(const std::string& label, const std::vector<std::string>& domains, int days,
                    const std::string& ca = "ca", Purpose p = Purpose::kDsaSign) {
    Result<EVP_PKEY*> k = bridge_->LoadPrivateKey(testing::kTokenLabel, label);
    EXPECT_TRUE(k.ok()) << k.status().ToString();
    if (!k.ok()) return "";
    Result<std::string> csr = BuildCsrPem(*k, {p, domains, "Agency A", "NZ"});
    EVP_PKEY_free(*k);
    EXPECT_TRUE(csr.ok()) << csr.status().ToString();
    if (!csr.ok()) return "";
    std::ofstream(dir_ + "/req.csr") << *csr;
    int rc = 0;
    std::string out = Run(StrCat("cd ", dir_, " && openssl x509 -req -in req.csr -CA ", ca, ".crt -CAkey ", ca,
                                 ".key -CAcreateserial -copy_extensions copy -days ", days, " -out issued.crt"), &rc);
    EXPECT_EQ(rc, 0) << out;
    return testing::Slurp(dir_ + "/issued.crt");
  }
  InstallRequest Req(const std::string& label, const std::string& cert) {
    InstallRequest r;
    r.key_label = label;
    r.cert_pem = cert;
    r.anchors_pem = {ca_pem_};
    r.domains = {"agency-a.test"};
    return r;
  }
  std::string ca_pem_;
  std::unique_ptr<OpenSslBridge> bridge_;
};

TEST_F(LifecycleTest, CertificateIsCheckedThenStoredBesideItsKey) {
  std::string cert = Issue("dsa-2026", {"agency-a.test"}, 365);
  Result<CK_OBJECT_HANDLE> h = InstallCertificate(*session_, Req("dsa-2026", cert));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  Result<KeyPair> kp = FindKeyPair(*session_, "dsa-2026");
  EXPECT_EQ(*Attribute(*session_, *h, CKA_ID), std::string(kp->id.begin(), kp->id.end())) << "same CKA_ID ties them";
  // pkcs11-tool sees the certificate under the key's label.
  int rc = 0;
  std::string out = Run(StrCat("pkcs11-tool --module ", testing::kSoftHsmModule, " --token-label ", testing::kTokenLabel,
                               " --list-objects --type cert"), &rc);
  EXPECT_NE(out.find("label:      dsa-2026"), std::string::npos) << out;
  // Renewal with the same key replaces the stored certificate.
  ASSERT_TRUE(InstallCertificate(*session_, Req("dsa-2026", Issue("dsa-2026", {"agency-a.test"}, 300))).ok());
  out = Run(StrCat("pkcs11-tool --module ", testing::kSoftHsmModule, " --token-label ", testing::kTokenLabel,
                   " --list-objects --type cert"), &rc);
  EXPECT_EQ(out.find("label:      dsa-2026"), out.rfind("label:      dsa-2026")) << "one certificate, not two: " << out;
}

TEST_F(LifecycleTest, BadCertificatesAreRefusedWithTheReason) {
  ASSERT_TRUE(GenerateKeyPair(*session_, {KeyType::kRsa2048, Purpose::kDsaSign, "other-key"}).ok());
  auto refused = [&](InstallRequest r) { return InstallCertificate(*session_, r).status().message(); };
  EXPECT_EQ(refused(Req("dsa-2026", Issue("other-key", {"agency-a.test"}, 365))),
            "the certificate is not for key 'dsa-2026'");
  EXPECT_NE(refused(Req("dsa-2026", Issue("dsa-2026", {"agency-a.test"}, 500))).find("SEE-2.3 allows at most 13 months"),
            std::string::npos);
  InstallRequest two = Req("dsa-2026", Issue("dsa-2026", {"agency-a.test"}, 365));
  two.domains = {"agency-a.test", "agency-c.test"};
  EXPECT_EQ(refused(two), "the certificate does not name domain-signing-authority@agency-c.test");
  EXPECT_NE(refused(Req("dsa-2026", Issue("dsa-2026", {"agency-a.test"}, 365, "other-ca"))).find("does not chain"),
            std::string::npos);
  InstallRequest late = Req("dsa-2026", Issue("dsa-2026", {"agency-a.test"}, 365));
  late.now_unix_s = std::time(nullptr) + 400 * kDay;
  EXPECT_EQ(refused(late), "the certificate has expired");
  // A DCA-named certificate on a signing key: wrong CN for the purpose.
  ASSERT_TRUE(GenerateKeyPair(*session_, {KeyType::kRsa2048, Purpose::kDcaEncrypt, "dca-2026"}).ok());
  std::string dca_cert = Issue("dca-2026", {"agency-a.test"}, 365, "ca", Purpose::kDcaEncrypt);
  EXPECT_TRUE(InstallCertificate(*session_, Req("dca-2026", dca_cert)).ok());
  EXPECT_EQ(refused(Req("dsa-2026", Issue("dsa-2026", {"agency-a.test"}, 365, "ca", Purpose::kDcaEncrypt))),
            "the certificate's CN is 'domain-confidentiality-authority', RFC 3183 wants 'domain-signing-authority'");
  EXPECT_EQ(refused(Req("dsa-2026", "garbage")), "the certificate is not PEM X.509");
}

TEST_F(LifecycleTest, KeyAgeRulesOfSee23) {
  const int64_t now = std::time(nullptr);
  KeyPairSpec old4{KeyType::kEcP256, Purpose::kDsaSign, "aged-4y"};
  old4.created_unix_s = now - 4 * 365 * kDay - 10 * kDay;
  KeyPairSpec old5{KeyType::kEcP256, Purpose::kDsaSign, "aged-5y"};
  old5.created_unix_s = now - 5 * 365 * kDay - 10 * kDay;
  Result<KeyPair> k4 = GenerateKeyPair(*session_, old4), k5 = GenerateKeyPair(*session_, old5);
  Result<KeyPair> fresh = FindKeyPair(*session_, "dsa-2026");
  ASSERT_TRUE(k4.ok() && k5.ok() && fresh.ok());
  EXPECT_TRUE(CheckMayRecertify(*session_, *fresh).ok()) << CheckMayRecertify(*session_, *fresh).ToString();
  EXPECT_TRUE(CheckMaySign(*session_, *fresh).ok());
  Status no_csr = CheckMayRecertify(*session_, *k4);
  EXPECT_EQ(no_csr.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(no_csr.message().find("replaced after 4 years"), std::string::npos);
  EXPECT_TRUE(CheckMaySign(*session_, *k4).ok()) << "between 4 and 5 years it still signs";
  Status no_sign = CheckMaySign(*session_, *k5);
  EXPECT_NE(no_sign.message().find("older than 5 years may not sign"), std::string::npos);
}

TEST(Lifecycle, ExpiryWarningsAt30_14_7_1Days) {
  const int64_t end = 2000000000;
  EXPECT_EQ(ExpiryWarning(end, end - 40 * kDay), 0);
  EXPECT_EQ(ExpiryWarning(end, end - 30 * kDay), 30);
  EXPECT_EQ(ExpiryWarning(end, end - 20 * kDay), 30);
  EXPECT_EQ(ExpiryWarning(end, end - 14 * kDay), 14);
  EXPECT_EQ(ExpiryWarning(end, end - 3 * kDay), 7);
  EXPECT_EQ(ExpiryWarning(end, end - 3600), 1);
  EXPECT_EQ(ExpiryWarning(end, end + 1), -1);
}

TEST(Lifecycle, KeyRingOverlapAndCompromise) {
  KeyRing r;
  const int64_t t0 = 1000000;
  r.Activate(Purpose::kDcaEncrypt, "dca-1", t0, 7 * kDay);
  r.Activate(Purpose::kDsaSign, "dsa-1", t0, 7 * kDay);
  r.Activate(Purpose::kDcaEncrypt, "dca-2", t0 + kDay, 7 * kDay);
  EXPECT_EQ(r.DecryptCandidates(t0 + 2 * kDay), (std::vector<std::string>{"dca-2", "dca-1"}));
  EXPECT_EQ(r.DecryptCandidates(t0 + 9 * kDay), (std::vector<std::string>{"dca-2"}));
  EXPECT_EQ(r.ExpiredRetirees(t0 + 9 * kDay), (std::vector<std::string>{"dca-1"}));
  r.MarkCompromised("dca-2", t0 + 10 * kDay, kDay);
  EXPECT_TRUE(r.active_dca.empty());
  EXPECT_EQ(r.DecryptCandidates(t0 + 10 * kDay + 3600), (std::vector<std::string>{"dca-2"})) << "mail in flight only";
  EXPECT_TRUE(r.DecryptCandidates(t0 + 12 * kDay).empty());
  r.MarkCompromised("dsa-1", t0 + 10 * kDay, kDay);
  EXPECT_TRUE(r.active_dsa.empty()) << "a compromised key never signs again";
}

TEST_F(LifecycleTest, CompromiseProcedureReplacesTheKeyAndDestroysTheOldOne) {
  KeyRing ring;
  const int64_t now = std::time(nullptr);
  ASSERT_TRUE(InstallCertificate(*session_, Req("dsa-2026", Issue("dsa-2026", {"agency-a.test"}, 365))).ok());
  ring.Activate(Purpose::kDsaSign, "dsa-2026", now, 0);
  KeyPairSpec spec{KeyType::kRsa2048, Purpose::kDsaSign, "dsa-2026b"};
  Result<Replacement> r = BeginCompromiseRecovery(*session_, *bridge_, testing::kTokenLabel, ring, "dsa-2026", spec,
                                                  {Purpose::kDsaSign, {"agency-a.test"}, "Agency A", "NZ"}, now, 0);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(ring.active_dsa.empty()) << "nothing signs until the new certificate is installed";
  std::ofstream(dir_ + "/new.csr") << r->csr_pem;
  int rc = 0;
  std::string out = Run(StrCat("cd ", dir_, " && openssl req -verify -noout -in new.csr && openssl x509 -req -in new.csr "
                               "-CA ca.crt -CAkey ca.key -CAcreateserial -copy_extensions copy -days 365 -out new.crt"), &rc);
  ASSERT_EQ(rc, 0) << out;
  ASSERT_TRUE(InstallCertificate(*session_, Req("dsa-2026b", testing::Slurp(dir_ + "/new.crt"))).ok());
  ring.Activate(Purpose::kDsaSign, "dsa-2026b", now, 0);
  EXPECT_EQ(ring.active_dsa, "dsa-2026b");
  Result<KeyPair> old = FindKeyPair(*session_, "dsa-2026");
  ASSERT_TRUE(old.ok());
  ASSERT_TRUE(DestroyKeyPair(*session_, *old).ok());
  EXPECT_EQ(FindKeyPair(*session_, "dsa-2026").status().code(), StatusCode::kNotFound) << "destroyed on the token";
  out = Run(StrCat("pkcs11-tool --module ", testing::kSoftHsmModule, " --token-label ", testing::kTokenLabel,
                   " --list-objects --type cert"), &rc);
  EXPECT_EQ(out.find("label:      dsa-2026\n"), std::string::npos) << "its certificate too: " << out;
}

}  // namespace
}  // namespace mailseal::hsm
