// Unit tests of the sans-I/O SMTP server (issue #2; RFC 5321, 2920, 1870, 3030, 6531, 3461;
// SMTP smuggling defence). Every test drives the session byte by byte AND in one piece where
// the split could matter.
#include "dataplane/smtp/server_session.h"

#include <gtest/gtest.h>

#include <string>

#include "tests/dataplane/smtp/test_handler.h"

namespace mailseal::smtp {
namespace {
using testing::RecordingHandler;

struct Harness {
  explicit Harness(ServerOptions o = DefaultOptions()) : session(o, &h) {
    h.session = &session;
    session.Start();
    greeting = session.TakeOutput();
  }
  static ServerOptions DefaultOptions() {
    ServerOptions o;
    o.hostname = "gw.test";
    return o;
  }
  std::string Feed(std::string_view in, bool bytewise = false) {
    if (bytewise) {
      for (char c : in) session.Feed(std::string_view(&c, 1));
    } else {
      session.Feed(in);
    }
    return session.TakeOutput();
  }
  RecordingHandler h;
  ServerSession session;
  std::string greeting;
};

const char kEnvelope[] = "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n";

TEST(ServerSession, GreetingAndEhloAdvertiseExtensions) {
  Harness t;
  EXPECT_EQ(t.greeting, "220 gw.test ESMTP mailseal\r\n");
  std::string out = t.Feed("EHLO client.test\r\n");
  EXPECT_EQ(out,
            "250-gw.test\r\n250-PIPELINING\r\n250-SIZE 36700160\r\n250-8BITMIME\r\n"
            "250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-SMTPUTF8\r\n250-DSN\r\n250 HELP\r\n");
  EXPECT_EQ(out.find("STARTTLS"), std::string::npos) << "STARTTLS only once TLS exists";
}

TEST(ServerSession, SimpleMessageIsDotUnstuffedAndAcceptedAfterCommit) {
  for (bool bytewise : {false, true}) {
    Harness t;
    t.h.auto_commit = false;
    std::string out = t.Feed(std::string(kEnvelope) + "Subject: x\r\n\r\n..leading dot\r\nline\r\n.\r\nNOOP\r\n", bytewise);
    // 250 for the message must wait for CompleteData(); the pipelined NOOP waits behind it.
    EXPECT_EQ(out, "250-gw.test\r\n250-PIPELINING\r\n250-SIZE 36700160\r\n250-8BITMIME\r\n"
                   "250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-SMTPUTF8\r\n250-DSN\r\n250 HELP\r\n"
                   "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
    ASSERT_EQ(t.h.messages.size(), 1u);
    EXPECT_EQ(t.h.messages[0].body, "Subject: x\r\n\r\n.leading dot\r\nline\r\n");
    EXPECT_TRUE(t.session.Paused());
    t.session.CompleteData(MakeReply(250, "2.0.0", "Ok: queued as Q1"));
    EXPECT_EQ(t.session.TakeOutput(), "250 2.0.0 Ok: queued as Q1\r\n250 2.0.0 Ok\r\n");
  }
}

TEST(ServerSession, CommandOrderIsEnforced) {
  Harness t;
  EXPECT_EQ(t.Feed("MAIL FROM:<a@x.test>\r\n"), "503 5.5.1 Error: send HELO/EHLO first\r\n");
  t.Feed("HELO c.test\r\n");
  EXPECT_EQ(t.Feed("RCPT TO:<b@y.test>\r\n"), "503 5.5.1 Error: need MAIL command\r\n");
  EXPECT_EQ(t.Feed("DATA\r\n"), "503 5.5.1 Error: need MAIL command\r\n");
  t.Feed("MAIL FROM:<a@x.test>\r\n");
  EXPECT_EQ(t.Feed("MAIL FROM:<a@x.test>\r\n"), "503 5.5.1 Error: nested MAIL command\r\n");
  EXPECT_EQ(t.Feed("DATA\r\n"), "554 5.5.1 Error: no valid recipients\r\n");
}

TEST(ServerSession, VrfyExpnHelpNoopRsetQuit) {
  Harness t;
  EXPECT_EQ(t.Feed("VRFY bob\r\n").substr(0, 10), "252 2.5.2 ");
  EXPECT_EQ(t.Feed("EXPN list\r\n"), "502 5.5.1 Error: EXPN not supported\r\n");
  EXPECT_EQ(t.Feed("HELP\r\n").substr(0, 4), "214-");
  EXPECT_EQ(t.Feed("NOOP\r\n"), "250 2.0.0 Ok\r\n");
  EXPECT_EQ(t.Feed("RSET\r\n"), "250 2.0.0 Ok\r\n");
  EXPECT_EQ(t.Feed("STARTTLS\r\n"), "502 5.5.1 Error: STARTTLS not available\r\n");
  EXPECT_EQ(t.Feed("QUIT\r\nNOOP\r\n"), "221 2.0.0 Bye\r\n");  // nothing after QUIT
  EXPECT_TRUE(t.session.Closed());
}

TEST(ServerSession, MailParametersAreParsedAndKept) {
  Harness t;
  t.Feed("EHLO c.test\r\n");
  EXPECT_EQ(t.Feed("MAIL FROM:<a@x.test> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=abc+2Bdef SMTPUTF8\r\n"),
            "250 2.1.0 Ok\r\n");
  EXPECT_EQ(t.Feed("RCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40y.test\r\n"),
            "250 2.1.5 Ok\r\n");
  t.Feed("DATA\r\nx\r\n.\r\n");
  ASSERT_EQ(t.h.messages.size(), 1u);
  const Transaction& txn = t.h.messages[0].txn;
  EXPECT_EQ(txn.declared_size, 1000u);
  EXPECT_EQ(txn.body_type, "8BITMIME");
  EXPECT_EQ(txn.ret, "HDRS");
  EXPECT_EQ(txn.envid, "abc+def");
  EXPECT_TRUE(txn.smtputf8);
  EXPECT_EQ(txn.recipients[0].notify, "SUCCESS,FAILURE");
  EXPECT_EQ(txn.recipients[0].orcpt, "rfc822;b+40y.test");
}

TEST(ServerSession, BadParametersGetTheirRfcReplies) {
  Harness t;
  t.Feed("EHLO c.test\r\n");
  EXPECT_EQ(t.Feed("MAIL FROM:<a@x.test> SIZE=99999999999\r\n"),
            "552 5.3.4 Error: message size exceeds fixed limit\r\n");  // RFC 1870 §6.1
  EXPECT_EQ(t.Feed("MAIL FROM:<a@x.test> BODY=BINARYMIME\r\n"),
            "555 5.5.4 Error: unsupported BODY parameter\r\n");
  EXPECT_EQ(t.Feed("MAIL FROM:<a@x.test> FOO=1\r\n"),
            "555 5.5.4 Error: unsupported or repeated MAIL parameter\r\n");
  EXPECT_EQ(t.Feed("MAIL FROM:<jöe@x.test>\r\n"), "553 5.6.7 Error: non-ASCII address needs SMTPUTF8\r\n");
  EXPECT_EQ(t.Feed("MAIL FROM:<jöe@x.test> SMTPUTF8\r\n"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(t.Feed("RCPT TO:<b@y.test> NOTIFY=NEVER,SUCCESS\r\n"),
            "501 5.5.4 Error: NOTIFY=NEVER cannot be combined\r\n");
  EXPECT_EQ(t.Feed("RCPT TO:<bad address@y.test>\r\n"), "501 5.1.3 Error: bad recipient address syntax\r\n");
  EXPECT_EQ(t.Feed("RCPT TO:<postmaster>\r\n"), "250 2.1.5 Ok\r\n");  // RFC 5321 §4.5.1
}

TEST(ServerSession, NullSenderAllowedOnlyForMail) {
  Harness t;
  t.Feed("EHLO c.test\r\n");
  EXPECT_EQ(t.Feed("MAIL FROM:<>\r\n"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(t.Feed("RCPT TO:<>\r\n"), "501 5.1.3 Error: bad recipient address syntax\r\n");
}

TEST(ServerSession, RelayDecisionFromHandler) {
  Harness t;
  t.Feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n");
  EXPECT_EQ(t.Feed("RCPT TO:<v@denied.test>\r\n"), "554 5.7.1 Relay access denied\r\n");
}

TEST(ServerSession, RecipientLimitAnswers452AndKeepsTheSession) {
  ServerOptions o = Harness::DefaultOptions();
  o.limits.max_recipients = 3;
  Harness t(o);
  t.Feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n");
  std::string out = t.Feed("RCPT TO:<1@y.test>\r\nRCPT TO:<2@y.test>\r\nRCPT TO:<3@y.test>\r\nRCPT TO:<4@y.test>\r\n");
  EXPECT_EQ(out, "250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 Error: too many recipients\r\n");
  EXPECT_EQ(t.Feed("DATA\r\nx\r\n.\r\n"), "354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as Q1\r\n");
  EXPECT_EQ(t.h.messages[0].txn.recipients.size(), 3u);
}

TEST(ServerSession, OverlongCommandLineIsRefusedAndSkipped) {
  Harness t;
  std::string out = t.Feed(std::string(5000, 'A') + "\r\nNOOP\r\n");
  EXPECT_EQ(out, "500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n");
  // Same split across many feeds.
  Harness u;
  std::string all;
  for (int i = 0; i < 50; ++i) all += u.Feed(std::string(100, 'B'));
  all += u.Feed("\r\nNOOP\r\n");
  EXPECT_EQ(all, "500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n");
  EXPECT_LE(u.session.BufferedInput(), 2048u);
}

TEST(ServerSession, TooManyErrorsCloses421) {
  Harness t;
  std::string out;
  for (int i = 0; i < 12; ++i) out += t.Feed("\x01\x02garbage\r\n");
  EXPECT_NE(out.find("421 4.7.0 gw.test Error: too many errors\r\n"), std::string::npos);
  EXPECT_TRUE(t.session.Closed());
}

TEST(ServerSession, NulInCommandIsAnError) {
  Harness t;
  EXPECT_EQ(t.Feed(std::string("NOOP\0x\r\n", 8)), "500 5.5.2 Error: bad character in command\r\n");
}

TEST(ServerSession, TooManyCommandsWithoutMailCloses) {
  ServerOptions o = Harness::DefaultOptions();
  o.limits.max_commands_before_mail = 5;
  Harness t(o);
  std::string out;
  for (int i = 0; i < 6; ++i) out += t.Feed("NOOP\r\n");
  EXPECT_NE(out.find("421 4.7.0"), std::string::npos);
  EXPECT_TRUE(t.session.Closed());
}

// ---- SMTP smuggling (2023): only CRLF.CRLF ends DATA ---------------------------------

struct SmugglingCase {
  const char* name;
  const char* fake_end;
};

void PrintTo(const SmugglingCase& c, std::ostream* os) { *os << c.name; }

class Smuggling : public ::testing::TestWithParam<SmugglingCase> {};

TEST_P(Smuggling, FakeEndNeverEndsDataAndTheMessageIsRefused) {
  for (bool bytewise : {false, true}) {
    Harness t;
    std::string payload = std::string(kEnvelope) + "Subject: a\r\n\r\nbody" + GetParam().fake_end +
                          "MAIL FROM:<admin@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nsmuggled\r\n" +
                          "\r\n.\r\nNOOP\r\n";
    std::string out = t.Feed(payload, bytewise);
    EXPECT_TRUE(t.h.messages.empty()) << GetParam().name;
    EXPECT_NE(out.find("550 5.5.2 Error: bare <LF> or <CR> in message text; use <CR><LF>\r\n"),
              std::string::npos) << GetParam().name << ": " << out;
    // Nothing of the smuggled commands was executed: exactly one 354, one 250 for NOOP.
    EXPECT_EQ(out.find("354", out.find("354") + 1), std::string::npos) << GetParam().name;
    EXPECT_TRUE(out.size() >= 14 && out.substr(out.size() - 14) == "250 2.0.0 Ok\r\n") << out;
    EXPECT_GE(t.h.aborts, 1);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Payloads, Smuggling,
    ::testing::Values(SmugglingCase{"LF.LF", "\n.\n"}, SmugglingCase{"LF.CRLF", "\n.\r\n"},
                      SmugglingCase{"CRLF.LF", "\r\n.\n"}, SmugglingCase{"CR.CR", "\r.\r"},
                      SmugglingCase{"CR.CRLF", "\r.\r\n"}, SmugglingCase{"CRLF.CR", "\r\n.\r"},
                      SmugglingCase{"LF.CR", "\n.\r"}, SmugglingCase{"CR.LF", "\r.\n"},
                      SmugglingCase{"CRLF.NULCRLF", "\r\n.\r\x00\r\n"}),
    [](const auto& param_info) {
      std::string n;
      for (char c : std::string(param_info.param.name)) n += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
      return n;
    });

TEST(ServerSession, NormalizeModeStoresCrlfAndStillNeverEndsEarly) {
  ServerOptions o = Harness::DefaultOptions();
  o.bare_newline = BareNewlinePolicy::kNormalize;
  Harness t(o);
  std::string out = t.Feed(std::string(kEnvelope) + "a\nb\rc\n.\nd\r\n.\r\n");
  ASSERT_EQ(t.h.messages.size(), 1u) << out;
  EXPECT_EQ(t.h.messages[0].body, "a\r\nb\r\nc\r\n.\r\nd\r\n");
}

TEST(ServerSession, MessageOverSizeIsRefused552AfterItsEnd) {
  ServerOptions o = Harness::DefaultOptions();
  o.limits.max_message_size = 1000;
  Harness t(o);
  std::string body;
  for (int i = 0; i < 100; ++i) body += "0123456789012345678901234567890123456789\r\n";
  std::string out = t.Feed(std::string(kEnvelope) + body + ".\r\nNOOP\r\n");
  EXPECT_NE(out.find("552 5.3.4 Error: message size exceeds fixed limit\r\n250 2.0.0 Ok\r\n"), std::string::npos) << out;
  EXPECT_TRUE(t.h.messages.empty());
  EXPECT_EQ(t.h.aborts, 1);
}

TEST(ServerSession, OverlongDataLineAndHugeHeaderAreRefused) {
  ServerOptions o = Harness::DefaultOptions();
  o.limits.max_data_line_length = 1000;
  o.limits.max_header_size = 100;
  Harness t(o);
  std::string out = t.Feed(std::string(kEnvelope) + "\r\n" + std::string(2000, 'x') + "\r\n.\r\n");
  EXPECT_NE(out.find("554 5.6.0 Error: message line too long"), std::string::npos) << out;
  out = t.Feed("MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
  for (int i = 0; i < 10; ++i) out += t.Feed("X-Header: 01234567890123456789\r\n");
  out += t.Feed("\r\nbody\r\n.\r\n");
  EXPECT_NE(out.find("552 5.3.4 Error: message header too large"), std::string::npos) << out;
  EXPECT_TRUE(t.h.messages.empty());
}

TEST(ServerSession, MailLoopIsRefusedAfterTooManyReceivedHeaders) {
  for (bool bdat : {false, true}) {
    Harness t;
    std::string header;
    for (int i = 0; i < 101; ++i) header += "Received: from hop" + std::to_string(i) + "\r\n";
    std::string msg = header + "Subject: loop\r\n\r\nbody with Received: in it\r\n";
    std::string out = bdat ? t.Feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT " +
                                    std::to_string(msg.size()) + " LAST\r\n" + msg)
                           : t.Feed(std::string(kEnvelope) + msg + ".\r\n");
    EXPECT_NE(out.find("554 5.4.6 Error: too many Received headers"), std::string::npos) << bdat << out;
    EXPECT_TRUE(t.h.messages.empty());
  }
  // 100 hops (and "Received:" text in the body) are fine.
  Harness t;
  std::string header;
  for (int i = 0; i < 100; ++i) header += "RECEIVED: from hop\r\n";
  t.Feed(std::string(kEnvelope) + header + "\r\nReceived: x\r\nReceived: y\r\n.\r\n");
  EXPECT_EQ(t.h.messages.size(), 1u);
}

// ---- CHUNKING (RFC 3030) -------------------------------------------------------------

TEST(ServerSession, BdatChunksAreRawAndCounted) {
  for (bool bytewise : {false, true}) {
    Harness t;
    std::string out = t.Feed(
        "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
        "BDAT 7\r\nab\r\n.\r\nBDAT 3 LAST\r\nxyzNOOP\r\n", bytewise);
    ASSERT_EQ(t.h.messages.size(), 1u);
    EXPECT_EQ(t.h.messages[0].body, "ab\r\n.\r\nxyz");
    EXPECT_NE(out.find("250 2.0.0 7 octets received\r\n250 2.0.0 Ok: queued as Q1\r\n250 2.0.0 Ok\r\n"),
              std::string::npos) << out;
  }
}

TEST(ServerSession, BdatWithoutTransactionSwallowsTheChunk) {
  Harness t;
  std::string out = t.Feed("EHLO c.test\r\nBDAT 10 LAST\r\nRSET\r\nXXXXNOOP\r\n");
  EXPECT_NE(out.find("503 5.5.1 Error: need MAIL command\r\n250 2.0.0 Ok\r\n"), std::string::npos) << out;
  EXPECT_TRUE(t.h.messages.empty());
}

TEST(ServerSession, BadBdatSizeClosesBecauseWeCannotResync) {
  Harness t;
  std::string out = t.Feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT x\r\n");
  EXPECT_NE(out.find("554 5.5.4 Error: bad BDAT syntax, closing"), std::string::npos);
  EXPECT_TRUE(t.session.Closed());
}

TEST(ServerSession, DataAfterBdatIsRefused) {
  Harness t;
  std::string out = t.Feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 2\r\nabDATA\r\n");
  EXPECT_NE(out.find("503 5.5.1 Error: DATA after BDAT"), std::string::npos) << out;
}

TEST(ServerSession, PushBackFromHandlerIs452NotAnError) {
  Harness t;
  t.h.refuse_mail = true;
  t.Feed("EHLO c.test\r\n");
  std::string out;
  for (int i = 0; i < 20; ++i) out += t.Feed("MAIL FROM:<a@x.test>\r\n");
  EXPECT_EQ(out.find("421"), std::string::npos) << "a full queue must not count as client errors";
  EXPECT_NE(out.find("452 4.3.1"), std::string::npos);
}

TEST(ServerSession, TimeoutAndShutdownAnswer421) {
  Harness t;
  t.session.Timeout();
  EXPECT_EQ(t.session.TakeOutput(), "421 4.4.2 gw.test Error: timeout exceeded\r\n");
  Harness u;
  u.Feed(kEnvelope);
  u.Feed("partial");
  u.session.Shutdown();
  EXPECT_EQ(u.session.TakeOutput(), "421 4.3.2 gw.test Service shutting down, try again later\r\n");
  EXPECT_EQ(u.h.aborts, 1) << "the half-received message is abandoned";
}

}  // namespace
}  // namespace mailseal::smtp

namespace mailseal::smtp {
namespace {
// Found by fuzz_smtp_server in CI: which limit a message breaks first must not depend on how
// the input was split into reads.
TEST(ServerSession, FirstLimitCrossedWinsWhateverTheChunking) {
  ServerOptions o = Harness::DefaultOptions();
  o.limits.max_message_size = 300;
  o.limits.max_header_size = 100;
  o.limits.max_data_line_length = 1000;
  for (const std::string& body : {std::string(2000, 'h') + "\r\n", "Subject: " + std::string(500, 'x') + "\r\n\r\nb\r\n",
                                  "A: b\r\n\r\n" + std::string(1200, 'y') + "\r\n"}) {
    Harness whole(o), split(o);
    std::string a = whole.Feed(std::string(kEnvelope) + body + ".\r\n");
    std::string b = split.Feed(std::string(kEnvelope) + body + ".\r\n", /*bytewise=*/true);
    EXPECT_EQ(a, b);
  }
}

// ---- STARTTLS (RFC 3207, SM-5) and MAIL decided later (SPF, SM-5b) ----

ServerOptions TlsOptions(bool required = false) {
  ServerOptions o = Harness::DefaultOptions();
  o.starttls = true;
  o.require_tls = required;
  return o;
}

TEST(ServerSession, StarttlsIsOfferedAnsweredAndThenForgotten) {
  Harness t(TlsOptions());
  std::string ehlo = t.Feed("EHLO c.test\r\n");
  EXPECT_NE(ehlo.find("250-HELP\r\n250 STARTTLS\r\n"), std::string::npos) << ehlo;
  EXPECT_EQ(t.Feed("STARTTLS now\r\n"), "501 5.5.4 Syntax: STARTTLS\r\n");
  EXPECT_EQ(t.Feed("STARTTLS\r\n"), "220 2.0.0 Ready to start TLS\r\n");
  EXPECT_TRUE(t.session.TlsPending());
  EXPECT_TRUE(t.session.Paused()) << "the driver must stop handing clear bytes to the session";
  t.session.TlsStarted();
  EXPECT_TRUE(t.session.tls_active());
  EXPECT_FALSE(t.session.Paused());
  // RFC 3207 §4.2: everything learnt before is forgotten; EHLO again, no STARTTLS offered.
  EXPECT_EQ(t.Feed("MAIL FROM:<a@x.test>\r\n"), "503 5.5.1 Error: send HELO/EHLO first\r\n");
  ehlo = t.Feed("EHLO c.test\r\n");
  EXPECT_EQ(ehlo.find("STARTTLS"), std::string::npos) << ehlo;
  EXPECT_EQ(t.Feed("STARTTLS\r\n"), "554 5.5.1 Error: TLS already active\r\n");
}

TEST(ServerSession, CommandsPipelinedBehindStarttlsAreDropped) {
  // CVE-2011-0411: "STARTTLS\r\nRCPT..." in one packet must not run RCPT as if it came over TLS.
  for (bool bytewise : {false, true}) {
    Harness t(TlsOptions());
    t.Feed("EHLO c.test\r\n");
    std::string out = t.Feed("STARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<b@y.test>\r\n", bytewise);
    EXPECT_EQ(out, "220 2.0.0 Ready to start TLS\r\n");
    EXPECT_EQ(t.session.BufferedInput(), 0u);
    t.session.TlsStarted();
    EXPECT_EQ(t.session.TakeOutput(), "") << "nothing from before the handshake may be answered after it";
    t.Feed("EHLO c.test\r\n");
    EXPECT_EQ(t.Feed("RCPT TO:<b@y.test>\r\n"), "503 5.5.1 Error: need MAIL command\r\n");
  }
}

TEST(ServerSession, StarttlsRefusedInsideATransactionOrWhenNotOffered) {
  Harness plain;
  plain.Feed("EHLO c.test\r\n");
  EXPECT_EQ(plain.Feed("STARTTLS\r\n"), "502 5.5.1 Error: STARTTLS not available\r\n");
  Harness t(TlsOptions());
  t.Feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n");
  EXPECT_EQ(t.Feed("STARTTLS\r\n"), "503 5.5.1 Error: STARTTLS inside a mail transaction\r\n");
  EXPECT_FALSE(t.session.TlsPending());
}

TEST(ServerSession, RequiredTlsRefusesMailInClear) {
  Harness t(TlsOptions(/*required=*/true));
  t.Feed("EHLO c.test\r\n");
  EXPECT_EQ(t.Feed("MAIL FROM:<a@x.test>\r\n"), "530 5.7.0 Must issue a STARTTLS command first\r\n");
  t.Feed("STARTTLS\r\n");
  t.session.TlsStarted();
  EXPECT_EQ(t.Feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\n").substr(0, 4), "250-");
  EXPECT_TRUE(t.session.InTransaction());
}

TEST(ServerSession, PendingMailHoldsPipelinedCommandsUntilDecided) {
  for (bool accept : {true, false}) {
    Harness t;
    t.h.pending_mail = true;
    std::string out = t.Feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    EXPECT_EQ(out.find("2.1.0"), std::string::npos) << "MAIL is not answered before the decision";
    EXPECT_TRUE(t.session.Paused());
    EXPECT_GT(t.session.BufferedInput(), 0u);
    if (accept) {
      t.session.CompleteMail({});
      EXPECT_EQ(t.session.TakeOutput(), "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
    } else {
      t.session.CompleteMail(MakeReply(550, "5.7.23", "SPF: x.test does not allow 192.0.2.1"));
      EXPECT_EQ(t.session.TakeOutput(), "550 5.7.23 SPF: x.test does not allow 192.0.2.1\r\n"
                                        "503 5.5.1 Error: need MAIL command\r\n"
                                        "503 5.5.1 Error: need MAIL command\r\n");
      EXPECT_FALSE(t.session.InTransaction());
    }
    t.session.CompleteMail({});   // a late second answer changes nothing
    EXPECT_EQ(t.session.TakeOutput(), "");
  }
}

// Issue #19 (DE-11): a RCPT the recipient directory is asked about pauses the session; the
// commands pipelined behind it wait, in order, and a late second answer changes nothing.
TEST(ServerSession, PendingRcptHoldsPipelinedCommandsUntilDecided) {
  for (bool known : {true, false}) {
    Harness t;
    t.h.pending_rcpt = true;
    std::string out = t.Feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<u@dir.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    EXPECT_NE(out.find("250 2.1.0 Ok"), std::string::npos);
    EXPECT_EQ(out.find("2.1.5"), std::string::npos) << "the RCPT is not answered before the directory";
    EXPECT_TRUE(t.session.Paused());
    if (known) {
      t.session.CompleteRcpt({});
      EXPECT_EQ(t.session.TakeOutput(), "250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
    } else {
      t.session.CompleteRcpt(MakeReply(550, "5.1.1", "<u@dir.test>: Recipient address rejected: user unknown"));
      EXPECT_EQ(t.session.TakeOutput(), "550 5.1.1 <u@dir.test>: Recipient address rejected: user unknown\r\n"
                                        "250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
    }
    t.session.CompleteRcpt(MakeReply(451, "4.4.3", "late"));   // changes nothing
    EXPECT_EQ(t.session.TakeOutput(), "");
  }
  // Directory down: 451 for that recipient, the transaction goes on without it.
  Harness t;
  t.h.pending_rcpt = true;
  t.Feed("EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<u@dir.test>\r\nDATA\r\n");
  t.session.CompleteRcpt(MakeReply(451, "4.4.3", "Recipient directory unavailable, try again later"));
  EXPECT_EQ(t.session.TakeOutput(), "451 4.4.3 Recipient directory unavailable, try again later\r\n"
                                    "554 5.5.1 Error: no valid recipients\r\n");
}

}  // namespace
}  // namespace mailseal::smtp
