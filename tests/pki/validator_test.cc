// The one certificate validator (dataplane/pki/validator.h), issue #15: every SEE-2.8 verdict
// with a reason that names the certificate, the caller's validation time, intermediates in any
// order, the purpose, CRL rules, anchors checked when the trust list is loaded, and bounds on
// what outside input can make it read. REQUIREMENTS.md §3 (SEE-2.7, SEE-2.8).
#include "dataplane/pki/validator.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <ctime>
#include <string>
#include <vector>

namespace mailseal::pki {
namespace {

struct Issued {
  X509Ptr cert;
  std::shared_ptr<EVP_PKEY> key;
};

// Make issues a certificate: `issuer` null = self-signed. Extensions in OpenSSL's config syntax.
Issued Make(const std::string& cn, const Issued* issuer, long from_s, long to_s, long serial,
            const std::vector<std::pair<int, std::string>>& exts) {
  std::shared_ptr<EVP_PKEY> key(EVP_EC_gen("P-256"), EVP_PKEY_free);
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
  X509_gmtime_adj(X509_getm_notBefore(x), from_s);
  X509_gmtime_adj(X509_getm_notAfter(x), to_s);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer->cert.get()) : X509_get_subject_name(x));
  X509_set_pubkey(x, key.get());
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer ? issuer->cert.get() : x, x, nullptr, nullptr, 0);
  for (const auto& [nid, value] : exts) {
    X509_EXTENSION* e = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
    EXPECT_NE(e, nullptr) << value;
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
  }
  X509_sign(x, issuer ? issuer->key.get() : key.get(), EVP_sha256());
  return {Own(x), key};
}

const std::vector<std::pair<int, std::string>> kCa = {
    {NID_basic_constraints, "critical,CA:TRUE"}, {NID_key_usage, "critical,keyCertSign,cRLSign"},
    {NID_subject_key_identifier, "hash"}, {NID_authority_key_identifier, "keyid:always"}};
std::vector<std::pair<int, std::string>> Leaf(const std::string& email, const std::string& eku = "emailProtection") {
  return {{NID_key_usage, "critical,digitalSignature"}, {NID_ext_key_usage, eku},
          {NID_subject_alt_name, "email:" + email}, {NID_subject_key_identifier, "hash"},
          {NID_authority_key_identifier, "keyid:always"}};
}

CrlPtr MakeCrl(const Issued& issuer, const std::vector<X509*>& revoked, long next_s, bool number = true) {
  X509_CRL* crl = X509_CRL_new();
  X509_CRL_set_version(crl, 1);
  X509_CRL_set_issuer_name(crl, X509_get_subject_name(issuer.cert.get()));
  ASN1_TIME* now = X509_gmtime_adj(nullptr, -60);
  ASN1_TIME* next = X509_gmtime_adj(nullptr, next_s);
  X509_CRL_set1_lastUpdate(crl, now);
  X509_CRL_set1_nextUpdate(crl, next);
  for (X509* r : revoked) {
    X509_REVOKED* rv = X509_REVOKED_new();
    X509_REVOKED_set_serialNumber(rv, X509_get_serialNumber(r));
    X509_REVOKED_set_revocationDate(rv, now);
    X509_CRL_add0_revoked(crl, rv);
  }
  if (number) {
    ASN1_INTEGER* n = ASN1_INTEGER_new();
    ASN1_INTEGER_set(n, 7);
    X509_CRL_add1_ext_i2d(crl, NID_crl_number, n, 0, 0);
    ASN1_INTEGER_free(n);
  }
  X509_CRL_sort(crl);
  X509_CRL_sign(crl, issuer.key.get(), EVP_sha256());
  ASN1_TIME_free(now);
  ASN1_TIME_free(next);
  return Own(crl);
}

std::string Pem(X509* c) {
  BIO* b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(b, c);
  char* p = nullptr;
  long n = BIO_get_mem_data(b, &p);
  std::string s(p, static_cast<size_t>(n));
  BIO_free(b);
  return s;
}

class ValidatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = Make("Test Root", nullptr, -86400 * 30, 86400 * 365, 1, kCa);
    ica_ = Make("Test Issuing CA", &root_, -86400 * 30, 86400 * 365, 2, kCa);
    leaf_ = Make("domain-signing-authority@agency-b.test", &ica_, -3600, 86400 * 30, 100,
                 Leaf("domain-signing-authority@agency-b.test"));
    ASSERT_TRUE(trust_.AddAnchor(root_.cert.get()).ok());
  }
  Request For(const Issued& leaf) {
    Request r;
    r.leaf = leaf.cert.get();
    r.untrusted = {ica_.cert.get()};
    r.purpose = Purpose::kSmimeSign;
    return r;
  }
  Issued root_, ica_, leaf_;
  TrustList trust_;
};

TEST_F(ValidatorTest, AGoodPathIsValidAndItsChainIsReported) {
  Outcome o = Validate(trust_, For(leaf_));
  EXPECT_EQ(o.verdict, Verdict::kValid) << o.reason;
  EXPECT_TRUE(o.reason.empty());
  ASSERT_EQ(o.chain.size(), 3u);
  EXPECT_EQ(X509_cmp(o.chain[0].get(), leaf_.cert.get()), 0);
  EXPECT_EQ(X509_cmp(o.chain[2].get(), root_.cert.get()), 0);
}

TEST_F(ValidatorTest, IntermediatesInAnyOrderAmongUnrelatedCertificates) {
  Issued other = Make("Someone Else", nullptr, -60, 3600, 9, kCa);
  Request r = For(leaf_);
  r.untrusted = {other.cert.get(), leaf_.cert.get(), ica_.cert.get()};
  EXPECT_EQ(Validate(trust_, r).verdict, Verdict::kValid);
}

TEST_F(ValidatorTest, AnchorsComeOnlyFromTheTrustListNeverTheSystemStore) {
  TrustList empty;
  Outcome o = Validate(empty, For(leaf_));
  EXPECT_EQ(o.verdict, Verdict::kUntrusted);
  EXPECT_NE(o.reason.find("no path to a trust anchor"), std::string::npos) << o.reason;
  EXPECT_NE(o.reason.find("Test Root"), std::string::npos) << "names the missing issuer: " << o.reason;
}

TEST_F(ValidatorTest, ExpiredAndNotYetValidNameTheCertificateAndTheDate) {
  Issued old = Make("old@agency-b.test", &ica_, -86400 * 10, -86400, 101, Leaf("old@agency-b.test"));
  Outcome o = Validate(trust_, For(old));
  EXPECT_EQ(o.verdict, Verdict::kExpired);
  EXPECT_NE(o.reason.find("old@agency-b.test"), std::string::npos) << o.reason;
  EXPECT_NE(o.reason.find("expired on"), std::string::npos) << o.reason;
  Issued early = Make("early@agency-b.test", &ica_, 86400, 86400 * 2, 102, Leaf("early@agency-b.test"));
  EXPECT_EQ(Validate(trust_, For(early)).verdict, Verdict::kNotYetValid);
}

TEST_F(ValidatorTest, TheCallerChoosesTheValidationTime) {
  Issued old = Make("old@agency-b.test", &ica_, -86400 * 10, -86400, 101, Leaf("old@agency-b.test"));
  Request r = For(old);
  r.at_unix = static_cast<int64_t>(std::time(nullptr)) - 86400 * 2;   // when it was signed
  EXPECT_EQ(Validate(trust_, r).verdict, Verdict::kValid);
}

TEST_F(ValidatorTest, RevocationRevokedUnknownAndACrlWithoutNumber) {
  Issued revoked = Make("gone@agency-b.test", &ica_, -3600, 86400, 103, Leaf("gone@agency-b.test"));
  CrlPtr root_crl = MakeCrl(root_, {}, 86400);
  CrlPtr ica_crl = MakeCrl(ica_, {revoked.cert.get()}, 86400);
  Request r = For(revoked);
  r.revocation = true;
  // No CRL of the issuing CA: status unknown (SEE-2.8: send and notify / SOFT warning).
  r.crls = {root_crl.get()};
  Outcome o = Validate(trust_, r);
  EXPECT_EQ(o.verdict, Verdict::kStatusUnknown);
  EXPECT_NE(o.reason.find("no CRL of"), std::string::npos) << o.reason;
  r.crls = {root_crl.get(), ica_crl.get()};
  o = Validate(trust_, r);
  EXPECT_EQ(o.verdict, Verdict::kRevoked);
  EXPECT_NE(o.reason.find("gone@agency-b.test"), std::string::npos) << o.reason;
  Request good = For(leaf_);
  good.revocation = true;
  good.crls = {root_crl.get(), ica_crl.get()};
  EXPECT_EQ(Validate(trust_, good).verdict, Verdict::kValid);
  // A CRL without cRLNumber (RFC 5280 §5.2.3) is not used: the status is unknown, never "good".
  CrlPtr unnumbered = MakeCrl(ica_, {}, 86400, /*number=*/false);
  good.crls = {root_crl.get(), unnumbered.get()};
  EXPECT_EQ(Validate(trust_, good).verdict, Verdict::kStatusUnknown);
  EXPECT_FALSE(trust_.AddCrl(unnumbered.get()).ok()) << "the trust list refuses it when loaded";
  // An expired CRL: unknown.
  CrlPtr stale = MakeCrl(ica_, {}, -30);
  good.crls = {root_crl.get(), stale.get()};
  o = Validate(trust_, good);
  EXPECT_EQ(o.verdict, Verdict::kStatusUnknown);
  EXPECT_NE(o.reason.find("expired"), std::string::npos) << o.reason;
}

TEST_F(ValidatorTest, PurposeKeyUsageAndEku) {
  Issued tls = Make("www.agency-b.test", &ica_, -3600, 86400, 104,
                    {{NID_key_usage, "critical,digitalSignature"}, {NID_ext_key_usage, "serverAuth"},
                     {NID_subject_alt_name, "DNS:www.agency-b.test"}, {NID_subject_key_identifier, "hash"},
                     {NID_authority_key_identifier, "keyid:always"}});
  Outcome o = Validate(trust_, For(tls));
  EXPECT_EQ(o.verdict, Verdict::kUntrusted);
  EXPECT_NE(o.reason.find("not fit for the purpose"), std::string::npos) << o.reason;
  Request any = For(tls);
  any.purpose = Purpose::kTlsServer;
  any.host = "www.agency-b.test";
  EXPECT_EQ(Validate(trust_, any).verdict, Verdict::kValid);
  any.host = "mail.agency-b.test";
  EXPECT_EQ(Validate(trust_, any).verdict, Verdict::kUntrusted);
}

TEST_F(ValidatorTest, ProfileBreachesTwoReadersCouldReadDifferently) {
  Issued no_aki = Make("noaki@agency-b.test", &ica_, -3600, 86400, 105,
                       {{NID_key_usage, "critical,digitalSignature"}, {NID_ext_key_usage, "emailProtection"},
                        {NID_subject_alt_name, "email:noaki@agency-b.test"}});
  Outcome o = Validate(trust_, For(no_aki));
  EXPECT_EQ(o.verdict, Verdict::kUntrusted);
  EXPECT_NE(o.reason.find("authorityKeyIdentifier"), std::string::npos) << o.reason;
  Issued bad_mail = Make("x", &ica_, -3600, 86400, 106, Leaf("a@b@agency-b.test"));
  o = Validate(trust_, For(bad_mail));
  EXPECT_EQ(o.verdict, Verdict::kUntrusted);
  EXPECT_NE(o.reason.find("not a mailbox"), std::string::npos) << o.reason;
}

TEST_F(ValidatorTest, ExplicitPolicyRequiredAndNoneOnThePath) {
  Request r = For(leaf_);
  r.policy.check = true;
  r.policy.explicit_policy = true;
  Outcome o = Validate(trust_, r);
  EXPECT_EQ(o.verdict, Verdict::kUntrusted);
  EXPECT_NE(o.reason.find("policy"), std::string::npos) << o.reason;
}

TEST_F(ValidatorTest, TheTrustListRefusesAnchorsThatAreNotCaCertificates) {
  TrustList t;
  Status st = t.AddAnchor(leaf_.cert.get());
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("not a CA certificate"), std::string::npos) << st.message();
  Issued soft = Make("Soft Root", nullptr, -60, 3600, 3,
                     {{NID_basic_constraints, "CA:TRUE"}, {NID_subject_key_identifier, "hash"}});
  st = t.AddAnchor(soft.cert.get());
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("non-critical basicConstraints"), std::string::npos) << st.message();
  EXPECT_EQ(t.anchors(), 0u);
}

TEST_F(ValidatorTest, BoundsOnWhatOutsideInputCanMakeItRead) {
  // More intermediates than considered: refused with a reason, nothing built.
  std::vector<Issued> many;
  Request r = For(leaf_);
  for (int i = 0; i <= kMaxUntrusted; ++i) many.push_back(Make("Filler " + std::to_string(i), nullptr, -60, 3600, 10 + i, kCa));
  for (const Issued& m : many) r.untrusted.push_back(m.cert.get());
  Outcome o = Validate(trust_, r);
  EXPECT_EQ(o.verdict, Verdict::kUntrusted);
  EXPECT_NE(o.reason.find("at most 64"), std::string::npos) << o.reason;
  // A 10,000-certificate bag: the reader stops after the bound and says so.
  std::string one = Pem(leaf_.cert.get()), bag;
  for (int i = 0; i < 10000; ++i) bag += one;
  Result<std::vector<X509Ptr>> certs = ParseCertificates(bag, 64);
  EXPECT_FALSE(certs.ok());
  EXPECT_NE(certs.status().message().find("more than 64"), std::string::npos);
  // Broken DER and garbage: a clear error.
  std::string der(300, '\x30');
  EXPECT_FALSE(ParseCertificates(der).ok());
  EXPECT_FALSE(ParseCertificates("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n").ok());
  EXPECT_FALSE(ParseCrls("garbage").ok());
  Result<std::vector<X509Ptr>> fine = ParseCertificates(one + one);
  ASSERT_TRUE(fine.ok());
  EXPECT_EQ(fine->size(), 2u);
}

TEST(VerdictName, EveryVerdictHasAName) {
  for (Verdict v : {Verdict::kValid, Verdict::kStatusUnknown, Verdict::kExpired, Verdict::kNotYetValid,
                    Verdict::kUntrusted, Verdict::kRevoked})
    EXPECT_STRNE(VerdictName(v), "?");
}

}  // namespace
}  // namespace mailseal::pki
