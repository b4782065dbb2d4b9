// Unit tests of the sans-I/O SMTP client (delivery side), issue #2.
#include "dataplane/smtp/client_session.h"

#include <gtest/gtest.h>

namespace mailseal::smtp {
namespace {

ClientMessage Msg() {
  ClientMessage m;
  m.mail_from = "a@x.test";
  m.recipients = {{"b@y.test", "", ""}, {"c@y.test", "NEVER", ""}};
  m.body_type = "8BITMIME";
  m.size = 123;
  return m;
}

TEST(ClientSession, PipelinedTransactionWithPerRecipientResults) {
  ClientSession s("gw.test");
  s.Feed("220 mx ESMTP\r\n");
  EXPECT_EQ(s.TakeOutput(), "EHLO gw.test\r\n");
  s.Feed("250-mx\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 DSN\r\n");
  ASSERT_EQ(s.state(), ClientSession::State::kReady);
  s.StartMessage(Msg());
  EXPECT_EQ(s.TakeOutput(),
            "MAIL FROM:<a@x.test> SIZE=123 BODY=8BITMIME\r\nRCPT TO:<b@y.test>\r\n"
            "RCPT TO:<c@y.test> NOTIFY=NEVER\r\nDATA\r\n");
  s.Feed("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go\r\n");
  ASSERT_EQ(s.state(), ClientSession::State::kSendBody);
  s.BodyDone();
  s.Feed("250 2.0.0 queued\r\n");
  ASSERT_EQ(s.state(), ClientSession::State::kMessageDone);
  EXPECT_EQ(s.result().RecipientOutcome(0).code, 250);
  EXPECT_EQ(s.result().RecipientOutcome(1).code, 550);
  EXPECT_EQ(s.result().RecipientOutcome(1).enhanced, "5.1.1");
}

// RFC 3207 / SM-5: STARTTLS when offered; capabilities said in clear are forgotten.
TEST(ClientSession, StartTlsWhenOfferedThenEhloAgain) {
  ClientSession s("gw.test", ClientSession::Tls::kOpportunistic);
  s.Feed("220 mx ESMTP\r\n");
  EXPECT_EQ(s.TakeOutput(), "EHLO gw.test\r\n");
  s.Feed("250-mx\r\n250-DSN\r\n250 STARTTLS\r\n");
  EXPECT_EQ(s.TakeOutput(), "STARTTLS\r\n");
  s.Feed("220 2.0.0 go ahead\r\n");
  ASSERT_EQ(s.state(), ClientSession::State::kTlsReady);
  s.TlsStarted();
  EXPECT_TRUE(s.tls_active());
  EXPECT_FALSE(s.capabilities().dsn) << "what was said in clear is forgotten";
  EXPECT_EQ(s.TakeOutput(), "EHLO gw.test\r\n");
  s.Feed("250-mx\r\n250 PIPELINING\r\n");
  EXPECT_EQ(s.state(), ClientSession::State::kReady) << "no second STARTTLS inside TLS";
  EXPECT_TRUE(s.capabilities().pipelining);
}

TEST(ClientSession, OpportunisticTlsFallsBackRequiredTlsFails) {
  ClientSession a("gw.test", ClientSession::Tls::kOpportunistic);
  a.Feed("220 mx\r\n250 mx\r\n");
  EXPECT_EQ(a.state(), ClientSession::State::kReady) << "not offered: in clear";
  ClientSession b("gw.test", ClientSession::Tls::kOpportunistic);
  b.Feed("220 mx\r\n250-mx\r\n250 STARTTLS\r\n454 4.7.0 TLS not available\r\n");
  EXPECT_EQ(b.state(), ClientSession::State::kReady) << "refused: in clear";
  ClientSession c("gw.test", ClientSession::Tls::kRequired);
  c.Feed("220 mx\r\n250 mx\r\n");
  ASSERT_EQ(c.state(), ClientSession::State::kFailed);
  EXPECT_EQ(c.failure().code, 451);
  EXPECT_EQ(c.failure().enhanced, "4.7.5");
  ClientSession d("gw.test", ClientSession::Tls::kRequired);
  d.Feed("220 mx\r\n250-mx\r\n250 STARTTLS\r\n454 4.7.0 no\r\n");
  ASSERT_EQ(d.state(), ClientSession::State::kFailed);
  EXPECT_NE(d.failure().text.find("STARTTLS was refused"), std::string::npos);
  ClientSession e("gw.test", ClientSession::Tls::kRequired);
  e.Feed("220 mx\r\n");
  e.Feed("500 what\r\n250 mx-helo\r\n");   // HELO only: no STARTTLS possible
  EXPECT_EQ(e.state(), ClientSession::State::kFailed);
}

TEST(ClientSession, NothingAfterThe220ToStartTlsIsTaken) {
  ClientSession s("gw.test", ClientSession::Tls::kOpportunistic);
  s.Feed("220 mx\r\n250-mx\r\n250 STARTTLS\r\n");
  s.TakeOutput();
  s.Feed("220 go ahead\r\n250-mx\r\n250 AUTH PLAIN\r\n");   // injected in clear
  EXPECT_EQ(s.state(), ClientSession::State::kFailed);
  EXPECT_NE(s.failure().text.find("after its 220 to STARTTLS"), std::string::npos);
}

TEST(ClientSession, UnpipelinedServerGetsOneCommandAtATimeAndRsetWhenNoRecipient) {
  ClientSession s("gw.test");
  s.Feed("220 mx\r\n");
  s.TakeOutput();
  s.Feed("250 mx\r\n");
  ClientMessage m = Msg();
  m.recipients.resize(1);
  s.StartMessage(m);
  EXPECT_EQ(s.TakeOutput(), "MAIL FROM:<a@x.test>\r\n");  // no SIZE/BODY: not advertised
  s.Feed("250 ok\r\n");
  EXPECT_EQ(s.TakeOutput(), "RCPT TO:<b@y.test>\r\n");
  s.Feed("450 4.2.0 try later\r\n");
  EXPECT_EQ(s.TakeOutput(), "RSET\r\n");
  s.Feed("250 ok\r\n");
  EXPECT_EQ(s.state(), ClientSession::State::kMessageDone);
  EXPECT_EQ(s.result().RecipientOutcome(0).code, 450);
}

TEST(ClientSession, HeloFallbackAndGreetingRefusal) {
  ClientSession s("gw.test");
  s.Feed("220 old\r\n");
  s.TakeOutput();
  s.Feed("500 what\r\n");
  EXPECT_EQ(s.TakeOutput(), "HELO gw.test\r\n");
  s.Feed("250 old\r\n");
  EXPECT_EQ(s.state(), ClientSession::State::kReady);
  ClientSession r("gw.test");
  r.Feed("554 go away\r\n");
  EXPECT_EQ(r.state(), ClientSession::State::kFailed);
  EXPECT_EQ(r.failure().code, 554);
}

TEST(ClientSession, MalformedAndOverlongRepliesFailTheSession) {
  ClientSession s("gw.test");
  s.Feed("2x0 hello\r\n");
  EXPECT_EQ(s.state(), ClientSession::State::kFailed);
  ClientSession t("gw.test");
  t.Feed(std::string(10000, 'x'));
  EXPECT_EQ(t.state(), ClientSession::State::kFailed);
  ClientSession u("gw.test");
  std::string many;
  for (int i = 0; i < 300; ++i) many += "220-more\r\n";
  u.Feed(many);
  EXPECT_EQ(u.state(), ClientSession::State::kFailed);
}

TEST(ClientSession, Utf8MessageToNonUtf8HopFailsLocally) {
  ClientSession s("gw.test");
  s.Feed("220 mx\r\n250 mx\r\n");
  ClientMessage m = Msg();
  m.smtputf8 = true;
  s.StartMessage(m);
  EXPECT_EQ(s.state(), ClientSession::State::kMessageDone);
  EXPECT_EQ(s.result().RecipientOutcome(0).enhanced, "5.6.7");
}

TEST(BodyEncoder, StuffsDotsAndRepairsLineEnds) {
  BodyEncoder e;
  std::string out;
  e.Encode("a\r\n.b\n", &out);
  e.Encode(".\rc", &out);
  e.Finish(&out);
  // A bare LF or CR becomes CRLF; leading dots are doubled; final CRLF "." CRLF appended.
  EXPECT_EQ(out, "a\r\n..b\r\n..\r\nc\r\n.\r\n");
}

TEST(BodyEncoder, SplitAcrossChunksIsTheSame) {
  std::string in = "x\r\n.\r\n\r\n.y\r\nz";
  std::string whole, split;
  BodyEncoder a, b;
  a.Encode(in, &whole);
  a.Finish(&whole);
  for (char c : in) b.Encode(std::string_view(&c, 1), &split);
  b.Finish(&split);
  EXPECT_EQ(whole, split);
  EXPECT_EQ(whole, "x\r\n..\r\n\r\n..y\r\nz\r\n.\r\n");
}

}  // namespace
}  // namespace mailseal::smtp
