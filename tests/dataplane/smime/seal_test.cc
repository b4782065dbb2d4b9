// Domain-level S/MIME core (issue #4, first part): seal/open round trip and interop with
// `openssl cms` as an independent implementation, both directions. Keys are software keys
// made by the test (test fixtures); HSM keys plug in as EVP_PKEYs through hsm/openssl_bridge.
#include "dataplane/smime/seal.h"
#include "tests/dataplane/smime/pki_fixture.h"

#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace mailseal::smime {
namespace {

using SealTest = testing::PkiTest;
using testing::Slurp;
// What our seal signs: the message wrapped as RFC 9788 describes.
const std::string kWrapped = "Content-Type: message/rfc822; forwarded=\"no\"\r\n\r\n";

TEST_F(SealTest, SealThenOpenGivesTheOriginalByteExact) {
  X509 *dsa = Cert("dsa_a"), *dca = Cert("dca_b");
  EVP_PKEY *dsa_key = Key("dsa_a"), *dca_key = Key("dca_b");
  Result<std::string> sealed = Seal(msg_, {dsa, dsa_key, {}}, {dca});
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  EXPECT_NE(sealed->find("smime-type=authEnveloped-data"), std::string::npos);
  EXPECT_NE(sealed->find("Subject: [...]\r\n"), std::string::npos);
  EXPECT_EQ(sealed->find("budget"), std::string::npos) << "the real Subject travels inside only";
  EXPECT_EQ(sealed->find("numbers"), std::string::npos);
  EXPECT_NE(sealed->find("Message-ID: <m1@agency-a.test>\r\n"), std::string::npos);
  X509_STORE* trust = Trust();
  Result<Opened> o = Open(*sealed, {dca, dca_key}, trust);
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(o->message, msg_);
  EXPECT_TRUE(o->signed_ok);
  EXPECT_EQ(o->signer_emails, std::vector<std::string>{"domain-signing-authority@agency-a.test"});
  EXPECT_EQ(o->cipher, "authEnveloped-data");
  EXPECT_EQ(o->capabilities, OurCapabilities()) << "a partner running mailseal learns we read AES-GCM";
  EXPECT_EQ(ChooseCipher(o->capabilities), ContentCipher::kAes256Gcm);
  X509_STORE_free(trust);
  X509_free(dsa);
  X509_free(dca);
  EVP_PKEY_free(dsa_key);
  EVP_PKEY_free(dca_key);
}

TEST_F(SealTest, OpensslCmsOpensWhatWeSeal) {
  X509 *dsa = Cert("dsa_a"), *dca = Cert("dca_b");
  EVP_PKEY* dsa_key = Key("dsa_a");
  for (ContentCipher c : {ContentCipher::kAes256Gcm, ContentCipher::kAes256Cbc}) {
    SealOptions o;
    o.cipher = c;
    Result<std::string> sealed = Seal(msg_, {dsa, dsa_key, {}}, {dca}, o);
    ASSERT_TRUE(sealed.ok());
    std::ofstream(dir_ + "/sealed.eml", std::ios::binary) << *sealed;
    ASSERT_EQ(Run("openssl cms -decrypt -in sealed.eml -recip dca_b.crt -inkey dca_b.key -out signed.eml && "
                  "openssl cms -verify -binary -in signed.eml -CAfile ca.crt -out inner.eml"), 0)
        << "openssl cms could not open it";
    EXPECT_EQ(Slurp(dir_ + "/inner.eml"), kWrapped + msg_);
    // RFC 8551 §2.5: content-type, message-digest, signing-time and SMIMECapabilities are
    // signed attributes; the signer's certificate and chain travel with it (SEE-2.9).
    EXPECT_EQ(Run("openssl cms -cmsout -print -in signed.eml > attrs.txt && grep -q 'object: contentType' attrs.txt "
                  "&& grep -q 'object: messageDigest' attrs.txt && grep -q 'object: signingTime' attrs.txt && "
                  "grep -q 'object: S/MIME Capabilities' attrs.txt && grep -q 'CN=domain-signing-authority@agency-a.test' attrs.txt"), 0);
  }
  X509_free(dsa);
  X509_free(dca);
  EVP_PKEY_free(dsa_key);
}

// RFC 5753: a partner whose DCA has a P-256 key gets ECDH key agreement; openssl opens it.
TEST_F(SealTest, EcPartnerGetsEcdhKeyAgreement) {
  ASSERT_EQ(Run("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout dca_ec.key -out dca_ec.csr "
                "-subj /CN=domain-confidentiality-authority@agency-c.test && openssl x509 -req -in dca_ec.csr -CA ca.crt "
                "-CAkey ca.key -CAcreateserial -days 30 -extfile ext.cnf -extensions dca_c -out dca_ec.crt"), 0);
  X509 *dsa = Cert("dsa_a"), *dca = Cert("dca_ec");
  EVP_PKEY *dsa_key = Key("dsa_a"), *dca_key = Key("dca_ec");
  ASSERT_TRUE(dca);
  Result<std::string> sealed = Seal(msg_, {dsa, dsa_key, {}}, {dca});
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  std::ofstream(dir_ + "/ec.eml", std::ios::binary) << *sealed;
  EXPECT_EQ(Run("openssl cms -cmsout -print -in ec.eml | grep -q dhSinglePass && "
                "openssl cms -decrypt -in ec.eml -recip dca_ec.crt -inkey dca_ec.key -out ec-signed.eml && "
                "openssl cms -verify -binary -in ec-signed.eml -CAfile ca.crt -out ec-inner.eml"), 0);
  X509_STORE* trust = Trust();
  Result<Opened> o = Open(*sealed, {dca, dca_key}, trust);
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(o->message, msg_);
  X509_STORE_free(trust);
  X509_free(dsa);
  X509_free(dca);
  EVP_PKEY_free(dsa_key);
  EVP_PKEY_free(dca_key);
}

TEST_F(SealTest, WeOpenWhatOpensslCmsSeals) {
  std::ofstream(dir_ + "/wrapped.eml", std::ios::binary) << "Content-Type: message/rfc822\r\n\r\n" + msg_;
  ASSERT_EQ(Run("openssl cms -sign -binary -nodetach -in wrapped.eml -signer dsa_b.crt -inkey dsa_b.key -out s.eml && "
                "openssl cms -encrypt -binary -aes-256-gcm -in s.eml -out e.eml dca_a.crt"), 0);
  X509* dca = Cert("dca_a");
  EVP_PKEY* key = Key("dca_a");
  X509_STORE* trust = Trust();
  Result<Opened> o = Open(Slurp(dir_ + "/e.eml"), {dca, key}, trust);
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(o->message, msg_);
  EXPECT_EQ(o->signer_emails, std::vector<std::string>{"domain-signing-authority@agency-b.test"});
  // OpenSSL's default SMIMECapabilities list no AES-GCM: such a partner gets AES-256-CBC.
  EXPECT_NE(std::find(o->capabilities.begin(), o->capabilities.end(), "AES-256-CBC"), o->capabilities.end());
  EXPECT_EQ(ChooseCipher(o->capabilities), ContentCipher::kAes256Cbc);
  X509_STORE_free(trust);
  X509_free(dca);
  EVP_PKEY_free(key);
}

// Attachments and many recipients, both directions: openssl triple-wraps a message with a
// binary attachment for three domains (one recipient with RSA-OAEP); we open it as each of them.
// We seal for three recipients; openssl decrypts as each.
TEST_F(SealTest, AttachmentsAndManyRecipientsBothWays) {
  std::string attachment;
  for (int i = 0; i < 6000; ++i) attachment += static_cast<char>((i * 7919) % 256);
  const unsigned char* raw = reinterpret_cast<const unsigned char*>(attachment.data());
  std::string b64(attachment.size() * 4 / 3 + 8, '\0');
  b64.resize(static_cast<size_t>(EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()), raw,
                                                 static_cast<int>(attachment.size()))));
  std::string body;
  for (size_t i = 0; i < b64.size(); i += 76) body += b64.substr(i, 76) + "\r\n";
  const std::string msg = "From: alice@agency-a.test\r\nTo: x@agency-a.test, y@agency-b.test, z@agency-c.test\r\n"
                          "Subject: report\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
                          "--zz\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                          "Bericht über Maßnahmen\r\n--zz\r\nContent-Type: application/octet-stream\r\n"
                          "Content-Transfer-Encoding: base64\r\n\r\n" + body + "--zz--\r\n";
  std::ofstream(dir_ + "/many.eml", std::ios::binary) << "Content-Type: message/rfc822\r\n\r\n" + msg;
  ASSERT_EQ(Run("openssl cms -sign -binary -nodetach -in many.eml -signer dsa_b.crt -inkey dsa_b.key -out m1.eml && "
                "openssl cms -encrypt -binary -aes256 -in m1.eml -out m2.eml -recip dca_a.crt -keyopt rsa_padding_mode:oaep "
                "-recip dca_b.crt -recip dca_c.crt && "
                "openssl cms -sign -binary -nodetach -in m2.eml -signer dsa_b.crt -inkey dsa_b.key -out m3.eml"), 0);
  X509_STORE* trust = Trust();
  for (const char* who : {"dca_a", "dca_c"}) {
    X509* dca = Cert(who);
    EVP_PKEY* key = Key(who);
    Result<Opened> o = Open(Slurp(dir_ + "/m3.eml"), {dca, key}, trust);
    ASSERT_TRUE(o.ok()) << who << ": " << o.status().ToString();
    EXPECT_EQ(o->message, msg) << who;
    EXPECT_TRUE(o->signed_ok);
    EXPECT_EQ(o->layers, (std::vector<std::string>{"signed-data", "enveloped-data", "signed-data"}));
    X509_free(dca);
    EVP_PKEY_free(key);
  }
  X509 *dsa = Cert("dsa_a"), *ra = Cert("dca_a"), *rb = Cert("dca_b"), *rc = Cert("dca_c");
  EVP_PKEY* dsa_key = Key("dsa_a");
  SealOptions cbc;
  cbc.cipher = ContentCipher::kAes256Cbc;
  Result<std::string> sealed = Seal(msg, {dsa, dsa_key, {}}, {ra, rb, rc}, cbc);
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  std::ofstream(dir_ + "/ours-many.eml", std::ios::binary) << *sealed;
  for (const char* who : {"dca_a", "dca_b", "dca_c"}) {
    EXPECT_EQ(Run(std::string("openssl cms -decrypt -in ours-many.eml -recip ") + who + ".crt -inkey " + who +
                  ".key -out om.p7 && openssl cms -verify -binary -in om.p7 -CAfile ca.crt -out om.eml"), 0) << who;
    EXPECT_EQ(Slurp(dir_ + "/om.eml"), kWrapped + msg) << who;
  }
  X509_STORE_free(trust);
  for (X509* x : {dsa, ra, rb, rc}) X509_free(x);
  EVP_PKEY_free(dsa_key);
}

// The detached form (multipart/signed inside the encryption) over the canonical 7-bit message:
// openssl decrypts and verifies it; we open it; a message that holds a user's signed part with
// 8-bit content falls back to opaque signing rather than touch it (SEE-AG-2).
TEST_F(SealTest, DetachedSignatureOverTheCanonicalForm) {
  X509 *dsa = Cert("dsa_a"), *dca = Cert("dca_b");
  EVP_PKEY *dsa_key = Key("dsa_a"), *dca_key = Key("dca_b");
  SealOptions o;
  o.detached_signature = true;
  Result<std::string> sealed = Seal(msg_, {dsa, dsa_key, {}}, {dca}, o);
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  std::ofstream(dir_ + "/d.eml", std::ios::binary) << *sealed;
  ASSERT_EQ(Run("openssl cms -decrypt -in d.eml -recip dca_b.crt -inkey dca_b.key -out d-signed.eml && "
                "grep -q 'multipart/signed' d-signed.eml && "
                "openssl cms -verify -in d-signed.eml -CAfile ca.crt -out d-inner.eml"), 0);
  std::string inner = Slurp(dir_ + "/d-inner.eml");
  EXPECT_NE(inner.find("Content-Transfer-Encoding: quoted-printable"), std::string::npos) << "8bit made 7-bit";
  EXPECT_NE(inner.find("Gr=C3=BC=C3=9Fe"), std::string::npos);
  X509_STORE* trust = Trust();
  Result<Opened> opened = Open(*sealed, {dca, dca_key}, trust);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_TRUE(opened->signed_ok);
  EXPECT_TRUE(opened->rfc822);
  EXPECT_NE(opened->message.find("Subject: [IN-CONFIDENCE] budget"), std::string::npos);
  std::string user_signed = "From: a@agency-a.test\r\nContent-Type: multipart/signed; protocol=\"application/"
                            "pkcs7-signature\"; boundary=s\r\n\r\n--s\r\nContent-Type: text/plain\r\n"
                            "Content-Transfer-Encoding: 8bit\r\n\r\nsigné\r\n--s\r\nContent-Type: application/"
                            "pkcs7-signature\r\n\r\nAAAA\r\n--s--\r\n";
  Result<std::string> fallback = Seal(user_signed, {dsa, dsa_key, {}}, {dca}, o);
  ASSERT_TRUE(fallback.ok());
  Result<Opened> f = Open(*fallback, {dca, dca_key}, trust);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->message, user_signed) << "opaque signing kept the user's bytes exactly";
  X509_STORE_free(trust);
  X509_free(dsa);
  X509_free(dca);
  EVP_PKEY_free(dsa_key);
  EVP_PKEY_free(dca_key);
}

TEST_F(SealTest, TripleWrapInteroperatesWithOpensslCms) {
  X509 *dsa = Cert("dsa_a"), *dca = Cert("dca_b");
  EVP_PKEY *dsa_key = Key("dsa_a"), *dca_key = Key("dca_b");
  SealOptions opt;
  opt.triple_wrap = true;
  Result<std::string> sealed = Seal(msg_, {dsa, dsa_key, {}}, {dca}, opt);
  ASSERT_TRUE(sealed.ok());
  X509_STORE* trust = Trust();
  Result<Opened> o = Open(*sealed, {dca, dca_key}, trust);
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(o->message, msg_);
  EXPECT_EQ(o->layers, (std::vector<std::string>{"signed-data", "authEnveloped-data", "signed-data"}));
  std::ofstream(dir_ + "/t.eml", std::ios::binary) << *sealed;
  EXPECT_EQ(Run("openssl cms -verify -binary -in t.eml -CAfile ca.crt -out t-env.eml && "
                "openssl cms -decrypt -in t-env.eml -recip dca_b.crt -inkey dca_b.key -out t-signed.eml && "
                "openssl cms -verify -binary -in t-signed.eml -CAfile ca.crt -out t-inner.eml"), 0);
  EXPECT_EQ(Slurp(dir_ + "/t-inner.eml"), kWrapped + msg_);
  X509_STORE_free(trust);
  X509_free(dsa);
  X509_free(dca);
  EVP_PKEY_free(dsa_key);
  EVP_PKEY_free(dca_key);
}

TEST_F(SealTest, SignedOnlyDetachedAndEncryptedOnlyMessages) {
  std::ofstream(dir_ + "/w.eml", std::ios::binary) << "Content-Type: message/rfc822\r\n\r\n" + msg_;
  ASSERT_EQ(Run("openssl cms -sign -binary -nodetach -in w.eml -signer dsa_b.crt -inkey dsa_b.key -out so.eml && "
                "openssl cms -sign -binary -in w.eml -signer dsa_b.crt -inkey dsa_b.key -out det.eml && "
                "openssl cms -encrypt -binary -aes-256-cbc -in w.eml -out eo.eml dca_a.crt"), 0);
  X509* dca = Cert("dca_a");
  EVP_PKEY* key = Key("dca_a");
  X509_STORE* trust = Trust();
  Result<Opened> so = Open(Slurp(dir_ + "/so.eml"), {dca, key}, trust);
  ASSERT_TRUE(so.ok()) << so.status().ToString();
  EXPECT_EQ(so->message, msg_);
  EXPECT_TRUE(so->signed_ok);
  EXPECT_TRUE(so->cipher.empty()) << "signed, not encrypted";
  Result<Opened> det = Open(Slurp(dir_ + "/det.eml"), {dca, key}, trust);
  ASSERT_TRUE(det.ok()) << det.status().ToString();
  EXPECT_EQ(det->message, msg_) << "multipart/signed (detached) verifies over the exact part bytes";
  EXPECT_TRUE(det->signed_ok);
  Result<Opened> eo = Open(Slurp(dir_ + "/eo.eml"), {dca, key}, trust);
  ASSERT_TRUE(eo.ok()) << eo.status().ToString();
  EXPECT_EQ(eo->message, msg_);
  EXPECT_FALSE(eo->signed_ok) << "encrypted only: no verified mark";
  EXPECT_EQ(eo->layers, std::vector<std::string>{"enveloped-data"});
  X509_STORE_free(trust);
  X509_free(dca);
  EVP_PKEY_free(key);
}

TEST(Capabilities, StrongestCommonCipherNeverTripleDes) {
  EXPECT_EQ(ChooseCipher({"DES-EDE3-CBC", "id-aes128-GCM"}), ContentCipher::kAes128Gcm)
      << "only what the partner announced (RFC 8551 §2.7.1.1)";
  EXPECT_EQ(ChooseCipher({"AES-128-CBC", "DES-EDE3-CBC"}), ContentCipher::kAes128Cbc) << "issue #12: AES-128 only";
  EXPECT_EQ(ChooseCipher({"AES-192-CBC", "AES-128-CBC"}), ContentCipher::kAes192Cbc);
  EXPECT_EQ(ChooseCipher({"AES-128-CBC", "AES-256-CBC"}), ContentCipher::kAes256Cbc) << "the strongest both support";
  EXPECT_EQ(ChooseCipher({"DES-EDE3-CBC"}), ContentCipher::kAes128Cbc)
      << "3DES is never used to send: what every S/MIME 4.0 agent must read";
  EXPECT_EQ(ChooseCipher({}), ContentCipher::kAes256Cbc) << "unknown partner: what every agent reads";
}

TEST_F(SealTest, WrongKeyTamperingAndUntrustedSignersAreRefused) {
  X509 *dsa = Cert("dsa_a"), *dca_b = Cert("dca_b"), *dca_a = Cert("dca_a"), *forged = Cert("forged");
  EVP_PKEY *dsa_key = Key("dsa_a"), *dca_b_key = Key("dca_b"), *dca_a_key = Key("dca_a");
  X509_STORE* trust = Trust();
  Result<std::string> sealed = Seal(msg_, {dsa, dsa_key, {}}, {dca_b});
  ASSERT_TRUE(sealed.ok());
  Result<Opened> wrong = Open(*sealed, {dca_a, dca_a_key}, trust);
  EXPECT_EQ(wrong.status().code(), StatusCode::kPermissionDenied) << "not encrypted for agency-a";
  std::string tampered = *sealed;
  size_t pos = tampered.size() - 200;
  tampered[pos] = tampered[pos] == 'A' ? 'B' : 'A';
  EXPECT_FALSE(Open(tampered, {dca_b, dca_b_key}, trust).ok()) << "AES-GCM authenticates the content";
  // Same names, certificate from a CA we don't trust: decrypts, the signature's math holds,
  // but it is never "verified": the SEE-2.8 table gives a HARD warning (unknown CA).
  Result<std::string> forged_seal = Seal(msg_, {forged, dsa_key, {}}, {dca_b});
  ASSERT_TRUE(forged_seal.ok());
  Result<Opened> f = Open(*forged_seal, {dca_b, dca_b_key}, trust);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_TRUE(f->signature_ok);
  EXPECT_FALSE(f->signed_ok);
  EXPECT_EQ(f->cert_status, CertStatus::kUnknownCa) << f->cert_detail;
  EXPECT_EQ(f->message, msg_);
  EXPECT_FALSE(Open(msg_, {dca_b, dca_b_key}, trust).ok()) << "plain mail is not S/MIME";
  X509_STORE_free(trust);
  for (X509* x : {dsa, dca_b, dca_a, forged}) X509_free(x);
  for (EVP_PKEY* k : {dsa_key, dca_b_key, dca_a_key}) EVP_PKEY_free(k);
}

// Issue signs a certificate for `key` under the test CA with the given validity (seconds from
// now) and serial: for expired and revoked signers, which `openssl x509 -req` cannot make.
X509* Issue(X509* ca, EVP_PKEY* ca_key, EVP_PKEY* key, const char* email, long from_s, long to_s, long serial) {
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
  X509_gmtime_adj(X509_getm_notBefore(x), from_s);
  X509_gmtime_adj(X509_getm_notAfter(x), to_s);
  X509_set_pubkey(x, key);
  X509_NAME* n = X509_NAME_new();
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(email), -1, -1, 0);
  X509_set_subject_name(x, n);
  X509_NAME_free(n);
  X509_set_issuer_name(x, X509_get_subject_name(ca));
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, ca, x, nullptr, nullptr, 0);
  std::string san = std::string("email:") + email;
  for (auto [nid, v] : {std::pair<int, const char*>{NID_key_usage, "critical,digitalSignature"},
                        {NID_ext_key_usage, "emailProtection"}, {NID_subject_alt_name, san.c_str()},
                        {NID_subject_key_identifier, "hash"}, {NID_authority_key_identifier, "keyid:always"}}) {
    X509_EXTENSION* e = X509V3_EXT_conf_nid(nullptr, &ctx, nid, v);
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
  }
  X509_sign(x, ca_key, EVP_sha256());
  return x;
}

TEST_F(SealTest, CertificateStatusFollowsTheSee28Table) {
  X509 *ca = Cert("ca"), *dca_b = Cert("dca_b");
  EVP_PKEY *ca_key = Key("ca"), *dsa_key = Key("dsa_a"), *dca_b_key = Key("dca_b");
  X509* expired = Issue(ca, ca_key, dsa_key, "domain-signing-authority@agency-a.test", -86400 * 60, -86400, 9001);
  X509* revoked = Issue(ca, ca_key, dsa_key, "domain-signing-authority@agency-a.test", -60, 86400, 9002);
  X509* good = Issue(ca, ca_key, dsa_key, "domain-signing-authority@agency-a.test", -60, 86400, 9003);
  auto open_with = [&](X509* signer, X509_STORE* trust) {
    Result<std::string> sealed = Seal(msg_, {signer, dsa_key, {}}, {dca_b});
    EXPECT_TRUE(sealed.ok());
    Result<Opened> o = Open(*sealed, {dca_b, dca_b_key}, trust);
    EXPECT_TRUE(o.ok()) << o.status().ToString();
    EXPECT_TRUE(o->signature_ok) << "the signature's math holds in every case";
    EXPECT_EQ(o->message, msg_);
    return *o;
  };
  X509_STORE* trust = Trust();
  EXPECT_EQ(open_with(good, trust).cert_status, CertStatus::kValid);
  EXPECT_TRUE(open_with(good, trust).signed_ok);
  Opened e = open_with(expired, trust);
  EXPECT_EQ(e.cert_status, CertStatus::kExpired) << e.cert_detail;
  EXPECT_FALSE(e.signed_ok);
  // Revocation checking on: no CRL for the CA is "status unknown" (SOFT), a CRL listing the
  // serial is "revoked" (HARD), and that wins over "expired".
  X509_STORE_set_flags(trust, X509_V_FLAG_CRL_CHECK);
  EXPECT_EQ(open_with(good, trust).cert_status, CertStatus::kStatusUnknown);
  X509_CRL* crl = X509_CRL_new();
  X509_CRL_set_version(crl, 1);
  X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca));
  ASN1_TIME* now = X509_gmtime_adj(nullptr, -60);
  ASN1_TIME* next = X509_gmtime_adj(nullptr, 86400);
  X509_CRL_set1_lastUpdate(crl, now);
  X509_CRL_set1_nextUpdate(crl, next);
  ASN1_INTEGER* number = ASN1_INTEGER_new();
  ASN1_INTEGER_set(number, 1);
  X509_CRL_add1_ext_i2d(crl, NID_crl_number, number, 0, 0);   // RFC 5280 §5.2.3: a CRL without one is not used
  ASN1_INTEGER_free(number);
  for (X509* r : {revoked, expired}) {
    X509_REVOKED* rv = X509_REVOKED_new();
    X509_REVOKED_set_serialNumber(rv, X509_get_serialNumber(r));
    X509_REVOKED_set_revocationDate(rv, now);
    X509_CRL_add0_revoked(crl, rv);
  }
  X509_CRL_sort(crl);
  X509_CRL_sign(crl, ca_key, EVP_sha256());
  X509_STORE_add_crl(trust, crl);
  EXPECT_EQ(open_with(good, trust).cert_status, CertStatus::kValid);
  EXPECT_EQ(open_with(revoked, trust).cert_status, CertStatus::kRevoked);
  EXPECT_EQ(open_with(expired, trust).cert_status, CertStatus::kRevoked);
  ASN1_TIME_free(now);
  ASN1_TIME_free(next);
  X509_CRL_free(crl);
  X509_STORE_free(trust);
  for (X509* x : {ca, dca_b, expired, revoked, good}) X509_free(x);
  for (EVP_PKEY* k : {ca_key, dsa_key, dca_b_key}) EVP_PKEY_free(k);
}

TEST_F(SealTest, OaepKeyTransportWhenThePartnerAnnouncesIt) {
  X509 *dsa = Cert("dsa_a"), *dca_b = Cert("dca_b");
  EVP_PKEY *dsa_key = Key("dsa_a"), *dca_b_key = Key("dca_b");
  EXPECT_EQ(KeyTransportFor(OurCapabilities()), KeyTransport::kRsaOaep);
  EXPECT_EQ(KeyTransportFor({"AES-256-CBC"}), KeyTransport::kRsaPkcs1);
  SealOptions o;
  o.key_transport = KeyTransport::kRsaOaep;
  Result<std::string> sealed = Seal(msg_, {dsa, dsa_key, {}}, {dca_b}, o);
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  std::ofstream(dir_ + "/oaep.eml", std::ios::binary) << *sealed;
  ASSERT_EQ(Run("openssl cms -cmsout -print -in oaep.eml | grep -q rsaesOaep"), 0) << "RSAES-OAEP on the wire";
  ASSERT_EQ(Run("openssl cms -decrypt -in oaep.eml -inkey dca_b.key -recip dca_b.crt -out oaep.p7 && "
                "openssl cms -verify -in oaep.p7 -CAfile ca.crt -out oaep.out"), 0);
  X509_STORE* trust = Trust();
  Result<Opened> opened = Open(*sealed, {dca_b, dca_b_key}, trust);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_TRUE(opened->signed_ok);
  X509_STORE_free(trust);
  for (X509* x : {dsa, dca_b}) X509_free(x);
  for (EVP_PKEY* k : {dsa_key, dca_b_key}) EVP_PKEY_free(k);
}

}  // namespace
}  // namespace mailseal::smime

namespace mailseal::smime {
namespace {

// gpgsm (GnuPG 2.2) as the second independent implementation. It reads EnvelopedData
// (AES-CBC) but not AuthEnvelopedData: its 2.2 line fails on AES-GCM ("error getting IV"), so
// partners on gpgsm get CBC (they announce no GCM in SMIMECapabilities; SEE-2.4).
class GpgsmTest : public SealTest {
 protected:
  void SetUp() override {
    home_ = dir_ + "/gnupg";
    std::string cmd = StrCat(
        "rm -rf ", home_, " && mkdir -m 700 ", home_, " && echo allow-loopback-pinentry > ", home_,
        "/gpg-agent.conf && printf 'disable-crl-checks\\ndisable-dirmngr\\n' > ", home_, "/gpgsm.conf && cd ", dir_);
    for (const char* n : {"dca_b", "dsa_b"}) {
      cmd += StrCat(" && openssl pkcs12 -export -in ", n, ".crt -inkey ", n, ".key -out ", n,
                    ".p12 -passout pass:fixture -certpbe PBE-SHA1-3DES -keypbe PBE-SHA1-3DES -macalg sha1",
                    " && echo fixture | ", Gpg(), " --pinentry-mode loopback --passphrase-fd 0 --import ", n, ".p12");
    }
    cmd += StrCat(" && ", Gpg(), " --import ca.crt dsa_a.crt dca_a.crt dca_c.crt");
    cmd += StrCat(" && echo \"$(", Gpg(), " --with-colons --list-keys Test-CA | awk -F: '/^fpr/{print $10; exit}') S\" > ",
                  home_, "/trustlist.txt");
    // gpg-agent's loopback passphrase exchange fails now and then on a busy machine ("possibly
    // bad passphrase"); the set-up is retried from scratch, a real fault fails all three.
    int rc = -1;
    for (int attempt = 0; attempt < 3 && rc != 0; ++attempt) {
      if (attempt) Run(StrCat("GNUPGHOME=", home_, " gpgconf --kill all"));
      rc = Run(cmd);
    }
    ASSERT_EQ(rc, 0) << "gpgsm set-up failed";
  }
  // RunGpg: a gpgsm step that needs the key passphrase, retried like the set-up.
  int RunGpg(const std::string& cmd) {
    int rc = -1;
    for (int attempt = 0; attempt < 3 && rc != 0; ++attempt) rc = Run(cmd);
    return rc;
  }
  void TearDown() override { Run(StrCat("GNUPGHOME=", home_, " gpgconf --kill all")); }  // agent, dirmngr
  std::string Gpg() const { return StrCat("GNUPGHOME=", home_, " gpgsm --batch"); }
  static std::string DerOf(const std::string& smime) {  // the base64 body of an S/MIME entity
    size_t body = smime.find("\r\n\r\n", smime.find("application/pkcs7-mime"));
    std::string b64;
    for (char c : smime.substr(body + 4))
      if (c != '\r' && c != '\n') b64 += c;
    std::string der(b64.size(), '\0');
    int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(der.data()),
                            reinterpret_cast<const unsigned char*>(b64.data()), static_cast<int>(b64.size()));
    size_t pad = b64.size() >= 2 ? (b64[b64.size() - 1] == '=') + (b64[b64.size() - 2] == '=') : 0;
    der.resize(static_cast<size_t>(n) - pad);
    return der;
  }
  static std::string Lines(const std::string& b64) {  // MIME base64: lines of 76
    std::string out;
    for (size_t i = 0; i < b64.size(); i += 76) out += b64.substr(i, 76) + "\r\n";
    return out;
  }
  std::string home_;
};

TEST_F(GpgsmTest, GpgsmDecryptsAndVerifiesWhatWeSeal) {
  X509 *dsa = Cert("dsa_a"), *dca = Cert("dca_b");
  EVP_PKEY* key = Key("dsa_a");
  SealOptions o;
  o.cipher = ContentCipher::kAes256Cbc;
  Result<std::string> sealed = Seal(msg_, {dsa, key, {}}, {dca}, o);
  ASSERT_TRUE(sealed.ok());
  std::ofstream(dir_ + "/g-env.der", std::ios::binary) << DerOf(*sealed);
  ASSERT_EQ(RunGpg(StrCat("cd ", dir_, " && echo fixture | ", Gpg(),
                          " --pinentry-mode loopback --passphrase-fd 0 --decrypt --output g-signed.eml g-env.der")), 0)
      << "gpgsm could not decrypt";
  std::ofstream(dir_ + "/g-signed.der", std::ios::binary) << DerOf(Slurp(dir_ + "/g-signed.eml"));
  ASSERT_EQ(Run(StrCat("cd ", dir_, " && ", Gpg(), " --verify --output g-inner.eml g-signed.der")), 0)
      << "gpgsm did not accept the signature";
  EXPECT_EQ(Slurp(dir_ + "/g-inner.eml"), kWrapped + msg_);
  X509_free(dsa);
  X509_free(dca);
  EVP_PKEY_free(key);
}

// gpgsm signs a message with a binary attachment and encrypts it for two domains; we open it
// as each of them.
TEST_F(GpgsmTest, WeOpenWhatGpgsmSignsAndEncrypts) {
  std::string attachment;
  for (int i = 0; i < 3000; ++i) attachment += static_cast<char>((i * 31) % 256);
  std::string ab64(4 * ((attachment.size() + 2) / 3) + 1, '\0');
  ab64.resize(static_cast<size_t>(EVP_EncodeBlock(reinterpret_cast<unsigned char*>(ab64.data()),
                                                  reinterpret_cast<const unsigned char*>(attachment.data()),
                                                  static_cast<int>(attachment.size()))));
  const std::string msg = "From: b@agency-b.test\r\nTo: a@agency-a.test, c@agency-c.test\r\nSubject: files\r\n"
                          "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\n"
                          "Content-Type: text/plain\r\n\r\nsee attached\r\n--q\r\nContent-Type: application/octet-stream\r\n"
                          "Content-Transfer-Encoding: base64\r\n\r\n" + Lines(ab64) + "--q--\r\n";
  std::ofstream(dir_ + "/h-wrapped.eml", std::ios::binary) << "Content-Type: message/rfc822\r\n\r\n" + msg;
  ASSERT_EQ(RunGpg(StrCat("cd ", dir_, " && echo fixture | ", Gpg(), " --pinentry-mode loopback --passphrase-fd 0 ",
                          "--include-certs -1 -u domain-signing-authority@agency-b.test --sign --output h-s.der h-wrapped.eml")), 0);
  // Our Open reads S/MIME entities: wrap gpgsm's signed-data, have gpgsm encrypt that.
  std::string der = Slurp(dir_ + "/h-s.der");
  std::string b64(4 * ((der.size() + 2) / 3) + 1, '\0');
  b64.resize(static_cast<size_t>(EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()),
                                                 reinterpret_cast<const unsigned char*>(der.data()), static_cast<int>(der.size()))));
  std::ofstream(dir_ + "/h-entity.eml", std::ios::binary)
      << "Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m\r\n"
         "Content-Transfer-Encoding: base64\r\n\r\n" << Lines(b64);
  ASSERT_EQ(Run(StrCat("cd ", dir_, " && ", Gpg(), " -r domain-confidentiality-authority@agency-a.test ",
                       "-r domain-confidentiality-authority@agency-c.test --encrypt --output h-e.der h-entity.eml")), 0);
  std::string env = Slurp(dir_ + "/h-e.der");
  std::string eb(4 * ((env.size() + 2) / 3) + 1, '\0');
  eb.resize(static_cast<size_t>(EVP_EncodeBlock(reinterpret_cast<unsigned char*>(eb.data()),
                                                reinterpret_cast<const unsigned char*>(env.data()), static_cast<int>(env.size()))));
  std::string mail = "From: b@agency-b.test\r\nMIME-Version: 1.0\r\n"
                     "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n"
                     "Content-Transfer-Encoding: base64\r\n\r\n" + Lines(eb);
  X509_STORE* trust = Trust();
  for (const char* who : {"dca_a", "dca_c"}) {
    X509* dca = Cert(who);
    EVP_PKEY* key = Key(who);
    Result<Opened> o = Open(mail, {dca, key}, trust);
    ASSERT_TRUE(o.ok()) << who << ": " << o.status().ToString();
    EXPECT_EQ(o->message, msg) << who;
    EXPECT_TRUE(o->signed_ok);
    EXPECT_EQ(o->signer_emails, std::vector<std::string>{"domain-signing-authority@agency-b.test"});
    std::string caps;
    for (const std::string& c : o->capabilities) caps += c + " ";
    bool aes256 = std::find(o->capabilities.begin(), o->capabilities.end(), "AES-256-CBC") != o->capabilities.end();
    EXPECT_EQ(ChooseCipher(o->capabilities), aes256 ? ContentCipher::kAes256Cbc : ContentCipher::kAes128Cbc)
        << "gpgsm 2.2 announces no AES-GCM; we use the strongest of what it lists: " << caps;
    X509_free(dca);
    EVP_PKEY_free(key);
  }
  X509_STORE_free(trust);
}

}  // namespace
}  // namespace mailseal::smime
