// Issue #12 (trust): every way past the gateway's protection that was found by trying it, each
// closed and kept closed. REQUIREMENTS.md SEE-2.1, SEE-2.1b, SEE-2.4, SEE-2.6, SEE-2.8, SEE-2.10.
// Independent S/MIME peers: `openssl cms` signs whole RFC 5322 messages as a partner would;
// the test PKI (pki_fixture.h) issues the certificates. Software keys stand in for the token
// (the token path is trust_hsm_test and integration.trust).
#include <gtest/gtest.h>

#include <fstream>

#include "dataplane/policy/classify.h"
#include "dataplane/smime/gateway.h"
#include "dataplane/smime/naming.h"
#include "tests/dataplane/smime/pki_fixture.h"

namespace mailseal::smime {
namespace {
using testing::Slurp;

size_t Count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t at = hay.find(needle); at != std::string::npos; at = hay.find(needle, at + 1)) ++n;
  return n;
}

// HeaderOf: the header block of a message (up to the blank line).
std::string HeaderOf(const std::string& m) {
  size_t end = m.find("\r\n\r\n");
  return end == std::string::npos ? m : m.substr(0, end + 2);
}

// Fields: how many header fields called `name` the message's header has (at a line start).
size_t Fields(const std::string& m, const std::string& name) {
  std::string h = "\r\n" + HeaderOf(m);
  return Count(h, "\r\n" + name + ":");
}

// ---- 1. A header field that occurs more than once never hides a trigger word (SEE-2.1) ----

TEST(TrustClassify, EveryOccurrenceOfTheSubjectCounts) {
  using policy::Classify;
  EXPECT_EQ(Classify("Subject: lunch\r\nSubject: [RESTRICTED] budget\r\n\r\nx\r\n"), "[RESTRICTED]")
      << "a plain Subject first must not hide the classified one (issue #12 item 1)";
  EXPECT_EQ(Classify("Subject : [SEEMAIL] spaced\r\n\r\nx\r\n"), "[SEEMAIL]") << "RFC 5322 §4.5.3 'Subject :'";
  EXPECT_EQ(Classify("Subject: lunch\r\nsubject\t: {sensitive}\r\n\r\nx\r\n"), "[SENSITIVE]");
  EXPECT_EQ(Classify("Subject:\r\n [IN-CONFIDENCE]\r\n budget\r\n\r\nx\r\n"), "[IN-CONFIDENCE]") << "folded";
  // UTF-16 encoded words: a mail client shows "[RESTRICTED]", so do we.
  EXPECT_EQ(Classify("Subject: =?UTF-16BE?B?AFsAUgBFAFMAVABSAEkAQwBUAEUARABd?=\r\n\r\nx\r\n"), "[RESTRICTED]");
  EXPECT_EQ(Classify("Subject: =?utf-8?q?=5BRestricted=5D?= x\r\n\r\nx\r\n"), "[RESTRICTED]");
  EXPECT_EQ(Classify("Subject: =?utf-8?B?W1JF!U1RSSUNURURd?=\r\n\r\nx\r\n"), "[RESTRICTED]")
      << "a stray byte in base64 does not hide the word from us (lenient clients show it)";
  EXPECT_EQ(Classify("Subject: [RESTRICTED]=?utf-8?q?_x?=\r\n\r\nx\r\n"), "[RESTRICTED]");
  // A wrapped message (RFC 9788): whichever Content-Type a reader believes.
  EXPECT_EQ(Classify("Subject: [...]\r\nContent-Type: text/plain\r\nContent-Type: message/rfc822; forwarded=\"no\"\r\n\r\n"
                     "Subject: ok\r\nSubject: [RESTRICTED] inner\r\n\r\nbody\r\n"),
            "[RESTRICTED]");
  EXPECT_EQ(Classify("Subject: a\r\nX-Subject: [SEEMAIL]\r\n\r\n[RESTRICTED] body\r\n"), "")
      << "other fields and the body are not the Subject";
}

TEST(TrustClassify, AHostileSubjectCostsOnePass) {
  // Half a million "=?" that never complete used to be searched to the end each (quadratic:
  // minutes for a 1 MiB header); now one pass — this test would hit its 120 s timeout before.
  std::string junk;
  for (int i = 0; i < 170000; ++i) junk += "=?a?b ";   // never a whole word, no "?=" anywhere
  EXPECT_EQ(policy::Classify("Subject: " + junk + "[RESTRICTED]\r\n\r\nx\r\n"), "[RESTRICTED]");
  std::string unterminated;
  for (int i = 0; i < 170000; ++i) unterminated += "=?u?B?x";
  EXPECT_EQ(policy::Classify("Subject: " + unterminated + "\r\n\r\nx\r\n"), "");
}

TEST(TrustClassify, AForgedLabelIsRemovedHoweverItIsSpelt) {
  std::string labelled = policy::Label("X-Classification : TOP SECRET\r\nx-classification:\r\n FAKE\r\nSubject: s\r\n\r\nb\r\n",
                                       "X-Classification", "[RESTRICTED]");
  EXPECT_EQ(labelled, "X-Classification: RESTRICTED\r\nSubject: s\r\n\r\nb\r\n");
}

class TrustTest : public testing::GatewayPkiTest {
 protected:
  // Issue: a certificate from the test CA (or `ca`), with `subject` and extension lines.
  static void Issue(const std::string& name, const std::string& subject, const std::string& ext,
                    const std::string& key = "rsa:2048", const std::string& ca = "ca") {
    std::ofstream(dir_ + "/" + name + ".cnf") << "[x]\n" << ext;
    ASSERT_EQ(Run(StrCat("openssl req -newkey ", key, " -nodes -keyout ", name, ".key -out ", name, ".csr -subj '",
                         subject, "' && openssl x509 -req -in ", name, ".csr -CA ", ca, ".crt -CAkey ", ca,
                         ".key -CAcreateserial -days 30 -extfile ", name, ".cnf -extensions x -out ", name, ".crt")),
              0);
  }
  // CmsSign: `inner` (a whole RFC 5322 message) signed as it is by `signer` with `openssl cms`
  // as a partner's gateway might, the outer header given by openssl's -from/-to/-subject.
  static std::string CmsSign(const std::string& inner, const std::string& signer, const std::string& outer_from,
                             const std::string& outer_subject, const std::string& md = "sha256") {
    std::ofstream(dir_ + "/inner.eml", std::ios::binary) << inner;
    EXPECT_EQ(Run(StrCat("openssl cms -sign -in inner.eml -signer ", signer, ".crt -inkey ", signer,
                         ".key -nodetach -binary -md ", md, " -from '", outer_from, "' -to bob@agency-a.test -subject '",
                         outer_subject, "' -out signed.eml")),
              0);
    std::string out = Slurp(dir_ + "/signed.eml");
    // openssl writes LF line ends; SMTP carries CRLF.
    std::string crlf;
    for (char c : out) {
      if (c == '\n' && (crlf.empty() || crlf.back() != '\r')) crlf += '\r';
      crlf += c;
    }
    return crlf;
  }
};

const Output* Find(const std::vector<Output>& outs, Action a, uint32_t rcpt) {
  for (const Output& o : outs)
    if (o.action == a && std::find(o.rcpts.begin(), o.rcpts.end(), rcpt) != o.rcpts.end()) return &o;
  return nullptr;
}

// ---- 2. Protected and outer header fields combine; the user sees what was checked ----------

TEST_F(TrustTest, WholeMessageSignedByOpensslCmsDeliversOneFromAndChecksIt) {
  Side a = Make("a", {}, {"agency-b.test"});
  // A valid partner (agency-b's DSA) signs a whole message claiming to come from our CEO.
  std::string inner = "From: CEO <ceo@agency-a.test>\r\nTo: bob@agency-a.test\r\nSubject: transfer the funds\r\n"
                      "Message-ID: <in-1@agency-b.test>\r\n\r\nplease pay\r\n";
  std::string mail = CmsSign(inner, "dsa_b", "alice@agency-b.test", "quarterly report");
  std::vector<Output> outs = a.gw->Process("alice@agency-b.test", {"bob@agency-a.test"}, mail, a.keys);
  ASSERT_EQ(outs.size(), 1u);
  ASSERT_EQ(outs[0].action, Action::kDeliver) << outs[0].reason;
  const std::string& got = outs[0].body;
  EXPECT_EQ(Fields(got, "From"), 1u) << HeaderOf(got);
  EXPECT_EQ(Fields(got, "To"), 1u) << HeaderOf(got);
  EXPECT_EQ(Fields(got, "Subject"), 1u) << HeaderOf(got);
  EXPECT_NE(got.find("From: CEO <ceo@agency-a.test>"), std::string::npos) << "the protected From is the one shown";
  EXPECT_EQ(got.find("alice@agency-b.test>"), std::string::npos);
  EXPECT_NE(got.find("smime=fail"), std::string::npos) << HeaderOf(got);
  EXPECT_NE(got.find("author ceo@agency-a.test"), std::string::npos) << HeaderOf(got);
  EXPECT_NE(got.find("X-Mailseal-Auth-Level: none"), std::string::npos) << "never signed+verified";
  EXPECT_NE(got.find("Subject: [HARD WARNING: Sender address does not match the domain certificate"), std::string::npos)
      << "the warning is on the one Subject the user sees: " << HeaderOf(got);
  EXPECT_NE(got.find("please pay"), std::string::npos);

  // The same partner's honest whole-message signature: one of each field, the inner ones, pass.
  inner = "From: Bob B <bob@agency-b.test>\r\nTo: carol@agency-a.test\r\nSubject: inner subject\r\n\r\nhello\r\n";
  mail = CmsSign(inner, "dsa_b", "bob@agency-b.test", "outer subject");
  outs = a.gw->Process("bob@agency-b.test", {"carol@agency-a.test"}, mail, a.keys);
  ASSERT_EQ(outs[0].action, Action::kDeliver);
  EXPECT_EQ(Fields(outs[0].body, "From"), 1u);
  EXPECT_EQ(Fields(outs[0].body, "Subject"), 1u) << HeaderOf(outs[0].body);
  EXPECT_NE(outs[0].body.find("Subject: inner subject"), std::string::npos) << HeaderOf(outs[0].body);
  EXPECT_NE(outs[0].body.find("smime=pass"), std::string::npos) << HeaderOf(outs[0].body);
  EXPECT_NE(outs[0].body.find("outer To, From, Subject differed, the signed ones are shown"), std::string::npos)
      << "operators see what was removed: " << HeaderOf(outs[0].body);
}

TEST_F(TrustTest, EveryAuthorTheUserCanSeeIsChecked) {
  Side a = Make("a", {}, {"agency-b.test"});
  for (std::string from : {"bob@agency-b.test, ceo@agency-a.test", "\"ceo@agency-a.test\" <bob@agency-b.test>",
                           "bob@agency-b.test\r\nSender: ceo@agency-a.test", "undisclosed:;"}) {
    std::string inner = StrCat("From: ", from, "\r\nSubject: s\r\n\r\nx\r\n");
    std::string mail = CmsSign(inner, "dsa_b", "bob@agency-b.test", "s");
    std::vector<Output> outs = a.gw->Process("bob@agency-b.test", {"x@agency-a.test"}, mail, a.keys);
    ASSERT_EQ(outs[0].action, Action::kDeliver) << from;
    EXPECT_NE(outs[0].body.find("smime=fail"), std::string::npos) << from << "\n" << HeaderOf(outs[0].body);
    EXPECT_NE(outs[0].body.find("[HARD WARNING"), std::string::npos) << from;
  }
  // Two From fields in the signed content: one is delivered, and it is the one checked.
  std::string mail = CmsSign("From: bob@agency-b.test\r\nFrom: ceo@agency-a.test\r\nSubject: s\r\n\r\nx\r\n", "dsa_b",
                             "bob@agency-b.test", "s");
  std::vector<Output> outs = a.gw->Process("bob@agency-b.test", {"x@agency-a.test"}, mail, a.keys);
  EXPECT_EQ(Fields(outs[0].body, "From"), 1u) << HeaderOf(outs[0].body);
  EXPECT_EQ(outs[0].body.find("ceo@agency-a.test"), std::string::npos) << "the second From never reaches the user";
  EXPECT_NE(outs[0].body.find("smime=pass"), std::string::npos) << HeaderOf(outs[0].body);
}

TEST_F(TrustTest, AnUnknownCaSignerGetsTheWarningOnTheSubjectShown) {
  Side a = Make("a", {}, {"agency-b.test"});
  // forged.crt: agency-a's DSA name from Evil-CA; dsa_a.key is its key. Inner and outer Subjects differ.
  std::ofstream(dir_ + "/forged.key") << Slurp(dir_ + "/dsa_a.key");
  std::string mail = CmsSign("From: x@agency-a.test\r\nSubject: the real one\r\n\r\nx\r\n", "forged", "x@agency-a.test",
                 "the outer one");
  std::vector<Output> outs = a.gw->Process("x@agency-a.test", {"bob@agency-a.test"}, mail, a.keys);
  ASSERT_EQ(outs[0].action, Action::kDeliver) << outs[0].reason;
  EXPECT_EQ(Fields(outs[0].body, "Subject"), 1u) << HeaderOf(outs[0].body);
  EXPECT_NE(outs[0].body.find("Subject: [HARD WARNING: Certificate unknown - message integrity uncertain] the real one"),
            std::string::npos)
      << HeaderOf(outs[0].body);
}

// ---- 3. A content key that "works" by chance: noise is no MIME entity ----------------------

TEST_F(TrustTest, DecryptedNoiseIsHeldLikeAnyOtherDamage) {
  // What a wrong (implicitly rejected) content key yields once in 256 times with CBC: noise
  // with valid padding. It must be held like every other damage, never delivered.
  std::string noise(3000, '\0');
  for (size_t i = 0; i < noise.size(); ++i) noise[i] = static_cast<char>((i * 2654435761u) >> 13);
  std::ofstream(dir_ + "/noise.bin", std::ios::binary) << noise;
  ASSERT_EQ(Run("openssl cms -encrypt -binary -in noise.bin -recip dca_a.crt -aes256 -out noise.eml"), 0);
  std::string mail = Slurp(dir_ + "/noise.eml");
  std::string crlf;
  for (char ch : mail) {
    if (ch == '\n' && (crlf.empty() || crlf.back() != '\r')) crlf += '\r';
    crlf += ch;
  }
  Side a = Make("a", {}, {"agency-b.test"});
  std::vector<Output> outs = a.gw->Process("x@agency-b.test", {"bob@agency-a.test"},
                                           "From: x@agency-b.test\r\nSubject: n\r\n" + crlf, a.keys);
  ASSERT_EQ(outs.size(), 1u);
  EXPECT_EQ(outs[0].action, Action::kHold) << outs[0].reason;
  EXPECT_NE(outs[0].reason.find("cannot be decrypted for our domain"), std::string::npos) << outs[0].reason;
}

// ---- 4. SEE-2.6 whole: CN and rfc822Name --------------------------------------------------

TEST_F(TrustTest, ASignerThatBreaksTheNamingRuleIsWarnedAndNeverLearnt) {
  const std::string sign_ext =
      "keyUsage=critical,digitalSignature,nonRepudiation\nextendedKeyUsage=emailProtection\n";
  Issue("cn_only", "/CN=domain-signing-authority@agency-b.test", sign_ext);
  Issue("wrong_cn", "/CN=mallory", sign_ext + "subjectAltName=email:domain-signing-authority@agency-b.test\n");
  Issue("other_cn", "/CN=domain-signing-authority@agency-c.test",
        sign_ext + "subjectAltName=email:domain-signing-authority@agency-b.test\n");
  Issue("good_bare_cn", "/CN=domain-signing-authority", sign_ext + "subjectAltName=email:domain-signing-authority@agency-b.test\n");
  for (const char* bad : {"cn_only", "wrong_cn", "other_cn"}) {
    X509* x = Cert(bad);
    AuthorityNames n = ExamineAuthority(x, "domain-signing-authority");
    EXPECT_TRUE(n.claims) << bad;
    EXPECT_FALSE(n.problem.empty()) << bad;
    X509_free(x);
    Side a = Make("a", {}, {"agency-b.test"});
    std::string mail = CmsSign("From: bob@agency-b.test\r\nSubject: s\r\n\r\nx\r\n", bad, "bob@agency-b.test", "s");
    std::vector<Output> outs = a.gw->Process("bob@agency-b.test", {"x@agency-a.test"}, mail, a.keys);
    ASSERT_EQ(outs[0].action, Action::kDeliver) << bad << ": " << outs[0].reason;
    EXPECT_NE(outs[0].body.find("smime=fail (signature good, but the signing certificate is not a domain authority"),
              std::string::npos)
        << bad << " is not a user-level signature: " << HeaderOf(outs[0].body);
    EXPECT_NE(outs[0].body.find("Subject: [HARD WARNING"), std::string::npos) << bad;
    EXPECT_TRUE(a.store->KnownSigners().empty()) << bad << " must never be learnt";
    EXPECT_EQ(outs[0].reason.find("learnt"), std::string::npos) << bad;
  }
  X509* good = Cert("good_bare_cn");
  EXPECT_TRUE(ExamineAuthority(good, "domain-signing-authority").problem.empty()) << "our own CSRs' bare CN is fine";
  X509_free(good);
  // A pinned partner DCA is held to the same rule.
  Issue("dca_wrong_cn", "/CN=mallory",
        "keyUsage=critical,keyEncipherment\nextendedKeyUsage=emailProtection\n"
        "subjectAltName=email:domain-confidentiality-authority@agency-b.test\n");
  Side a = Make("a", {}, {"agency-b.test"});
  ASSERT_TRUE(a.store->Pin("agency-b.test", dir_ + "/dca_wrong_cn.crt").ok());
  std::vector<Output> outs =
      a.gw->Process("alice@agency-a.test", {"b@agency-b.test"}, "From: alice@agency-a.test\r\nSubject: s\r\n\r\nx\r\n", a.keys);
  ASSERT_EQ(outs.size(), 1u);
  EXPECT_EQ(outs[0].action, Action::kHold);
  EXPECT_NE(outs[0].reason.find("unsuitable: its CN 'mallory'"), std::string::npos) << outs[0].reason;
}

// ---- 5. Algorithms (SEE-2.4) ----------------------------------------------------------------

TEST_F(TrustTest, ContentCipherOnlyFromWhatThePartnerAnnounced) {
  Side a = Make("a", {}, {"agency-b.test"});
  ASSERT_TRUE(a.store->Pin("agency-b.test", dir_ + "/dca_b.crt").ok());
  a.store->Learn("agency-b.test", {}, {"AES-128-CBC", "DES-EDE3-CBC"});
  std::vector<Output> outs =
      a.gw->Process("alice@agency-a.test", {"b@agency-b.test"}, "From: alice@agency-a.test\r\nSubject: s\r\n\r\nx\r\n", a.keys);
  ASSERT_EQ(outs[0].action, Action::kDeliver) << outs[0].reason;
  EXPECT_NE(outs[0].protection.find("enveloped-data AES-128-CBC"), std::string::npos) << outs[0].protection;
  std::ofstream(dir_ + "/aes128.eml", std::ios::binary) << outs[0].body;
  // What an independent reader sees in the EnvelopedData: aes-128-cbc, never 3DES.
  ASSERT_EQ(Run("openssl cms -cmsout -print -inform SMIME -in aes128.eml > aes128.txt"), 0);
  std::string printed = Slurp(dir_ + "/aes128.txt");
  EXPECT_NE(printed.find("aes-128-cbc"), std::string::npos);
  EXPECT_EQ(printed.find("des-ede3"), std::string::npos);
}

TEST_F(TrustTest, WeakPartnerKeysAreUnsuitableBothWays) {
  Issue("dca_1024", "/CN=domain-confidentiality-authority@agency-b.test",
        "keyUsage=critical,keyEncipherment\nextendedKeyUsage=emailProtection\n"
        "subjectAltName=email:domain-confidentiality-authority@agency-b.test\n",
        "rsa:1024");
  Side a = Make("a", {}, {"agency-b.test"});
  ASSERT_TRUE(a.store->Pin("agency-b.test", dir_ + "/dca_1024.crt").ok());
  std::vector<Output> outs =
      a.gw->Process("alice@agency-a.test", {"b@agency-b.test"}, "From: alice@agency-a.test\r\nSubject: s\r\n\r\nx\r\n", a.keys);
  ASSERT_EQ(outs[0].action, Action::kHold);
  EXPECT_NE(outs[0].reason.find("RSA key has 1024 bits"), std::string::npos) << outs[0].reason;
  Issue("dsa_1024", "/CN=domain-signing-authority@agency-b.test",
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=emailProtection\n"
        "subjectAltName=email:domain-signing-authority@agency-b.test\n",
        "rsa:1024");
  Side a2 = Make("a", {}, {"agency-b.test"});
  std::string mail = CmsSign("From: bob@agency-b.test\r\nSubject: s\r\n\r\nx\r\n", "dsa_1024", "bob@agency-b.test", "s");
  outs = a2.gw->Process("bob@agency-b.test", {"x@agency-a.test"}, mail, a2.keys);
  ASSERT_EQ(outs[0].action, Action::kDeliver);
  EXPECT_NE(outs[0].body.find("smime=fail (signature good, but the signing certificate is unsuitable: its RSA key has 1024"),
            std::string::npos)
      << HeaderOf(outs[0].body);
  EXPECT_NE(outs[0].body.find("Subject: [HARD WARNING"), std::string::npos);
  EXPECT_TRUE(a2.store->KnownSigners().empty());
}

TEST_F(TrustTest, Sha1SignaturesAreReadableButNeverVerified) {
  Side a = Make("a", {}, {"agency-b.test"});
  std::string mail = CmsSign("From: bob@agency-b.test\r\nSubject: old\r\n\r\nlegacy\r\n", "dsa_b", "bob@agency-b.test", "old",
                             "sha1");
  std::vector<Output> outs = a.gw->Process("bob@agency-b.test", {"x@agency-a.test"}, mail, a.keys);
  ASSERT_EQ(outs[0].action, Action::kDeliver) << outs[0].reason;
  EXPECT_NE(outs[0].body.find("smime=policy (legacy SHA-1 signature"), std::string::npos) << HeaderOf(outs[0].body);
  EXPECT_NE(outs[0].body.find("X-Mailseal-Auth-Level: none"), std::string::npos);
  EXPECT_NE(outs[0].body.find("Subject: [SOFT WARNING: Legacy SHA-1 signature"), std::string::npos);
  EXPECT_NE(outs[0].body.find("legacy"), std::string::npos);
  EXPECT_TRUE(a.store->KnownSigners().empty()) << "nothing is learnt from a SHA-1 signature";
}

// ---- 6. No smime section: the policy still decides, and nothing it protects leaves ---------

TEST_F(TrustTest, WithoutSmimeWhatMustBeProtectedIsHeld) {
  GatewayPolicy p;
  p.local_domains = {"agency-a.test"};
  Gateway policy_only(&p, nullptr);
  mailseal::v1::PolicyDocument doc;
  doc.add_seemail_list()->set_domain("agency-b.test");
  auto* rule = doc.add_domain_rules();
  rule->set_domain("signed.test");
  rule->set_protection(mailseal::v1::DomainRule::PROTECTION_SIGN);
  auto compiled = policy::Compile(doc);
  std::string classified = "From: a@agency-a.test\r\nSubject: lunch\r\nSubject: [RESTRICTED] x\r\n\r\nsecret\r\n";
  std::vector<Output> outs = policy_only.Process("a@agency-a.test", {"x@plain.test", "b@agency-b.test", "me@agency-a.test"},
                                                 classified, {}, compiled.get());
  const Output* plain = Find(outs, Action::kHold, 0);
  const Output* listed = Find(outs, Action::kHold, 1);
  ASSERT_TRUE(plain && listed);
  EXPECT_NE(plain->reason.find("SEE-2.1b"), std::string::npos) << plain->reason;
  EXPECT_NE(listed->reason.find("no smime section is configured"), std::string::npos) << listed->reason;
  EXPECT_TRUE(Find(outs, Action::kPass, 2)) << "local mail is delivered as it is";
  std::string ordinary = "From: a@agency-a.test\r\nSubject: lunch\r\n\r\nhi\r\n";
  outs = policy_only.Process("a@agency-a.test", {"x@plain.test", "y@signed.test", "b@agency-b.test"}, ordinary, {},
                             compiled.get());
  EXPECT_TRUE(Find(outs, Action::kPass, 0)) << "ordinary mail keeps flowing (SEE-AG-1)";
  EXPECT_TRUE(Find(outs, Action::kHold, 1)) << "a SIGN rule cannot be met: held";
  EXPECT_TRUE(Find(outs, Action::kHold, 2)) << "a SEEMAIL domain is always sealed: held";
}

// ---- 8. Smaller ones ------------------------------------------------------------------------

TEST_F(TrustTest, ShowClassificationAlsoForEncodedSubjectsAndOurReceivedOutside) {
  Side a = Make("a", {}, {"agency-b.test"});
  ASSERT_TRUE(a.store->Pin("agency-b.test", dir_ + "/dca_b.crt").ok());
  a.policy.show_classification = true;
  std::string msg = "Received: from client.test (127.0.0.1:4000)\r\n\tby gw-a.test (mailseal) with ESMTP id Q1; "
                    "Mon, 30 Nov 2026 10:00:00 +0000\r\nReceived: from inside.agency-a.test\r\n"
                    "From: alice@agency-a.test\r\nSubject: =?UTF-8?B?W1JFU1RSSUNURURdIGJ1ZGdldA==?=\r\n\r\nx\r\n";
  std::vector<Output> outs = a.gw->Process("alice@agency-a.test", {"b@agency-b.test"}, msg, a.keys);
  ASSERT_EQ(outs[0].action, Action::kDeliver) << outs[0].reason;
  EXPECT_NE(outs[0].body.find("\r\nSubject: [RESTRICTED] [...]\r\n"), std::string::npos) << HeaderOf(outs[0].body);
  EXPECT_EQ(outs[0].body.rfind("Received: from client.test", 0), 0u)
      << "the sealed message carries our own Received: first (RFC 5321 §4.4): " << HeaderOf(outs[0].body);
  EXPECT_EQ(outs[0].body.find("inside.agency-a.test"), std::string::npos) << "inner hops stay inside the seal";
}

TEST_F(TrustTest, NotYetValidCertificatesGetTheirOwnSoftText) {
  EXPECT_NE(WarningFor(CertStatus::kNotYetValid).find("SOFT WARNING: Certificate not yet valid"), std::string::npos);
  EXPECT_NE(WarningFor(CertStatus::kExpired).find("SOFT WARNING: Certificate expired"), std::string::npos);
}

}  // namespace
}  // namespace mailseal::smime
