// classify_test.cc — issue #6: every trigger-word form (SEE-2.1) and every decision
// (SEE-2.1b, SEE-AG-1, SEE-AG-3, SEE-2.9), table-driven.
#include "dataplane/policy/classify.h"

#include <gtest/gtest.h>

namespace mailseal::policy {
namespace {

struct WordCase {
  const char* subject;
  const char* want;   // "" = not classified
};

// SEE-2.1: any letter case, any mix of [ { ] }, matching or not; IN CONFIDENCE with a space
// or hyphen; the words only as bracketed tokens.
const WordCase kWords[] = {
    {"[SEEMAIL] budget", "[SEEMAIL]"},
    {"[seemail] budget", "[SEEMAIL]"},
    {"{SeeMail} budget", "[SEEMAIL]"},
    {"{seemail] budget", "[SEEMAIL]"},
    {"[seemail} budget", "[SEEMAIL]"},
    {"budget [RESTRICTED]", "[RESTRICTED]"},
    {"Re: Fwd: {restricted} figures", "[RESTRICTED]"},
    {"[SENSITIVE]", "[SENSITIVE]"},
    {"[IN-CONFIDENCE] staff", "[IN-CONFIDENCE]"},
    {"[IN CONFIDENCE] staff", "[IN-CONFIDENCE]"},
    {"{in confidence] staff", "[IN-CONFIDENCE]"},
    {"[in_confidence} staff", "[IN-CONFIDENCE]"},
    {"RESTRICTED budget", ""},            // no brackets: not a trigger word
    {"[RESTRICTED budget", ""},           // never closed
    {"(RESTRICTED) budget", ""},          // other brackets
    {"[UNRESTRICTED] notes", ""},         // another word
    {"[RESTRICTEDX]", ""},
    {"[ RESTRICTED ]", ""},               // inner spaces are not the word
    {"[INCONFIDENCE]", ""},               // the separator is part of the word
    {"", ""},
    {"[", ""},
    {"{", ""},
};

TEST(TriggerWords, EveryFormOfSee21) {
  for (const WordCase& c : kWords) EXPECT_EQ(FindTriggerWord(c.subject), c.want) << "subject: " << c.subject;
}

TEST(TriggerWords, ConfigurableList) {
  std::vector<std::string> words = {"TOP-SECRET", "PROTECTED"};
  EXPECT_EQ(FindTriggerWord("{top secret] x", words), "[TOP-SECRET]");
  EXPECT_EQ(FindTriggerWord("[protected]", words), "[PROTECTED]");
  EXPECT_EQ(FindTriggerWord("[RESTRICTED]", words), "") << "the document's list replaces the default";
}

struct EncodedCase {
  const char* raw;
  const char* decoded;
};

TEST(TriggerWords, Rfc2047EncodedSubjects) {
  const EncodedCase kCases[] = {
      {"=?UTF-8?B?W1JFU1RSSUNURURdIGJ1ZGdldA==?=", "[RESTRICTED] budget"},
      {"=?utf-8?q?=5BRESTRICTED=5D_budget?=", "[RESTRICTED] budget"},
      {"=?ISO-8859-1?Q?{in_confidence}_M=FCller?=", "{in confidence} M\xfc" "ller"},
      {"=?UTF-8?B?W1JF?= =?UTF-8?B?U1RSSUNURURd?=", "[RESTRICTED]"},   // split over two words
      {"plain [SEEMAIL]", "plain [SEEMAIL]"},
      {"=?UTF-8?X?bad?= [SENSITIVE]", "=?UTF-8?X?bad?= [SENSITIVE]"},   // unknown encoding kept
      {"=?UTF-8?B?unterminated", "=?UTF-8?B?unterminated"},
  };
  for (const EncodedCase& c : kCases) EXPECT_EQ(DecodeRfc2047(c.raw), c.decoded) << c.raw;
  EXPECT_EQ(Classify("Subject: =?UTF-8?B?W1JFU1RSSUNURURdIGJ1ZGdldA==?=\r\n\r\nbody\r\n"), "[RESTRICTED]");
  EXPECT_EQ(Classify("Subject: =?UTF-8?B?W1JF?=\r\n =?UTF-8?B?U1RSSUNURURd?=\r\n\r\nbody\r\n"), "[RESTRICTED]")
      << "folded and split";
}

TEST(TriggerWords, ProtectedInnerSubjectOfRfc9788) {
  std::string wrapped =
      "From: a@agency-a.test\r\nSubject: [...]\r\n"
      "Content-Type: message/rfc822; forwarded=\"no\"\r\n\r\n"
      "From: a@agency-a.test\r\nSubject: {sensitive] staff\r\n\r\ntext\r\n";
  EXPECT_EQ(Classify(wrapped), "[SENSITIVE]");
  std::string forwarded = "Subject: fwd\r\nContent-Type: message/rfc822\r\n\r\nSubject: [SENSITIVE]\r\n\r\nx\r\n";
  EXPECT_EQ(Classify(forwarded), "") << "a forwarded message's subject is not the message's";
  EXPECT_EQ(Classify("Subject: a\r\nX: [SEEMAIL]\r\n\r\n[RESTRICTED] in the body\r\n"), "")
      << "only the Subject counts";
}

TEST(Label, See19HeaderReplacesAnyOutsideOne) {
  std::string m = "From: a@b.test\r\nX-Classification: UNCLASSIFIED\r\n  folded\r\nSubject: [RESTRICTED] x\r\n\r\n"
                  "X-Classification: in the body stays\r\n";
  std::string l = Label(m, "X-Classification", "[RESTRICTED]");
  EXPECT_EQ(l, "X-Classification: RESTRICTED\r\nFrom: a@b.test\r\nSubject: [RESTRICTED] x\r\n\r\n"
               "X-Classification: in the body stays\r\n");
  EXPECT_EQ(Label(m, "x-classification", ""),
            "From: a@b.test\r\nSubject: [RESTRICTED] x\r\n\r\nX-Classification: in the body stays\r\n")
      << "unclassified: an outside label is removed, none added";
  EXPECT_EQ(Label(m, "", "[RESTRICTED]"), m) << "no header configured: untouched";
}

struct DecideCase {
  const char* rcpt;
  const char* classification;
  bool partner;
  bool seal_when_known;
  Protection want;
  const char* reason_has;
};

TEST(Decision, EveryBranch) {
  mailseal::v1::PolicyDocument doc;
  doc.set_version(7);
  doc.add_seemail_list()->set_domain("agency-b.test");
  doc.add_trusted_list()->set_domain("contractor.test");
  doc.add_trusted_list()->set_domain("boss@private.test");
  auto* r = doc.add_domain_rules();
  r->set_domain("bank.test");
  r->set_protection(mailseal::v1::DomainRule::PROTECTION_SEAL_REQUIRED);
  r->set_triple_wrap(true);
  r = doc.add_domain_rules();
  r->set_domain("news.bank.test");
  r->set_protection(mailseal::v1::DomainRule::PROTECTION_NONE);
  r = doc.add_domain_rules();
  r->set_domain("maybe.test");
  r->set_protection(mailseal::v1::DomainRule::PROTECTION_SEAL_WHEN_POSSIBLE);
  auto p = Compile(doc);
  const DecideCase kCases[] = {
      // SEE-2.1b: classified mail only to SEEMAIL / TRUSTED (or configured partners), sealed.
      {"bob@agency-b.test", "[RESTRICTED]", false, false, Protection::kSealRequired, "SEEMAIL-listed agency-b.test"},
      {"bob@sub.agency-b.test", "[RESTRICTED]", false, false, Protection::kSealRequired, "SEEMAIL-listed"},
      {"x@contractor.test", "[SEEMAIL]", false, false, Protection::kSealRequired, "TRUSTED-listed contractor.test"},
      {"boss@private.test", "[SENSITIVE]", false, false, Protection::kSealRequired, "TRUSTED-listed boss@private.test"},
      {"other@private.test", "[SENSITIVE]", false, false, Protection::kHold, "neither the SEEMAIL nor the TRUSTED"},
      {"carol@gmail.test", "[RESTRICTED]", false, true, Protection::kHold, "never sent"},
      {"carol@agency-c.test", "[RESTRICTED]", true, false, Protection::kSealRequired, "partner agency-c.test"},
      {"x@bank.test", "[RESTRICTED]", false, false, Protection::kHold, "neither"},   // a rule is not a list
      // Unclassified: partners and SEEMAIL always sealed (SEE-AG-3); rules; SEE-2.9; SEE-AG-1.
      {"bob@agency-b.test", "", false, false, Protection::kSealRequired, "SEEMAIL-listed"},
      {"carol@agency-c.test", "", true, false, Protection::kSealRequired, "partner domain"},
      {"x@bank.test", "", false, false, Protection::kSealRequired, "rule for bank.test"},
      {"x@news.bank.test", "", false, true, Protection::kPass, "rule for news.bank.test: sent as is"},
      {"x@maybe.test", "", false, false, Protection::kSealIfKnown, "rule for maybe.test"},
      {"x@contractor.test", "", false, false, Protection::kSealIfKnown, "TRUSTED-listed"},
      {"x@gmail.test", "", false, true, Protection::kSealIfKnown, "seal_when_known"},
      {"x@gmail.test", "", false, false, Protection::kPass, "no protection rule applies"},
      {"X@GMAIL.TEST", "", false, false, Protection::kPass, "no protection rule"},
      {"BOB@Agency-B.Test", "[RESTRICTED]", false, false, Protection::kSealRequired, "SEEMAIL"},
  };
  for (const DecideCase& c : kCases) {
    Decision d = p->Decide(c.rcpt, c.classification, c.partner, c.seal_when_known);
    EXPECT_EQ(d.protection, c.want) << c.rcpt << " " << c.classification << ": " << d.reason;
    EXPECT_NE(d.reason.find(c.reason_has), std::string::npos) << c.rcpt << ": " << d.reason;
  }
  EXPECT_TRUE(p->Decide("x@bank.test", "", false, false).triple_wrap);
  EXPECT_FALSE(p->Decide("x@news.bank.test", "", false, false).triple_wrap) << "the most specific rule wins";
}

TEST(Decision, SignRulesAndSenderOverridesOnlyRaise) {
  mailseal::v1::PolicyDocument doc;
  auto* r = doc.add_domain_rules();
  r->set_domain("press.test");
  r->set_protection(mailseal::v1::DomainRule::PROTECTION_SIGN);
  r = doc.add_domain_rules();
  r->set_domain("open.test");
  r->set_protection(mailseal::v1::DomainRule::PROTECTION_NONE);
  r = doc.add_sender_rules();
  r->set_domain("ceo@agency-a.test");
  r->set_protection(mailseal::v1::DomainRule::PROTECTION_SEAL_REQUIRED);
  r = doc.add_sender_rules();
  r->set_domain("hr.agency-a.test");
  r->set_protection(mailseal::v1::DomainRule::PROTECTION_SIGN);
  auto p = Compile(doc);
  struct Case {
    const char* from;
    const char* rcpt;
    const char* cls;
    Protection want;
    const char* reason_has;
  } cases[] = {
      {"x@agency-a.test", "a@press.test", "", Protection::kSign, "rule for press.test: signed"},
      {"ceo@agency-a.test", "a@press.test", "", Protection::kSealRequired, "sender rule for ceo@agency-a.test"},
      {"CEO@Agency-A.test", "a@open.test", "", Protection::kSealRequired, "raised from: rule for open.test"},
      {"bob@hr.agency-a.test", "a@open.test", "", Protection::kSign, "sender rule for hr.agency-a.test"},
      {"bob@pay.hr.agency-a.test", "a@gmail.test", "", Protection::kSign, "sender rule for hr.agency-a.test"},
      {"bob@hr.agency-a.test", "a@gmail.test", "[RESTRICTED]", Protection::kHold, "neither"},   // never lowers a hold
      {"x@agency-a.test", "a@open.test", "", Protection::kPass, "sent as is"},
  };
  for (const Case& c : cases) {
    Decision d = p->Decide(c.rcpt, c.cls, false, false, c.from);
    EXPECT_EQ(d.protection, c.want) << c.from << " -> " << c.rcpt << ": " << d.reason;
    EXPECT_NE(d.reason.find(c.reason_has), std::string::npos) << d.reason;
  }
}

TEST(Decision, DocumentTriggerWordsApply) {
  mailseal::v1::PolicyDocument doc;
  doc.add_trigger_words("protected");
  auto p = Compile(doc);
  EXPECT_EQ(Classify("Subject: [Protected] x\r\n\r\n", p->trigger_words), "[PROTECTED]");
  EXPECT_EQ(Classify("Subject: [RESTRICTED] x\r\n\r\n", p->trigger_words), "");
}

}  // namespace
}  // namespace mailseal::policy
