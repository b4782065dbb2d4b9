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
