// smime::Gateway — what the crypto stage does with one message (issue #4; REQUIREMENTS.md
// SEE-AG-1/2/3, SEE-2.4, SEE-2.6, SEE-2.8, SEE-2.9, SEE-2.10, SM-8.2). Software keys from the
// test PKI stand in for the token keys (the token path is covered by smime_hsm_test and the
// two-gateway integration test).
#include "dataplane/smime/gateway.h"

#include <gtest/gtest.h>

#include "tests/dataplane/smime/pki_fixture.h"

namespace mailseal::smime {
namespace {
using testing::Slurp;

class GatewayTest : public testing::GatewayPkiTest {
 protected:
  std::string Mail(const std::string& from, const std::string& subject, const std::string& body) {
    return "From: " + from + "\r\nTo: bob@agency-b.test\r\nSubject: " + subject +
           "\r\nMessage-ID: <g1@agency-a.test>\r\n\r\n" + body + "\r\n";
  }
};

const Output* Find(const std::vector<Output>& outs, Action a, uint32_t rcpt) {
  for (const Output& o : outs)
    if (o.action == a && std::find(o.rcpts.begin(), o.rcpts.end(), rcpt) != o.rcpts.end()) return &o;
  return nullptr;
}

TEST_F(GatewayTest, SplitsByDomainSealsOncePerDomainAndPassesTheRest) {
  Side a = Make("a", {{"agency-b.test", "dca_b"}, {"agency-c.test", "dca_c"}}, {"agency-b.test", "agency-c.test"});
  std::string msg = Mail("alice@agency-a.test", "split", "to three domains");
  std::vector<Output> outs = a.gw->Process(
      "alice@agency-a.test", {"b1@agency-b.test", "c1@agency-c.test", "x@plain.test", "b2@Agency-B.test"}, msg, a.keys);
  ASSERT_EQ(outs.size(), 3u);
  const Output* b = Find(outs, Action::kDeliver, 0);
  const Output* c = Find(outs, Action::kDeliver, 1);
  const Output* plain = Find(outs, Action::kPass, 2);
  ASSERT_TRUE(b && c && plain);
  EXPECT_EQ(b->rcpts, (std::vector<uint32_t>{0, 3})) << "two users of one domain: sealed once (SEE-2.9)";
  EXPECT_EQ(plain->rcpts, std::vector<uint32_t>{2}) << "no rule for plain.test: unchanged (SEE-AG-1)";
  X509_STORE* trust = Trust();
  X509 *dca_b = Cert("dca_b"), *dca_c = Cert("dca_c");
  EVP_PKEY *kb = Key("dca_b"), *kc = Key("dca_c");
  Result<Opened> ob = Open(b->body, {dca_b, kb}, trust);
  ASSERT_TRUE(ob.ok()) << ob.status().ToString();
  EXPECT_EQ(ob->message, msg);
  EXPECT_FALSE(Open(b->body, {dca_c, kc}, trust).ok()) << "agency-c cannot read agency-b's copy";
  EXPECT_TRUE(Open(c->body, {dca_c, kc}, trust).ok());
  EXPECT_NE(b->protection.find("sealed for agency-b.test"), std::string::npos);
  X509_STORE_free(trust);
  X509_free(dca_b);
  X509_free(dca_c);
  EVP_PKEY_free(kb);
  EVP_PKEY_free(kc);
}

TEST_F(GatewayTest, PartnerMailWithoutAValidCertificateIsHeldNeverSentInClear) {
  Side a = Make("a", {{"agency-c.test", "dca_c_forged"}}, {"agency-c.test", "agency-d.test"});
  std::string msg = Mail("alice@agency-a.test", "hold", "secret");
  std::vector<Output> outs = a.gw->Process("alice@agency-a.test", {"c@agency-c.test", "d@sub.agency-d.test"}, msg, a.keys);
  const Output* c = Find(outs, Action::kHold, 0);
  const Output* d = Find(outs, Action::kHold, 1);
  ASSERT_TRUE(c && d);
  EXPECT_NE(c->reason.find("unknown-ca"), std::string::npos) << c->reason;
  EXPECT_NE(d->reason.find("no DCA certificate known for sub.agency-d.test (partner domain"), std::string::npos)
      << "a partner covers its sub-domains: " << d->reason;
  // And with the token gone, sealing defers rather than holds or passes (SEE-AG-4).
  Side a2 = Make("a", {{"agency-b.test", "dca_b"}}, {"agency-b.test"});
  a2.keys.dsa_key = nullptr;
  outs = a2.gw->Process("alice@agency-a.test", {"b@agency-b.test"}, msg, a2.keys);
  ASSERT_EQ(outs.size(), 1u);
  EXPECT_EQ(outs[0].action, Action::kTempFail);
}

TEST_F(GatewayTest, SealsForKnownNonPartnersOnlyWhenAskedAndOnlyWithValidCertificates) {
  Side a = Make("a", {{"agency-b.test", "dca_b"}, {"agency-c.test", "dca_c_forged"}}, {});
  std::string msg = Mail("alice@agency-a.test", "known", "x");
  std::vector<Output> outs = a.gw->Process("alice@agency-a.test", {"b@agency-b.test"}, msg, a.keys);
  ASSERT_EQ(outs.size(), 1u);
  EXPECT_EQ(outs[0].action, Action::kPass);
  a.policy.seal_when_known = true;  // SEE-2.9
  outs = a.gw->Process("alice@agency-a.test", {"b@agency-b.test", "c@agency-c.test"}, msg, a.keys);
  EXPECT_TRUE(Find(outs, Action::kDeliver, 0));
  EXPECT_TRUE(Find(outs, Action::kPass, 1)) << "an invalid certificate is never used, and c is no partner";
}

// Issue #6 (SEE-2.1b): the policy document's lists and rules decide per recipient.
TEST_F(GatewayTest, ClassifiedMailGoesOnlyToListedDomainsSealedElseHeld) {
  Side a = Make("a", {{"agency-b.test", "dca_b"}, {"agency-c.test", "dca_c"}}, {});
  a.policy.seal_when_known = true;
  std::string msg = Mail("alice@agency-a.test", "{restricted] budget", "4,217,000");
  std::vector<std::string> rcpts = {"b@agency-b.test", "c@agency-c.test", "x@plain.test"};
  // No document: classified mail to non-partners is held, even with a known certificate.
  std::vector<Output> outs = a.gw->Process("alice@agency-a.test", rcpts, msg, a.keys);
  for (uint32_t i = 0; i < 3; ++i) {
    const Output* h = Find(outs, Action::kHold, i);
    ASSERT_TRUE(h) << i;
    EXPECT_NE(h->reason.find("[RESTRICTED] mail to"), std::string::npos) << h->reason;
    EXPECT_NE(h->reason.find("SEE-2.1b"), std::string::npos) << h->reason;
  }
  // agency-b on the SEEMAIL list, c on TRUSTED: both sealed; plain.test still held.
  mailseal::v1::PolicyDocument doc;
  doc.set_version(3);
  doc.add_seemail_list()->set_domain("agency-b.test");
  doc.add_trusted_list()->set_domain("agency-c.test");
  auto compiled = policy::Compile(doc);
  outs = a.gw->Process("alice@agency-a.test", rcpts, msg, a.keys, compiled.get());
  const Output* b = Find(outs, Action::kDeliver, 0);
  const Output* c = Find(outs, Action::kDeliver, 1);
  const Output* x = Find(outs, Action::kHold, 2);
  ASSERT_TRUE(b && c && x);
  EXPECT_NE(b->protection.find("SEEMAIL-listed agency-b.test"), std::string::npos) << b->protection;
  EXPECT_NE(c->protection.find("TRUSTED-listed agency-c.test"), std::string::npos) << c->protection;
  EXPECT_NE(x->reason.find("[policy v3]"), std::string::npos) << "the hold names the policy version: " << x->reason;
  // Unclassified mail to a SEEMAIL domain without a certificate is held (it is a partner).
  doc.add_seemail_list()->set_domain("agency-d.test");
  compiled = policy::Compile(doc);
  outs = a.gw->Process("alice@agency-a.test", {"d@agency-d.test", "x@plain.test"},
                       Mail("alice@agency-a.test", "hello", "x"), a.keys, compiled.get());
  ASSERT_TRUE(Find(outs, Action::kHold, 0));
  EXPECT_TRUE(Find(outs, Action::kPass, 1)) << "ordinary mail keeps flowing (SEE-AG-1)";
  // SEE-1.9/1.8: the label and version header travel inside the seal; b's gateway labels what
  // it delivers from the inner Subject and removes a label forged outside.
  doc.set_classification_header("X-Classification");
  doc.set_seemail_version_header(true);
  compiled = policy::Compile(doc);
  outs = a.gw->Process("alice@agency-a.test", {"b@agency-b.test"}, msg, a.keys, compiled.get());
  ASSERT_EQ(outs.size(), 1u);
  Side bside = Make("b", {}, {"agency-a.test"});
  std::vector<Output> in = bside.gw->Process("alice@agency-a.test", {"bob@agency-b.test"}, outs[0].body, bside.keys,
                                             compiled.get());
  ASSERT_EQ(in[0].action, Action::kDeliver) << in[0].reason;
  EXPECT_NE(in[0].body.find("X-Classification: RESTRICTED\r\n"), std::string::npos) << in[0].body.substr(0, 500);
  EXPECT_NE(in[0].body.find("X-SEEMAIL-Version: 2.2\r\n"), std::string::npos);
  in = bside.gw->Process("eve@evil.test", {"bob@agency-b.test"},
                         "From: eve@evil.test\r\nX-Classification: RESTRICTED\r\nSubject: hi\r\n\r\nx\r\n", bside.keys,
                         compiled.get());
  ASSERT_EQ(in[0].action, Action::kDeliver);
  EXPECT_EQ(in[0].body.find("X-Classification"), std::string::npos) << "a forged label is removed: " << in[0].body;
  // SIGN rule for a domain without a known certificate: signed only, readable, verifiable.
  mailseal::v1::PolicyDocument sdoc;
  auto* sr = sdoc.add_domain_rules();
  sr->set_domain("agency-b.test");
  sr->set_protection(mailseal::v1::DomainRule::PROTECTION_SIGN);
  auto scomp = policy::Compile(sdoc);
  Side a3 = Make("a", {}, {});
  std::string plain = Mail("alice@agency-a.test", "public notice", "for everyone");
  outs = a3.gw->Process("alice@agency-a.test", {"b@agency-b.test"}, plain, a3.keys, scomp.get());
  ASSERT_EQ(outs.size(), 1u);
  ASSERT_EQ(outs[0].action, Action::kDeliver) << outs[0].reason;
  EXPECT_NE(outs[0].protection.find("signed for agency-b.test"), std::string::npos) << outs[0].protection;
  EXPECT_NE(outs[0].body.find("Subject: public notice"), std::string::npos) << "the real Subject: nothing is hidden";
  EXPECT_EQ(outs[0].body.find("enveloped-data"), std::string::npos);
  Side b3 = Make("b", {}, {"agency-a.test"});
  std::vector<Output> got = b3.gw->Process("alice@agency-a.test", {"bob@agency-b.test"}, outs[0].body, b3.keys);
  ASSERT_EQ(got[0].action, Action::kDeliver) << got[0].reason;
  EXPECT_NE(got[0].body.find("smime=pass"), std::string::npos) << got[0].body.substr(0, 400);
  EXPECT_NE(got[0].body.find("for everyone"), std::string::npos);
  // A per-address TRUSTED entry: one recipient of a domain sealed, the other held.
  mailseal::v1::PolicyDocument doc2;
  doc2.add_trusted_list()->set_domain("boss@agency-c.test");
  compiled = policy::Compile(doc2);
  outs = a.gw->Process("alice@agency-a.test", {"boss@agency-c.test", "clerk@agency-c.test"}, msg, a.keys, compiled.get());
  EXPECT_TRUE(Find(outs, Action::kDeliver, 0));
  EXPECT_TRUE(Find(outs, Action::kHold, 1));
}

// SEE-2.14: seemail-ping@ answers a verified probe, and only that, before any other rule.
// Issue #14: the policy stage's decision is typed and made before any key is used — the plan
// says, per domain group, what will be done and why, with the policy version.
TEST_F(GatewayTest, DecideGivesATypedPlanWithoutTouchingKeys) {
  Side a = Make("a", {{"agency-b.test", "dca_b"}}, {});
  mailseal::v1::PolicyDocument doc;
  doc.set_version(7);
  doc.add_seemail_list()->set_domain("agency-b.test");
  auto compiled = policy::Compile(doc);
  std::string msg = Mail("alice@agency-a.test", "[SEEMAIL] plan", "x");
  Plan plan = a.gw->Decide("alice@agency-a.test", {"b@agency-b.test", "x@plain.test", "me@agency-a.test"}, msg,
                           compiled.get());
  EXPECT_EQ(plan.policy_version, 7u);
  EXPECT_EQ(plan.classification, "[SEEMAIL]");
  EXPECT_EQ(plan.local, std::vector<uint32_t>{2});
  ASSERT_EQ(plan.remote.size(), 2u);
  for (const Plan::Group& g : plan.remote) {
    if (g.domain == "agency-b.test") {
      EXPECT_EQ(g.rcpts, std::vector<uint32_t>{0});
      EXPECT_NE(g.decision.protection, policy::Protection::kHold) << g.decision.reason;
      EXPECT_NE(g.decision.protection, policy::Protection::kPass) << "classified mail to a listed partner is sealed";
    } else {
      EXPECT_EQ(g.domain, "plain.test");
      EXPECT_EQ(g.decision.protection, policy::Protection::kHold) << "classified mail to an unlisted domain is held";
      EXPECT_NE(g.decision.reason.find("SEE-2.1b"), std::string::npos) << g.decision.reason;
    }
  }
  // Carrying the plan out with the same document gives what Process gives.
  std::vector<Output> outs = a.gw->Execute(plan, "alice@agency-a.test", msg, a.keys, compiled.get());
  ASSERT_TRUE(Find(outs, Action::kDeliver, 0));
  const Output* held = Find(outs, Action::kHold, 1);
  ASSERT_TRUE(held);
  EXPECT_EQ(held->policy_version, 7u);
}

TEST_F(GatewayTest, SeemailPingAnswersVerifiedProbesOnlyAndRateLimited) {
  Side a = Make("a", {{"agency-b.test", "dca_b"}}, {"agency-b.test"});
  Side b = Make("b", {}, {"agency-a.test"});
  b.policy.gateway_name = "gw.agency-b.test";
  PingLimiter limiter;
  Gateway gb(&b.policy, b.store.get(), &limiter);
  std::string probe = "From: alice@agency-a.test\r\nTo: seemail-ping@agency-b.test\r\nSubject: [RESTRICTED] ping\r\n"
                      "Message-ID: <probe-1@agency-a.test>\r\n\r\nping\r\n";
  std::vector<Output> sealed = a.gw->Process("alice@agency-a.test", {"seemail-ping@agency-b.test"}, probe, a.keys);
  ASSERT_EQ(sealed.size(), 1u);
  ASSERT_EQ(sealed[0].action, Action::kDeliver);
  mailseal::v1::PolicyDocument doc;
  doc.add_seemail_list()->set_domain("agency-z.test");
  auto compiled = policy::Compile(doc);
  std::vector<Output> outs = gb.Process("alice@agency-a.test", {"SEEMAIL-Ping@agency-b.test", "bob@agency-b.test"},
                                        sealed[0].body, b.keys, compiled.get());
  const Output* reply = Find(outs, Action::kDeliver, 0);
  const Output* bob = Find(outs, Action::kDeliver, 1);
  ASSERT_TRUE(reply && bob && reply != bob);
  EXPECT_EQ(reply->envelope_to, "alice@agency-a.test");
  EXPECT_EQ(reply->envelope_from, "seemail-ping@agency-b.test");
  EXPECT_TRUE(reply->require_seal) << "the reply leaves only sealed";
  EXPECT_NE(reply->body.find("SEEMAIL version: 2.2"), std::string::npos);
  EXPECT_NE(reply->body.find("Gateway: gw.agency-b.test"), std::string::npos);
  EXPECT_NE(reply->body.find("Partner domains: agency-a.test, agency-z.test"), std::string::npos) << reply->body;
  EXPECT_NE(reply->body.find("In-Reply-To: <probe-1@agency-a.test>"), std::string::npos);
  EXPECT_NE(reply->body.find("Probe: signed and encrypted, verified"), std::string::npos);
  EXPECT_NE(bob->body.find("smime=pass"), std::string::npos) << "other recipients are opened as usual";
  // A second probe from the same domain within a minute: no reply (rate limit).
  outs = gb.Process("alice@agency-a.test", {"seemail-ping@agency-b.test"}, sealed[0].body, b.keys);
  ASSERT_EQ(outs.size(), 1u);
  EXPECT_EQ(outs[0].action, Action::kConsume);
  EXPECT_NE(outs[0].reason.find("rate limited"), std::string::npos) << outs[0].reason;
  // An unsigned probe: consumed, no reply (no open reflector).
  PingLimiter fresh;
  Gateway gb2(&b.policy, b.store.get(), &fresh);
  outs = gb2.Process("mallory@evil.test", {"seemail-ping@agency-b.test"}, probe, b.keys);
  ASSERT_EQ(outs.size(), 1u);
  EXPECT_EQ(outs[0].action, Action::kConsume);
  EXPECT_NE(outs[0].reason.find("not signed by a verified domain authority"), std::string::npos) << outs[0].reason;
  // The reply, processed as our own outbound mail, must be sealed: without a certificate it is held.
  outs = b.gw->Process("seemail-ping@agency-b.test", {"alice@nowhere.test"}, reply->body, b.keys, nullptr, true);
  ASSERT_EQ(outs.size(), 1u);
  EXPECT_EQ(outs[0].action, Action::kHold) << outs[0].reason;
}

TEST_F(GatewayTest, MailSealedToOurPreviousDcaStillOpensAfterARollover) {
  // A partner sealed to agency-b's DCA; agency-b has since rolled its DCA over (here: to
  // another key pair of the test PKI). With the old pair kept as previous_dca the mail opens;
  // without it, no layer is ours: it goes on as someone else's S/MIME (SEE-AG-2), unreadable.
  Side a = Make("a", {{"agency-b.test", "dca_b"}}, {"agency-b.test"});
  std::vector<Output> sealed = a.gw->Process("alice@agency-a.test", {"bob@agency-b.test"},
                                             Mail("alice@agency-a.test", "rollover", "in transit"), a.keys);
  ASSERT_EQ(sealed.size(), 1u);
  ASSERT_EQ(sealed[0].action, Action::kDeliver);
  Side b = Make("b", {}, {"agency-a.test"});
  GatewayKeys rolled = b.keys;
  rolled.dca_cert = Ref(Cert("dca_c"));
  rolled.dca_key = Key("dca_c");
  keys_.push_back(rolled.dca_key);
  std::vector<Output> out = b.gw->Process("alice@agency-a.test", {"bob@agency-b.test"}, sealed[0].body, rolled);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(out[0].body.find("in transit") == std::string::npos && out[0].body.find("smime=pass") == std::string::npos)
      << "the new key alone cannot open it";
  rolled.previous_dca.emplace_back(b.keys.dca_cert, b.keys.dca_key);
  out = b.gw->Process("alice@agency-a.test", {"bob@agency-b.test"}, sealed[0].body, rolled);
  ASSERT_EQ(out.size(), 1u);
  ASSERT_EQ(out[0].action, Action::kDeliver) << out[0].reason;
  EXPECT_NE(out[0].body.find("in transit"), std::string::npos);
  EXPECT_NE(out[0].body.find("smime=pass"), std::string::npos);
}

TEST_F(GatewayTest, CertificateRequestsAreAnsweredSignedAndAnswersAreRead) {
  // SEE-2.8b: a signed request to domain-certificate-request@, the Subject naming the
  // certificate wanted; the answer carries it as an attachment.
  Side a = Make("a", {}, {"agency-b.test"});
  Side b = Make("b", {}, {"agency-a.test"});
  PingLimiter limiter;
  Gateway gb(&b.policy, b.store.get(), &limiter);
  std::string request = CertificateRequest("domain-certificate-request@agency-a.test", "agency-b.test", "gw-a.test", 1);
  EXPECT_NE(request.find("Subject: domain-confidentiality-authority@agency-b.test\r\n"), std::string::npos);
  // A's request leaves signed although A knows no certificate of B's (require_signature).
  std::vector<Output> out = a.gw->Process("domain-certificate-request@agency-a.test",
                                          {"domain-certificate-request@agency-b.test"}, request, a.keys);
  ASSERT_EQ(out.size(), 1u);
  ASSERT_EQ(out[0].action, Action::kHold) << "without the flag: a partner without a certificate is held";
  out = a.gw->Execute(a.gw->Decide("domain-certificate-request@agency-a.test", {"domain-certificate-request@agency-b.test"},
                                   request, nullptr, false, /*require_signature=*/true),
                      "domain-certificate-request@agency-a.test", request, a.keys);
  ASSERT_EQ(out.size(), 1u);
  ASSERT_EQ(out[0].action, Action::kDeliver) << out[0].reason;
  EXPECT_EQ(out[0].treatment, Treatment::kSigned);
  // B answers with its DCA certificate attached, signed (require_signature), to A's address.
  std::vector<Output> answer = gb.Process("domain-certificate-request@agency-a.test",
                                          {"domain-certificate-request@agency-b.test"}, out[0].body, b.keys);
  ASSERT_EQ(answer.size(), 1u);
  ASSERT_EQ(answer[0].action, Action::kDeliver) << answer[0].reason;
  EXPECT_EQ(answer[0].treatment, Treatment::kCertAnswer);
  EXPECT_TRUE(answer[0].require_signature);
  EXPECT_EQ(answer[0].envelope_to, "domain-certificate-request@agency-a.test");
  size_t attached = 0;
  std::vector<X509Ref> certs = CertificatesIn(answer[0].body, &attached);
  ASSERT_EQ(attached, 1u);
  ASSERT_EQ(certs.size(), 1u);
  EXPECT_EQ(X509_cmp(certs[0].get(), b.keys.dca_cert.get()), 0) << "the attachment is B's DCA certificate";
  // A second request within the minute: not answered (rate limit).
  answer = gb.Process("domain-certificate-request@agency-a.test", {"domain-certificate-request@agency-b.test"},
                      out[0].body, b.keys);
  ASSERT_EQ(answer.size(), 1u);
  EXPECT_EQ(answer[0].action, Action::kConsume);
  // An unsigned request and one naming a certificate that is not ours: no answer.
  PingLimiter fresh;
  Gateway gb2(&b.policy, b.store.get(), &fresh);
  answer = gb2.Process("x@agency-a.test", {"domain-certificate-request@agency-b.test"}, request, b.keys);
  ASSERT_EQ(answer.size(), 1u);
  EXPECT_EQ(answer[0].action, Action::kConsume);
  EXPECT_NE(answer[0].reason.find("not signed"), std::string::npos) << answer[0].reason;
  std::string other = request;
  other.replace(other.find("Subject: domain-confidentiality-authority@agency-b.test"),
                std::string("Subject: domain-confidentiality-authority@agency-b.test").size(),
                "Subject: domain-confidentiality-authority@agency-z.test");
  out = a.gw->Execute(a.gw->Decide("domain-certificate-request@agency-a.test", {"domain-certificate-request@agency-b.test"},
                                   other, nullptr, false, true),
                      "domain-certificate-request@agency-a.test", other, a.keys);
  ASSERT_EQ(out.size(), 1u);
  answer = gb2.Process("domain-certificate-request@agency-a.test", {"domain-certificate-request@agency-b.test"},
                       out[0].body, b.keys);
  ASSERT_EQ(answer.size(), 1u);
  EXPECT_EQ(answer[0].action, Action::kConsume);
  EXPECT_NE(answer[0].reason.find("no certificate of ours"), std::string::npos) << answer[0].reason;
}

TEST(CertificatesIn, ReadsCerP7cAndPemAttachmentsAndSkipsGarbage) {
  std::string pem = "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n";
  std::string m = "From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"x\"\r\n\r\n"
                  "--x\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
                  "--x\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"junk.cer\"\r\n"
                  "Content-Transfer-Encoding: base64\r\n\r\nAAECAwQF\r\n"
                  "--x\r\nContent-Type: application/x-pem-file; name=\"c.crt\"\r\n\r\n" + pem +
                  "--x--\r\n";
  size_t attached = 0;
  std::vector<X509Ref> certs = CertificatesIn(m, &attached);
  EXPECT_EQ(attached, 2u) << "both attachments are recognised by their names";
  EXPECT_TRUE(certs.empty()) << "neither is a certificate";
  EXPECT_TRUE(CertificatesIn("not a message at all").empty());
}

TEST_F(GatewayTest, OpensVerifiesMarksAndLearnsTheSenderDomain) {
  Side a = Make("a", {{"agency-b.test", "dca_b"}}, {"agency-b.test"});
  Side b = Make("b", {}, {"agency-a.test"});
  std::string msg = "From: Alice <alice@hr.agency-a.test>\r\nTo: bob@agency-b.test\r\nSubject: [SENSITIVE] plan\r\n"
                    "Authentication-Results: GW-B.test; smime=pass (forged)\r\n"
                    "X-Mailseal-Auth-Level: signed+verified (forged)\r\n"
                    "Authentication-Results: other.example; spf=pass\r\n\r\nthe plan\r\n";
  std::vector<Output> sealed = a.gw->Process("alice@hr.agency-a.test", {"bob@agency-b.test"}, msg, a.keys);
  ASSERT_EQ(sealed.size(), 1u);
  ASSERT_EQ(sealed[0].action, Action::kDeliver);
  std::string wire = "Received: from gw-a.test by gw-b.test; Sun, 22 Nov 2026 08:00:00 +0000\r\n" + sealed[0].body;
  std::vector<Output> opened = b.gw->Process("alice@hr.agency-a.test", {"bob@agency-b.test"}, wire, b.keys);
  ASSERT_EQ(opened.size(), 1u);
  ASSERT_EQ(opened[0].action, Action::kDeliver) << opened[0].reason;
  const std::string& got = opened[0].body;
  EXPECT_EQ(got.rfind("X-Mailseal-Auth-Level: signed+verified\r\n"
                      "Authentication-Results: gw-b.test; smime=pass (signed by the domain of agency-a.test", 0), 0u)
      << got;
  EXPECT_EQ(got.find("(forged)"), std::string::npos) << "SM-8.2: marks from outside are removed first";
  EXPECT_NE(got.find("body.smime-identifier=domain-signing-authority@agency-a.test"), std::string::npos);
  EXPECT_EQ(got.find("(forged)"), std::string::npos) << "our name in a foreign mark: removed (RFC 8601 §5)";
  EXPECT_NE(got.find("Authentication-Results: other.example; spf=pass"), std::string::npos) << "others' marks stay";
  EXPECT_NE(got.find("Received: from gw-a.test by gw-b.test"), std::string::npos) << "trace fields kept";
  EXPECT_NE(got.find("Subject: [SENSITIVE] plan\r\n"), std::string::npos) << "protected Subject restored";
  EXPECT_NE(got.find("\r\n\r\nthe plan\r\n"), std::string::npos);
  // SEE-2.10: b now knows a's DCA and capabilities, and seals the reply to them without a pin.
  EXPECT_TRUE(b.store->Dca("agency-a.test"));
  EXPECT_FALSE(b.store->Capabilities("agency-a.test").empty());
  std::vector<Output> reply = b.gw->Process("bob@agency-b.test", {"alice@hr.agency-a.test"},
                                            Mail("bob@agency-b.test", "re", "ok"), b.keys);
  ASSERT_EQ(reply.size(), 1u);
  EXPECT_EQ(reply[0].action, Action::kDeliver);
  EXPECT_NE(reply[0].protection.find("AES-256-GCM"), std::string::npos) << "a announced GCM (SEE-2.4)";
}

// SEE-2.10: a signature that arrives without certificates is verified with the DSA certificate
// the store learnt earlier. Before that nobody can tell a domain signature from a user's, so
// the message goes on intact and unverified (smime=none, SEE-AG-2) — never marked verified.
TEST_F(GatewayTest, MessagesWithoutCertificatesVerifyFromTheStore) {
  Side b = Make("b", {}, {});
  std::ofstream(dir_ + "/nc.eml", std::ios::binary)
      << "Content-Type: message/rfc822\r\n\r\nFrom: alice@agency-a.test\r\nSubject: nocerts\r\n\r\nx\r\n";
  ASSERT_EQ(Run("openssl cms -sign -binary -nodetach -nocerts -in nc.eml -signer dsa_a.crt -inkey dsa_a.key "
                "-out nc-signed.eml"), 0);
  std::string nocerts = Slurp(dir_ + "/nc-signed.eml");
  std::vector<Output> before = b.gw->Process("alice@agency-a.test", {"bob@agency-b.test"}, nocerts, b.keys);
  ASSERT_EQ(before[0].action, Action::kDeliver);
  EXPECT_NE(before[0].body.find("smime=none"), std::string::npos);
  EXPECT_NE(before[0].body.find(nocerts), std::string::npos) << "left intact";
  X509* dsa = Cert("dsa_a");
  b.store->Learn("agency-a.test", {Ref(dsa)}, {});
  std::vector<Output> after = b.gw->Process("alice@agency-a.test", {"bob@agency-b.test"}, nocerts, b.keys);
  ASSERT_EQ(after[0].action, Action::kDeliver) << after[0].reason;
  EXPECT_NE(after[0].body.find("smime=pass"), std::string::npos);
}

TEST_F(GatewayTest, NamingMismatchAndUnknownCaGetHardWarnings) {
  Side a = Make("a", {{"agency-b.test", "dca_b"}}, {"agency-b.test"});
  Side b = Make("b", {}, {});
  // Signed by agency-a's DSA, but the From is in another domain (SEE-2.6).
  std::vector<Output> s1 = a.gw->Process("eve@evil.test", {"bob@agency-b.test"},
                                         "From: eve@evil.test\r\nTo: bob@agency-b.test\r\n\r\nhi\r\n", a.keys);
  ASSERT_EQ(s1.size(), 1u);
  std::vector<Output> o1 = b.gw->Process("eve@evil.test", {"bob@agency-b.test"}, s1[0].body, b.keys);
  ASSERT_EQ(o1[0].action, Action::kDeliver);
  EXPECT_NE(o1[0].body.find("smime=fail"), std::string::npos);
  EXPECT_NE(o1[0].body.find("Subject: [HARD WARNING: Sender address does not match the domain certificate"),
            std::string::npos) << "no Subject: one is added for the warning\n" << o1[0].body;
  EXPECT_FALSE(b.store->Dca("agency-a.test")) << "nothing is learnt from a mismatched message: " << o1[0].reason << o1[0].protection;
  // SEE 2.11: relayed by a Trusted Listserv (by address, and EHLO name when given), SOFT.
  mailseal::v1::PolicyDocument doc;
  auto* t = doc.add_trusted_servers();
  t->set_kind(mailseal::v1::TrustedServer::KIND_LISTSERV);
  t->set_address("192.0.2.0/24");
  t->set_name("lists.agency-a.test");
  auto compiled = policy::Compile(doc);
  struct Via {
    Inbound in;
    const char* want;
  } vias[] = {{{"192.0.2.10:2525", "LISTS.agency-a.test", "", "", ""}, "[SOFT WARNING: Sender address does not match"},
              {{"192.0.2.10:2525", "other.test", "", "", ""}, "[HARD WARNING: Sender address"},     // the name must match too
              {{"198.51.100.1:25", "lists.agency-a.test", "", "", ""}, "[HARD WARNING: Sender address"},   // saying is not being
              {{"", "", "", "", ""}, "[HARD WARNING: Sender address"}};
  for (const Via& v : vias) {
    std::vector<Output> o = b.gw->Process("eve@evil.test", {"bob@agency-b.test"}, s1[0].body, b.keys, compiled.get(),
                                          false, &v.in);
    ASSERT_EQ(o[0].action, Action::kDeliver);
    EXPECT_NE(o[0].body.find(v.want), std::string::npos) << v.in.client_address << " " << v.in.helo;
  }
  t->set_name("");
  t->set_kind(mailseal::v1::TrustedServer::KIND_SERVER);
  t->set_address("2001:db8::/64");
  compiled = policy::Compile(doc);
  Inbound v6{"[2001:db8::7]:25", "anything.test", "", "", ""};
  std::vector<Output> o6 = b.gw->Process("eve@evil.test", {"bob@agency-b.test"}, s1[0].body, b.keys, compiled.get(),
                                         false, &v6);
  EXPECT_NE(o6[0].body.find("relayed by trusted server [2001:db8::/64]: warning softened"), std::string::npos)
      << o6[0].body.substr(0, 400);
  // Same names from an untrusted CA: HARD "Certificate unknown" (SEE-2.8).
  a.keys.dsa_cert = Ref(Cert("forged"));
  std::vector<Output> s2 = a.gw->Process("alice@agency-a.test", {"bob@agency-b.test"},
                                         Mail("alice@agency-a.test", "pay now", "x"), a.keys);
  std::vector<Output> o2 = b.gw->Process("alice@agency-a.test", {"bob@agency-b.test"}, s2[0].body, b.keys);
  ASSERT_EQ(o2[0].action, Action::kDeliver);
  EXPECT_NE(o2[0].body.find("Subject: [HARD WARNING: Certificate unknown - message integrity uncertain] pay now"),
            std::string::npos);
  EXPECT_FALSE(b.store->Dca("agency-a.test"));
}

TEST_F(GatewayTest, OuterSubjectIsAPlaceholderUnlessPolicyShowsTheClassification) {
  EXPECT_EQ(ClassificationWord("re: {in confidence] budget"), "[IN-CONFIDENCE]") << "SEE-2.1 bracket mix";
  EXPECT_EQ(ClassificationWord("[Restricted} x"), "[RESTRICTED]");
  EXPECT_EQ(ClassificationWord("restricted, no brackets"), "");
  Side a = Make("a", {{"agency-b.test", "dca_b"}}, {"agency-b.test"});
  std::string msg = Mail("alice@agency-a.test", "{restricted] the plan", "x");
  auto outer_subject = [&] {
    std::vector<Output> o = a.gw->Process("alice@agency-a.test", {"bob@agency-b.test"}, msg, a.keys);
    size_t at = o[0].body.find("Subject: ");
    return o[0].body.substr(at, o[0].body.find("\r\n", at) - at);
  };
  EXPECT_EQ(outer_subject(), "Subject: [...]") << "RFC 9788: the real Subject travels inside only";
  a.policy.show_classification = true;
  EXPECT_EQ(outer_subject(), "Subject: [RESTRICTED] [...]");
  a.policy.keep_subject = true;
  EXPECT_EQ(outer_subject(), "Subject: {restricted] the plan");
  // A partner that wants a detached inner signature gets multipart/signed inside.
  a.policy.partners["agency-b.test"].detached_signature = true;
  std::vector<Output> o = a.gw->Process("alice@agency-a.test", {"bob@agency-b.test"}, msg, a.keys);
  X509_STORE* trust = Trust();
  X509* dca = Cert("dca_b");
  EVP_PKEY* k = Key("dca_b");
  Result<Opened> opened = Open(o[0].body, {dca, k}, trust);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_TRUE(opened->signed_ok);
  X509_STORE_free(trust);
  X509_free(dca);
  EVP_PKEY_free(k);
}

TEST_F(GatewayTest, BrokenInputIsHeldWithAReason) {
  Side b = Make("b", {}, {});
  for (const std::string& bad :
       {std::string("Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\r\nAAAA\r\n"),
        std::string("Content-Type: application/pkcs7-mime\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!\r\n")}) {
    std::vector<Output> o = b.gw->Process("x@agency-a.test", {"bob@agency-b.test"}, bad, b.keys);
    ASSERT_EQ(o.size(), 1u);
    EXPECT_EQ(o[0].action, Action::kHold);
    EXPECT_NE(o[0].reason.find("S/MIME could not be opened"), std::string::npos) << o[0].reason;
  }
  // A nesting bomb: five domain signatures deep (more than the 4 layers we peel).
  std::ofstream(dir_ + "/n0.eml", std::ios::binary) << "Content-Type: text/plain\r\n\r\nbomb\r\n";
  for (int i = 0; i < 5; ++i)
    ASSERT_EQ(Run("openssl cms -sign -binary -nodetach -in n" + std::to_string(i) + ".eml -signer dsa_a.crt -inkey "
                  "dsa_a.key -outform SMIME -out n" + std::to_string(i + 1) + ".eml"), 0);
  std::vector<Output> o = b.gw->Process("x@agency-a.test", {"bob@agency-b.test"}, Slurp(dir_ + "/n5.eml"), b.keys);
  ASSERT_EQ(o.size(), 1u);
  EXPECT_EQ(o[0].action, Action::kHold);
  EXPECT_NE(o[0].reason.find("more than 4 S/MIME layers"), std::string::npos) << o[0].reason;
}

TEST_F(GatewayTest, UserLevelSmimeInsideTravelsByteExact) {
  // SEE-AG-2: alice signed her own message (detached multipart/signed); the gateways seal and
  // open around it and her signature still verifies on the bytes bob receives.
  std::ofstream(dir_ + "/u.txt", std::ios::binary) << "Content-Type: text/plain\r\n\r\nsigned by alice  \r\n";
  ASSERT_EQ(Run("openssl req -x509 -newkey rsa:2048 -nodes -keyout alice.key -out alice.crt -subj /CN=alice "
                "-days 2 && openssl cms -sign -in u.txt -signer alice.crt -inkey alice.key -out u.eml "
                "-from alice@agency-a.test -to bob@agency-b.test -subject user-signed"), 0);
  std::string user = Slurp(dir_ + "/u.eml");
  Side a = Make("a", {{"agency-b.test", "dca_b"}}, {"agency-b.test"});
  Side b = Make("b", {}, {});
  std::vector<Output> s = a.gw->Process("alice@agency-a.test", {"bob@agency-b.test"}, user, a.keys);
  ASSERT_EQ(s[0].action, Action::kDeliver);
  std::vector<Output> o = b.gw->Process("alice@agency-a.test", {"bob@agency-b.test"}, s[0].body, b.keys);
  ASSERT_EQ(o[0].action, Action::kDeliver);
  size_t mark_end = o[0].body.find("\r\nAuthentication-Results: ");   // level line, then results
  ASSERT_NE(mark_end, std::string::npos);
  mark_end = o[0].body.find("\r\n", mark_end + 2) + 2;
  EXPECT_EQ(o[0].body.substr(mark_end), user) << "byte-identical after the gateway's marks";
  std::ofstream(dir_ + "/u-got.eml", std::ios::binary) << o[0].body.substr(mark_end);
  EXPECT_EQ(Run("openssl cms -verify -in u-got.eml -CAfile alice.crt -out /dev/null"), 0);
}

// SM-8.2: the authentication level of inbound mail — signed+verified, tls+spf or none — with
// RFC 8601 results for smime and spf; the same marks arriving from outside are removed first.
TEST_F(GatewayTest, InboundAuthenticationLevelFromTlsAndSpf) {
  Side b = Make("b", {}, {});
  std::string plain = "From: carol@partner.test\r\nTo: bob@agency-b.test\r\nSubject: hello\r\n"
                      "X-Mailseal-Auth-Level: signed+verified\r\n"
                      "Authentication-Results: gw-b.test; spf=pass smtp.mailfrom=partner.test\r\n\r\nbody\r\n";
  struct Row {
    const char* tls;
    const char* spf;
    const char* level;
    const char* results;
  } rows[] = {
      {"TLSv1.3 TLS_AES_256_GCM_SHA384", "pass", "tls+spf",
       "spf=pass smtp.mailfrom=partner.test (received over TLSv1.3 TLS_AES_256_GCM_SHA384)"},
      {"", "pass", "none", "spf=pass smtp.mailfrom=partner.test (received in clear)"},
      {"TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384", "softfail", "none", "spf=softfail smtp.mailfrom=partner.test"},
      {"TLSv1.3 TLS_AES_256_GCM_SHA384", "neutral", "none", "spf=neutral"},
      {"TLSv1.3 TLS_AES_256_GCM_SHA384", "", "none", "smime=none (not S/MIME) (received over TLSv1.3"},
  };
  for (const Row& r : rows) {
    Inbound in{"198.51.100.7:4321", "mx.partner.test", r.tls, r.spf, "partner.test"};
    std::vector<Output> o = b.gw->Process("carol@partner.test", {"bob@agency-b.test"}, plain, b.keys, nullptr, false, &in);
    ASSERT_EQ(o.size(), 1u);
    ASSERT_EQ(o[0].action, Action::kDeliver);
    const std::string& got = o[0].body;
    EXPECT_EQ(got.rfind(StrCat("X-Mailseal-Auth-Level: ", r.level, "\r\nAuthentication-Results: gw-b.test; smime=none"), 0), 0u)
        << r.tls << " / " << r.spf << "\n" << got;
    EXPECT_NE(got.find(r.results), std::string::npos) << got;
    size_t levels = 0;
    for (size_t p = got.find("X-Mailseal-Auth-Level:"); p != std::string::npos; p = got.find("X-Mailseal-Auth-Level:", p + 1)) ++levels;
    EXPECT_EQ(levels, 1u) << "the forged level is gone\n" << got;
    size_t ours = 0;
    for (size_t p = got.find("Authentication-Results: gw-b.test"); p != std::string::npos;
         p = got.find("Authentication-Results: gw-b.test", p + 1))
      ++ours;
    EXPECT_EQ(ours, 1u) << "the forged result with our name is gone\n" << got;
  }
}

}  // namespace
}  // namespace mailseal::smime
