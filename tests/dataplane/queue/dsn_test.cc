// RFC 3464 DSN construction; SEE-2.12 (from postmaster@, no loops), SEE-2.8c.
#include "dataplane/queue/dsn.h"

#include <gtest/gtest.h>

namespace mailseal::queue {
namespace {

SpoolMessage Msg() {
  SpoolMessage m;
  m.id = "QID1";
  m.envelope.set_mail_from("alice@agency-a.test");
  auto* r = m.envelope.add_recipients();
  r->set_address("bob@agency-b.test");
  r->set_orcpt("rfc822;bob@agency-b.test");
  m.envelope.add_recipients()->set_address("carol@agency-b.test");
  m.envelope.mutable_recipients(1)->set_notify("NEVER");
  m.envelope.set_envid("env-42");
  m.envelope.set_arrival_unix_ms(1700000000000);
  m.body_size = 40;
  return m;
}

auto Body(const std::string& text) {
  return [text](const std::function<Status(std::string_view)>& sink) { return sink(text); };
}

TEST(Dsn, FailureReportHasTheRfc3464Fields) {
  SpoolMessage m = Msg();
  Result<std::string> d = BuildFailureDsn(
      "gw.test", m, {{0, "5.1.1", "smtp; 550 5.1.1 no such user", "mx.agency-b.test"}},
      Body("Subject: hi\r\n\r\nsecret body\r\n"), 1700000100000);
  ASSERT_TRUE(d.ok());
  const std::string& t = *d;
  EXPECT_NE(t.find("From: Mail Delivery System <postmaster@gw.test>\r\n"), std::string::npos);
  EXPECT_NE(t.find("To: <alice@agency-a.test>\r\n"), std::string::npos);
  EXPECT_NE(t.find("Auto-Submitted: auto-replied\r\n"), std::string::npos);
  EXPECT_NE(t.find("multipart/report; report-type=delivery-status"), std::string::npos);
  EXPECT_NE(t.find("Reporting-MTA: dns; gw.test\r\n"), std::string::npos);
  EXPECT_NE(t.find("Original-Envelope-Id: env-42\r\n"), std::string::npos);
  EXPECT_NE(t.find("Final-Recipient: rfc822; bob@agency-b.test\r\n"), std::string::npos);
  EXPECT_NE(t.find("Original-Recipient: rfc822; bob@agency-b.test\r\n"), std::string::npos);
  EXPECT_NE(t.find("Action: failed\r\nStatus: 5.1.1\r\n"), std::string::npos);
  EXPECT_NE(t.find("Remote-MTA: dns; mx.agency-b.test\r\n"), std::string::npos);
  EXPECT_NE(t.find("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"), std::string::npos);
  EXPECT_NE(t.find("Content-Type: message/rfc822\r\n\r\nSubject: hi\r\n\r\nsecret body\r\n"), std::string::npos);
  EXPECT_EQ(t.find("carol"), std::string::npos) << "only the failed recipients are listed";
}

TEST(Dsn, RetHdrsAndLargeMessagesQuoteHeadersOnly) {
  SpoolMessage m = Msg();
  m.envelope.set_ret("HDRS");
  Result<std::string> d = BuildFailureDsn("gw.test", m, {{0, "5.0.0", "x", ""}},
                                          Body("Subject: hi\r\n\r\nsecret body\r\n"), 0);
  ASSERT_TRUE(d.ok());
  EXPECT_NE(d->find("text/rfc822-headers\r\n\r\nSubject: hi\r\n"), std::string::npos);
  EXPECT_EQ(d->find("secret body"), std::string::npos);
  m.envelope.clear_ret();
  m.body_size = 5000;
  d = BuildFailureDsn("gw.test", m, {{0, "5.0.0", "x", ""}}, Body("Subject: hi\r\n\r\n" + std::string(4980, 'b')), 0, 1000);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->find("bbbb"), std::string::npos);
}

TEST(Dsn, NoNotificationForNullSenderDsnOrNotifyNever) {
  SpoolMessage m = Msg();
  EXPECT_TRUE(WantsFailureDsn(m.envelope, 0));
  EXPECT_FALSE(WantsFailureDsn(m.envelope, 1)) << "NOTIFY=NEVER";
  m.envelope.mutable_recipients(0)->set_notify("SUCCESS");
  EXPECT_FALSE(WantsFailureDsn(m.envelope, 0)) << "NOTIFY without FAILURE";
  m = Msg();
  m.envelope.set_mail_from("");
  EXPECT_FALSE(WantsFailureDsn(m.envelope, 0)) << "null sender";
  m = Msg();
  m.envelope.set_is_dsn(true);
  EXPECT_FALSE(WantsFailureDsn(m.envelope, 0)) << "a notification never causes another";
}

// SEE-2.8c: "consistent with ordinary delivery failures (will keep trying for another N hours)".
TEST(Dsn, DelayedReportSaysUntilWhenAndQuotesHeadersOnly) {
  SpoolMessage m = Msg();
  int64_t now = 1700000000000 + 4 * 3600000LL;
  int64_t until = 1700000000000 + 5 * 24 * 3600000LL;
  Result<std::string> d = BuildDelayedDsn("gw.test", m, {{0, "4.4.1", "X-Mailseal; connection refused", ""}},
                                          Body("Subject: hi\r\n\r\nsecret body\r\n"), now, until);
  ASSERT_TRUE(d.ok());
  const std::string& t = *d;
  EXPECT_NE(t.find("Subject: Delayed Mail (still being retried)\r\n"), std::string::npos);
  EXPECT_NE(t.find("you do not need to send it again"), std::string::npos);
  EXPECT_NE(t.find("keep trying for another\r\n116 hours (until Sun, 19 Nov 2023 22:13:20 +0000)"), std::string::npos) << t;
  EXPECT_NE(t.find("Action: delayed\r\nStatus: 4.4.1\r\n"), std::string::npos);
  EXPECT_NE(t.find("Will-Retry-Until: Sun, 19 Nov 2023 22:13:20 +0000\r\n"), std::string::npos);
  EXPECT_NE(t.find("text/rfc822-headers\r\n\r\nSubject: hi\r\n"), std::string::npos);
  EXPECT_EQ(t.find("secret body"), std::string::npos) << "a warning quotes the headers only";
  EXPECT_EQ(t.find("Action: failed"), std::string::npos);
}

TEST(Dsn, DelayNoticeOnlyWhenNotifyAllowsIt) {
  SpoolMessage m = Msg();
  EXPECT_TRUE(WantsDelayDsn(m.envelope, 0)) << "NOTIFY not given: the MTA's choice (RFC 3461 §4.1)";
  EXPECT_FALSE(WantsDelayDsn(m.envelope, 1)) << "NOTIFY=NEVER";
  m.envelope.mutable_recipients(0)->set_notify("FAILURE");
  EXPECT_FALSE(WantsDelayDsn(m.envelope, 0)) << "NOTIFY=FAILURE asks for no delay notice";
  m.envelope.mutable_recipients(0)->set_notify("FAILURE,DELAY");
  EXPECT_TRUE(WantsDelayDsn(m.envelope, 0));
  m.envelope.set_mail_from("");
  EXPECT_FALSE(WantsDelayDsn(m.envelope, 0)) << "null sender";
  m = Msg();
  m.envelope.set_is_dsn(true);
  EXPECT_FALSE(WantsDelayDsn(m.envelope, 0)) << "never about a notification";
}

TEST(Dsn, EnhancedStatusFallsBackToClass) {
  EXPECT_EQ(EnhancedStatusOf(550, "5.1.1"), "5.1.1");
  EXPECT_EQ(EnhancedStatusOf(550, ""), "5.0.0");
  EXPECT_EQ(EnhancedStatusOf(550, "4.1.1"), "5.0.0");
  EXPECT_EQ(Rfc5322Date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
}

}  // namespace
}  // namespace mailseal::queue
