// client_session.h — the SMTP client protocol core, sans-I/O (the delivery side).
//
// The driver feeds server bytes with Feed(), sends what TakeOutput() returns, and streams the
// message body through a BodyEncoder when state() is kSendBody. One session may carry several
// messages (StartMessage again after MessageDone()).
//
// SECURITY: replies are untrusted; reply lines and line counts are bounded. The body is always
// sent with CRLF line ends and dot-stuffed, so content can never end DATA early at the next hop
// (SMTP smuggling) whatever it holds.
//
// STANDARDS: RFC 5321, RFC 2920 (PIPELINING), RFC 1870 (SIZE), RFC 6152, RFC 6531, RFC 3461.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "dataplane/smtp/reply.h"
#include "dataplane/smtp/server_session.h"

namespace mailseal::smtp {

struct ServerCapabilities {
  bool esmtp = false;
  bool pipelining = false;
  bool size = false;
  uint64_t max_size = 0;   // 0: no limit given
  bool eight_bit = false;
  bool smtputf8 = false;
  bool dsn = false;
  bool chunking = false;
  bool starttls = false;
};

struct ClientMessage {
  std::string mail_from;
  std::vector<Recipient> recipients;
  std::string body_type;   // "8BITMIME" or ""
  bool smtputf8 = false;
  std::string ret;
  std::string envid;
  uint64_t size = 0;
};

struct MessageResult {
  Reply mail;                 // reply to MAIL
  std::vector<Reply> rcpt;    // one per recipient, in order (code 0: not attempted)
  Reply data;                 // final reply after the body (or to DATA if refused)
  // RecipientOutcome: the reply that decides recipient i.
  const Reply& RecipientOutcome(size_t i) const;
};

// BodyEncoder turns stored message bytes into DATA wire form: CRLF line ends, dot-stuffing,
// and a final CRLF "." CRLF.
class BodyEncoder {
 public:
  void Encode(std::string_view in, std::string* out);
  void Finish(std::string* out);
 private:
  bool bol_ = true;
  bool cr_ = false;
};

class ClientSession {
 public:
  enum class State {
    kGreeting, kEhlo, kHelo, kReady, kInMessage, kSendBody, kBodySent, kMessageDone,
    kQuitting, kClosed, kFailed,
    kStartTls,   // STARTTLS sent, waiting for 220
    kTlsReady,   // 220 received: the driver does the TLS handshake, then calls TlsStarted()
  };
  // TLS use (RFC 3207): never; when offered (SM-5, opportunistic); or required (the policy's
  // require-TLS rule: no TLS, no delivery — a 4.7.x failure, retried and in the end returned).
  enum class Tls { kNever, kOpportunistic, kRequired };

  explicit ClientSession(std::string helo_name, Tls tls = Tls::kNever);
  // TlsStarted: the driver finished the TLS handshake; EHLO is sent again (RFC 3207 §4.2).
  void TlsStarted();
  bool tls_active() const { return tls_active_; }

  // Feed processes server bytes.
  void Feed(std::string_view bytes);
  std::string TakeOutput();

  // StartMessage begins a transaction; allowed when state() is kReady or kMessageDone.
  void StartMessage(const ClientMessage& msg);
  // BodyDone: the driver has sent the whole encoded body (including the final ".").
  void BodyDone();
  void Quit();
  // Fail marks the session failed with a local diagnostic (timeout, connection lost).
  void Fail(const Reply& why);

  State state() const { return state_; }
  const ServerCapabilities& capabilities() const { return caps_; }
  const MessageResult& result() const { return result_; }
  // failure: why the session failed (greeting refused, bad reply, timeout...).
  const Reply& failure() const { return failure_; }
  const std::string& server_banner() const { return banner_; }

 private:
  enum class Cmd { kMail, kRcpt, kData, kRset };
  void OnReply(const Reply& r);
  void OnTransactionReply(const Reply& r);
  void SendNextUnpipelined();
  std::string MailCommand() const;
  std::string RcptCommand(const Recipient& r) const;

  void AfterEhlo();
  std::string helo_name_;
  Tls tls_ = Tls::kNever;
  bool tls_active_ = false;
  State state_ = State::kGreeting;
  std::string in_;
  std::string out_;
  // Reply being assembled.
  std::vector<std::string> lines_;
  int reply_code_ = 0;
  ServerCapabilities caps_;
  std::string banner_;
  Reply failure_;
  // Transaction.
  ClientMessage msg_;
  MessageResult result_;
  std::deque<Cmd> expected_;
  size_t next_rcpt_to_send_ = 0;
  size_t next_rcpt_reply_ = 0;
  bool any_rcpt_ok_ = false;
  bool data_sent_ = false;
  bool discard_data_reply_ = false;
};

}  // namespace mailseal::smtp
