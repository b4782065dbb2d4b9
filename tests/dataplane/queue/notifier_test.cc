// notifier_test.cc — issue #6: notices about held mail (SEE-2.1b, SEE-2.8, SEE-2.12): digested,
// rate-limited, loop-proof, never to another agency.
#include "dataplane/queue/notifier.h"

#include "dataplane/queue/dsn.h"

#include <gtest/gtest.h>

namespace mailseal::queue {
namespace {

NotifierOptions Opts() {
  NotifierOptions o;
  o.hostname = "gw.agency-a.test";
  o.local_domains = {"agency-a.test", ".agency-a.test"};
  o.gather_ms = 10000;
  o.interval_ms = 600000;
  return o;
}

HeldItem Held(int i, const std::string& sender = "alice@agency-a.test") {
  return {"Q" + std::to_string(i), sender, {"carol@agency-c.test"}, "no DCA certificate known for agency-c.test", 1000};
}

TEST(Notifier, AThousandHeldMessagesAreOneDigestPerAddress) {
  Notifier n(Opts());
  for (int i = 0; i < 1000; ++i) n.OnHeld(Held(i), false, 1000 + i);
  EXPECT_TRUE(n.Due(5000).empty()) << "the gathering window is still open";
  std::vector<Notice> due = n.Due(11000);
  ASSERT_EQ(due.size(), 2u) << "one to the administrator, one to the sender";
  for (const Notice& d : due) EXPECT_EQ(d.items, 1000u);
  const Notice& admin = due[0].to == "postmaster@agency-a.test" ? due[0] : due[1];
  EXPECT_EQ(admin.to, "postmaster@agency-a.test");
  EXPECT_NE(admin.message.find("Subject: 1000 messages were held and not sent"), std::string::npos);
  EXPECT_NE(admin.message.find("... and 500 more held message(s)"), std::string::npos) << "at most 500 listed";
  EXPECT_NE(admin.message.find("Auto-Submitted: auto-generated"), std::string::npos);
  EXPECT_NE(admin.message.find("From: Mail Delivery System <postmaster@agency-a.test>"), std::string::npos);
  EXPECT_TRUE(n.Due(12000).empty());
}

TEST(Notifier, RateLimitedPerAddressAndNothingLost) {
  Notifier n(Opts());
  n.OnHeld(Held(1), false, 0);
  ASSERT_EQ(n.Due(10000).size(), 2u);
  n.OnHeld(Held(2), false, 20000);
  n.OnHeld(Held(3), false, 30000);
  EXPECT_TRUE(n.Due(100000).empty()) << "not before interval_ms after the last notice";
  std::vector<Notice> due = n.Due(610000);
  ASSERT_EQ(due.size(), 2u);
  EXPECT_EQ(due[0].items, 2u) << "both held messages in the next notice";
  EXPECT_NE(due[0].message.find("Q2"), std::string::npos);
  EXPECT_NE(due[0].message.find("Q3"), std::string::npos);
}

TEST(Notifier, LoopProofAndNeverToAnotherAgency) {
  Notifier n(Opts());
  n.OnHeld(Held(1, ""), false, 0);                          // null sender
  n.OnHeld(Held(2, "postmaster@agency-a.test"), false, 0);  // a postmaster
  n.OnHeld(Held(3, "MAILER-DAEMON@agency-b.test"), false, 0);
  n.OnHeld(Held(4), true, 0);                               // a notice or DSN itself held
  EXPECT_EQ(n.suppressed(), 4u);
  EXPECT_TRUE(n.Due(100000).empty()) << "nothing at all about them";
  n.OnHeld(Held(5, "bob@agency-b.test"), false, 0);         // a foreign sender (relayed in)
  std::vector<Notice> due = n.Due(100000);
  ASSERT_EQ(due.size(), 1u) << "only our administrator, never another agency's sender";
  EXPECT_EQ(due[0].to, "postmaster@agency-a.test");
  n.OnHeld(Held(6, "carol@hr.agency-a.test"), false, 200000);   // a sub-domain of ours
  due = n.Due(1000000);
  ASSERT_EQ(due.size(), 2u);
}

TEST(Notifier, AdministratorAddressAndSenderSettingFromThePolicy) {
  NotifierOptions o = Opts();
  o.admin_address = "SecOps@agency-a.test";
  o.notify_sender = false;
  Notifier n(o);
  n.OnHeld(Held(1), false, 0);
  std::vector<Notice> due = n.Due(10000);
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].to, "secops@agency-a.test");
  EXPECT_NE(due[0].message.find("From:       <alice@agency-a.test>"), std::string::npos) << "the admin sees the sender";
}

TEST(Notifier, InboundWarningsGoToTheRecipientsAdministratorOnly) {
  Notifier n(Opts());
  HeldItem w = Held(1, "mallory@evil.test");
  w.reason = "opened: smime=fail (signature good, certificate unknown-ca)";
  n.OnWarned(w, false, 0);
  n.OnWarned(w, true, 0);   // about a notice: never
  std::vector<Notice> due = n.Due(10000);
  ASSERT_EQ(due.size(), 1u) << "SEE-2.8 receiving column: notify RA, not the outside sender";
  EXPECT_EQ(due[0].to, "postmaster@agency-a.test");
  EXPECT_NE(due[0].message.find("Subject: A message was delivered with a security warning"), std::string::npos);
  EXPECT_NE(due[0].message.find("Warning:    opened: smime=fail"), std::string::npos);
  n.OnWarned(w, false, 700000);
  n.OnHeld(Held(2), false, 700000);
  due = n.Due(800000);
  ASSERT_EQ(due.size(), 2u);
  const Notice& admin = due[0].to == "postmaster@agency-a.test" ? due[0] : due[1];
  EXPECT_NE(admin.message.find("2 messages need attention"), std::string::npos) << admin.message;
}

TEST(Notifier, HostileValuesCannotInjectHeaders) {
  Notifier n(Opts());
  HeldItem h = Held(1);
  h.reason = "x\r\nBcc: victim@evil.test";
  h.recipients = {"a@b.test\r\nSubject: forged"};
  n.OnHeld(h, false, 0);
  for (const Notice& d : n.Due(10000)) {
    EXPECT_EQ(d.message.find("\r\nBcc:"), std::string::npos);
    EXPECT_EQ(d.message.find("\r\nSubject: forged"), std::string::npos);
  }
}

TEST(MessageExpiry, Rfc5322DatesOfExpiresHeaders) {
  EXPECT_EQ(ParseRfc5322Date("Sun, 22 Nov 2026 05:21:47 +0000"), 1795324907000);
  EXPECT_EQ(ParseRfc5322Date(" 22 Nov 2026 07:21:47 +0200"), 1795324907000) << "no day name, another zone";
  EXPECT_EQ(ParseRfc5322Date("tomorrow"), 0);
  EXPECT_EQ(ParseRfc5322Date(""), 0);
}

}  // namespace
}  // namespace mailseal::queue
