// server_session.h — the SMTP server protocol core, sans-I/O.
//
// Bytes from the client go in through Feed(); replies come out through TakeOutput(); message
// content and transaction decisions go to a ServerHandler. Nothing here touches a socket, a
// file or a clock, so the kernel and DPDK back ends, unit tests and fuzzers all drive it alike.
//
// SECURITY: every byte is untrusted. Each buffer that input can grow is bounded by
// ServerLimits. The only end of DATA is <CR><LF>.<CR><LF>: a bare LF or bare CR never ends the
// data (SMTP smuggling, 2023), and such a message is refused or normalised by configuration.
//
// STANDARDS: RFC 5321 (SMTP), RFC 2920 (PIPELINING), RFC 1870 (SIZE), RFC 6152 (8BITMIME),
// RFC 2034/3463 (ENHANCEDSTATUSCODES), RFC 3030 (CHUNKING), RFC 6531 (SMTPUTF8),
// RFC 3461 (DSN parameters).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "dataplane/smtp/address.h"
#include "dataplane/smtp/reply.h"

namespace mailseal::smtp {

struct ServerLimits {
  uint64_t max_message_size = 35ull << 20;
  uint32_t max_recipients = 1000;
  uint32_t max_line_length = 2048;
  uint32_t max_data_line_length = 1000 * 64;
  uint32_t max_header_size = 1u << 20;
  uint32_t max_errors = 10;
  uint32_t max_commands_before_mail = 50;
};

enum class BareNewlinePolicy { kReject, kNormalize };

struct ServerOptions {
  std::string hostname = "localhost";
  ServerLimits limits;
  BareNewlinePolicy bare_newline = BareNewlinePolicy::kReject;
  // starttls: STARTTLS is offered (RFC 3207) — the driver has a TLS context.
  bool starttls = false;
  // require_tls: MAIL is refused (530 5.7.0) until TLS is active (SM-6.1 securemail hosts).
  bool require_tls = false;
};

// kReplyPending, returned by ServerHandler::OnMail, means "deciding": the session pauses until
// the driver calls ServerSession::CompleteMail (e.g. after an SPF check, RFC 7208); from
// OnRcpt, until CompleteRcpt (a recipient directory lookup, issue #19).
inline constexpr int kReplyPending = 1;

struct Recipient {
  std::string address;
  std::string notify;  // RFC 3461 NOTIFY, upper-cased; empty: not given
  std::string orcpt;   // RFC 3461 ORCPT as given
};

struct Transaction {
  std::string helo;
  std::string mail_from;      // empty: null sender
  uint64_t declared_size = 0; // SIZE=, 0: not given
  std::string body_type;      // "7BIT", "8BITMIME"; empty: not given
  bool smtputf8 = false;
  std::string ret;            // "FULL" / "HDRS"
  std::string envid;          // xtext-decoded
  std::vector<Recipient> recipients;
};

// ServerHandler receives the session's decisions and message content. Every call happens
// inside Feed() (or CompleteData()) on the caller's thread.
class ServerHandler {
 public:
  virtual ~ServerHandler() = default;
  // OnMail may refuse a transaction (e.g. 452 4.3.1 when the queue is full), or answer
  // kReplyPending and decide later through CompleteMail. Default: accept.
  virtual Reply OnMail(const Transaction& txn) { return {}; }
  // OnRcpt decides one recipient (relay control, the recipient directory). Return code 0 to
  // accept, or kReplyPending and decide later through CompleteRcpt.
  virtual Reply OnRcpt(const Transaction& txn, const Recipient& rcpt) { return {}; }
  // OnDataStart opens the message's storage. Return code 0 to go on.
  virtual Reply OnDataStart(const Transaction& txn) { return {}; }
  // OnDataChunk receives message content in order: CRLF lines, dot-unstuffed.
  virtual void OnDataChunk(std::string_view bytes) {}
  // OnDataEnd: content is complete and valid. The handler must make it durable and then call
  // ServerSession::CompleteData() with the reply (now or later); until then input is buffered.
  virtual void OnDataEnd(const Transaction& txn) = 0;
  // OnDataAbort: the content that was started will not complete (refused, reset, closed).
  virtual void OnDataAbort() {}
  // OnRefused: a message was refused after its content (smuggling defence, size, line
  // length); `reply` says why. For the operator's log.
  virtual void OnRefused(const Transaction& txn, const Reply& reply) {}
};

class ServerSession {
 public:
  ServerSession(const ServerOptions& options, ServerHandler* handler);

  // Start queues the 220 greeting.
  void Start();
  // Feed consumes client bytes. Returns false once the session is closed (after QUIT, 421...).
  bool Feed(std::string_view bytes);
  // CompleteData delivers the reply for the message passed to OnDataEnd and resumes input.
  void CompleteData(const Reply& reply);
  // CompleteRcpt decides a RCPT that OnRcpt left pending (code 0: accepted) and resumes input.
  void CompleteRcpt(const Reply& r);
  // CompleteMail decides a MAIL that OnMail left pending (code 0: accepted) and resumes input.
  void CompleteMail(const Reply& reply);
  // TlsPending: STARTTLS was accepted (its 220 is in the output). The driver sends that output
  // in clear, then does the TLS handshake and calls TlsStarted(), or closes the connection.
  // Nothing the client sent after the STARTTLS line is kept (CVE-2011-0411 class).
  bool TlsPending() const { return state_ == State::kStartTls; }
  // TlsStarted: the handshake is done; the session starts afresh (RFC 3207 §4.2: the client
  // must EHLO again, and STARTTLS is no longer offered).
  void TlsStarted();
  bool tls_active() const { return tls_active_; }
  // Timeout answers 421 and closes (the driver's idle timer fired).
  void Timeout();
  // Shutdown answers 421 (daemon stopping) and closes.
  void Shutdown();

  // TakeOutput moves out the reply bytes produced so far.
  std::string TakeOutput();
  bool HasOutput() const { return !out_.empty(); }
  // Closed: the driver should flush the output and close the connection.
  bool Closed() const { return closed_; }
  // Paused: waiting for CompleteData(), CompleteMail() or TlsStarted(); the driver should stop
  // reading (input is buffered).
  bool Paused() const {
    return state_ == State::kCommitting || state_ == State::kMailPending || state_ == State::kRcptPending ||
           state_ == State::kStartTls;
  }
  size_t BufferedInput() const { return in_.size(); }
  // InTransaction: between MAIL and the end of the message (a drain waits for it).
  bool InTransaction() const { return in_txn_ || state_ != State::kCommand; }

  struct Counters {
    uint64_t messages_accepted = 0;
    uint64_t messages_refused = 0;
    uint64_t errors = 0;
  };
  const Counters& counters() const { return counters_; }

 private:
  enum class State { kCommand, kData, kBdat, kCommitting, kMailPending, kRcptPending, kStartTls, kClosed };
  enum class DataState { kBol, kBolBare, kMid, kCR, kBolDot, kBolDotCR };
  enum class Refusal { kNone, kBareNewline, kTooBig, kLineTooLong, kHeaderTooBig, kTooManyHops };
  static constexpr uint32_t kMaxReceived = 100;  // Postfix's hopcount_limit default is 50

  struct Verb;
  void ProcessInput();
  void HandleLine(std::string_view line);
  void Send(const Reply& r);
  void Send(int code, std::string_view enhanced, std::string_view text);
  void Error(int code, std::string_view enhanced, std::string_view text);
  void Close(int code, std::string_view enhanced, std::string_view text);
  void ResetTransaction();
  Reply BeginData();
  void AbortData(Refusal why);
  size_t ConsumeData(std::string_view in);   // returns bytes consumed
  size_t ConsumeBdat(std::string_view in);
  void EmitData(std::string_view bytes);
  void EmitDataChar(char c);
  void EmitRun(std::string_view run);
  void ScanHeader(std::string_view bytes);
  void FlushChunk();
  void FinishData();

  // ParsePath parses MAIL/RCPT arguments; on failure it has already answered.
  bool ParsePath(std::string_view args, bool is_mail, bool utf8, PathArgs* pa);
  void CmdEhlo(std::string_view args);
  void CmdHelo(std::string_view args);
  void CmdMail(std::string_view args);
  void AcceptMail(Transaction t);
  void CmdRcpt(std::string_view args);
  void FinishRcpt(Recipient rc, const Reply& r);
  void CmdData(std::string_view args);
  void CmdBdat(std::string_view args);
  void CmdRset(std::string_view args);
  void CmdNoop(std::string_view args);
  void CmdQuit(std::string_view args);
  void CmdHelp(std::string_view args);
  void CmdVrfy(std::string_view args);
  void CmdExpn(std::string_view args);
  void CmdStarttls(std::string_view args);

  ServerOptions options_;
  ServerHandler* handler_;
  State state_ = State::kCommand;
  std::string in_;         // unconsumed input (a partial command line, or paused input)
  std::string out_;
  bool closed_ = false;
  bool discarding_long_line_ = false;

  // Session state.
  std::string helo_;
  bool esmtp_ = false;
  bool tls_active_ = false;
  Transaction pending_mail_;   // MAIL waiting for CompleteMail
  Recipient pending_rcpt_;     // RCPT waiting for CompleteRcpt
  uint32_t errors_ = 0;
  uint32_t commands_outside_txn_ = 0;

  // Transaction state.
  bool in_txn_ = false;
  bool used_bdat_ = false;
  bool data_started_ = false;   // OnDataStart accepted (storage open)
  Transaction txn_;
  // Data phase.
  DataState dstate_ = DataState::kBol;
  Refusal refusal_ = Refusal::kNone;
  uint64_t data_bytes_ = 0;
  uint64_t line_bytes_ = 0;
  uint64_t header_bytes_ = 0;
  bool header_done_ = false;
  uint32_t header_line_len_ = 0;
  uint32_t header_prefix_len_ = 0;   // how much of "received:" this header line starts with
  uint32_t received_count_ = 0;
  bool saw_bare_ = false;
  std::string chunk_;
  uint64_t bdat_remaining_ = 0;
  uint64_t bdat_size_ = 0;
  bool bdat_last_ = false;
  bool bdat_refused_ = false;   // swallow this chunk's bytes, then send bdat_reply_
  Reply bdat_reply_;
  bool processing_ = false;
  bool discard_after_starttls_ = false;

  Counters counters_;
};

}  // namespace mailseal::smtp
