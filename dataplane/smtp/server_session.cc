// server_session.cc — see server_session.h for what this trusts and implements.
#include "dataplane/smtp/server_session.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>

namespace mailseal::smtp {
namespace {

constexpr size_t kChunkSize = 64 * 1024;

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::toupper(static_cast<unsigned char>(x)) ==
                  std::toupper(static_cast<unsigned char>(y));
         });
}

std::string StrCatView(std::string_view a, std::string_view b, std::string_view c) {
  std::string s(a);
  s += b;
  s += c;
  return s;
}

std::string Upper(std::string_view in) {
  std::string v(in);
  for (char& c : v) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return v;
}

bool StartsWithIgnoreCase(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && EqualsIgnoreCase(s.substr(0, prefix.size()), prefix);
}

bool ValidHeloArg(std::string_view s) {
  if (s.empty() || s.size() > 255) return false;
  for (unsigned char c : s)
    if (c <= 32 || c == 127) return false;
  return true;
}

}  // namespace

// The verb table: one row per command, each handler checks its own preconditions.
struct ServerSession::Verb {
  std::string_view name;
  void (ServerSession::*handler)(std::string_view);
  bool counts_outside_txn;  // limited by max_commands_before_mail
};

namespace {
using S = ServerSession;
}

ServerSession::ServerSession(const ServerOptions& options, ServerHandler* handler)
    : options_(options), handler_(handler) {}

void ServerSession::Start() {
  Send(220, "", options_.hostname + " ESMTP mailseal");
}

std::string ServerSession::TakeOutput() {
  std::string out;
  out.swap(out_);
  return out;
}

void ServerSession::Send(const Reply& r) { out_ += r.Wire(); }

void ServerSession::Send(int code, std::string_view enhanced, std::string_view text) {
  Send(MakeReply(code, enhanced, text));
}

void ServerSession::Error(int code, std::string_view enhanced, std::string_view text) {
  ++counters_.errors;
  if (++errors_ >= options_.limits.max_errors) {
    Send(code, enhanced, text);
    Close(421, "4.7.0", options_.hostname + " Error: too many errors");
    return;
  }
  Send(code, enhanced, text);
}

void ServerSession::Close(int code, std::string_view enhanced, std::string_view text) {
  if (closed_) return;
  if (code) Send(code, enhanced, text);
  if (data_started_ || state_ == State::kData || state_ == State::kBdat) AbortData(refusal_);
  closed_ = true;
  state_ = State::kClosed;
  in_.clear();
}

void ServerSession::Timeout() {
  Close(421, "4.4.2", options_.hostname + " Error: timeout exceeded");
}

void ServerSession::Shutdown() {
  if (state_ == State::kCommitting) return;  // the commit's reply comes first
  Close(421, "4.3.2", options_.hostname + " Service shutting down, try again later");
}

bool ServerSession::Feed(std::string_view bytes) {
  if (closed_) return false;
  if (state_ == State::kStartTls) return true;   // clear bytes after STARTTLS are never commands
  // Bound what we hold: a command line is at most max_line_length; while paused the driver
  // stops reading, so at most one read's worth plus a partial line is held.
  in_.append(bytes);
  ProcessInput();
  return !closed_;
}

void ServerSession::ProcessInput() {
  if (processing_) return;  // CompleteData() called from inside a handler: the loop goes on
  processing_ = true;
  size_t pos = 0;
  while (!closed_ && pos < in_.size()) {
    std::string_view rest(in_.data() + pos, in_.size() - pos);
    if (Paused()) break;
    if (state_ == State::kData) {
      pos += ConsumeData(rest);
      continue;
    }
    if (state_ == State::kBdat) {
      pos += ConsumeBdat(rest);
      continue;
    }
    // Command mode: one line at a time.
    size_t lf = rest.find('\n');
    if (discarding_long_line_) {
      if (lf == std::string_view::npos) { pos = in_.size(); break; }
      pos += lf + 1;
      discarding_long_line_ = false;
      continue;
    }
    if (lf == std::string_view::npos) {
      if (rest.size() >= options_.limits.max_line_length) {
        discarding_long_line_ = true;
        pos = in_.size();
        Error(500, "5.5.2", "Error: line too long");
      }
      break;
    }
    std::string_view line = rest.substr(0, lf);
    pos += lf + 1;
    if (line.size() + 1 > options_.limits.max_line_length) {
      Error(500, "5.5.2", "Error: line too long");
      continue;
    }
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    HandleLine(line);
  }
  if (closed_ || discard_after_starttls_) {
    in_.clear();
    discard_after_starttls_ = false;
  } else {
    in_.erase(0, pos);
  }
  processing_ = false;
}

void ServerSession::HandleLine(std::string_view line) {
  static constexpr std::array<Verb, 13> kVerbs{{
      {"EHLO", &S::CmdEhlo, true},   {"HELO", &S::CmdHelo, true},
      {"MAIL", &S::CmdMail, false},  {"RCPT", &S::CmdRcpt, false},
      {"DATA", &S::CmdData, false},  {"BDAT", &S::CmdBdat, false},
      {"RSET", &S::CmdRset, true},   {"NOOP", &S::CmdNoop, true},
      {"QUIT", &S::CmdQuit, false},  {"HELP", &S::CmdHelp, true},
      {"VRFY", &S::CmdVrfy, true},   {"EXPN", &S::CmdExpn, true},
      {"STARTTLS", &S::CmdStarttls, true},
  }};
  for (unsigned char c : line) {
    if (c == 0 || c == '\r') {
      Error(500, "5.5.2", "Error: bad character in command");
      return;
    }
  }
  size_t sp = line.find(' ');
  std::string_view verb = line.substr(0, sp);
  std::string_view args = sp == std::string_view::npos ? std::string_view() : line.substr(sp + 1);
  for (const Verb& v : kVerbs) {
    if (!EqualsIgnoreCase(verb, v.name)) continue;
    if (v.counts_outside_txn && !in_txn_ &&
        ++commands_outside_txn_ > options_.limits.max_commands_before_mail) {
      Close(421, "4.7.0", options_.hostname + " Error: too many commands without mail");
      return;
    }
    (this->*v.handler)(args);
    return;
  }
  Error(500, "5.5.2", "Error: command not recognized");
}

void ServerSession::ResetTransaction() {
  if (data_started_) AbortData(Refusal::kNone);
  in_txn_ = false;
  used_bdat_ = false;
  txn_ = Transaction{};
  txn_.helo = helo_;
}

void ServerSession::CmdEhlo(std::string_view args) {
  if (!ValidHeloArg(args)) return Error(501, "5.5.4", "Syntax: EHLO hostname");
  ResetTransaction();
  helo_ = std::string(args);
  txn_.helo = helo_;
  esmtp_ = true;
  std::string text = options_.hostname + "\nPIPELINING\nSIZE " +
                     std::to_string(options_.limits.max_message_size) +
                     "\n8BITMIME\nENHANCEDSTATUSCODES\nCHUNKING\nSMTPUTF8\nDSN\nHELP";
  if (options_.starttls && !tls_active_) text += "\nSTARTTLS";
  Send(250, "", text);
}

void ServerSession::CmdHelo(std::string_view args) {
  if (!ValidHeloArg(args)) return Error(501, "5.5.4", "Syntax: HELO hostname");
  ResetTransaction();
  helo_ = std::string(args);
  txn_.helo = helo_;
  esmtp_ = false;
  Send(250, "", options_.hostname);
}

bool ServerSession::ParsePath(std::string_view args, bool is_mail, bool utf8, PathArgs* pa) {
  // RFC 3463: X.1.7 is about the sender's address, X.1.3 about a recipient's.
  const char* esc = is_mail ? "5.1.7" : "5.1.3";
  const char* who = is_mail ? "sender" : "recipient";
  switch (ParsePathArgs(args, /*allow_null=*/is_mail, utf8, pa)) {
    case PathError::kOk: break;
    case PathError::kTooLong:
      Error(501, esc, StrCatView("Error: ", who, " address too long"));
      return false;
    case PathError::kNeedsUtf8:
      Error(553, "5.6.7", "Error: non-ASCII address needs SMTPUTF8");
      return false;
    case PathError::kSyntax:
      Error(501, esc, StrCatView("Error: bad ", who, " address syntax"));
      return false;
  }
  if (!pa->params.empty() && !esmtp_) {
    Error(555, "5.5.4", StrCatView("Error: ", is_mail ? "MAIL" : "RCPT", " parameters need EHLO"));
    return false;
  }
  return true;
}

void ServerSession::CmdMail(std::string_view args) {
  if (helo_.empty()) return Error(503, "5.5.1", "Error: send HELO/EHLO first");
  if (in_txn_) return Error(503, "5.5.1", "Error: nested MAIL command");
  if (!StartsWithIgnoreCase(args, "FROM:")) return Error(501, "5.5.4", "Syntax: MAIL FROM:<address>");
  std::string_view rest = args.substr(5);
  // SMTPUTF8 must be known before the path is judged.
  bool utf8 = false;
  if (esmtp_) {
    utf8 = Upper(rest).find(" SMTPUTF8") != std::string::npos;
  }
  PathArgs pa;
  if (!ParsePath(rest, /*is_mail=*/true, utf8, &pa)) return;
  Transaction t;
  t.helo = helo_;
  t.mail_from = pa.address;
  bool seen_size = false, seen_body = false, seen_ret = false, seen_envid = false,
       seen_utf8 = false;
  for (const EsmtpParam& p : pa.params) {
    if (p.keyword == "SIZE" && !seen_size && p.has_value) {
      seen_size = true;
      uint64_t v = 0;
      auto [ptr, ec] = std::from_chars(p.value.data(), p.value.data() + p.value.size(), v);
      if (ec != std::errc() || ptr != p.value.data() + p.value.size() || p.value.size() > 20)
        return Error(501, "5.5.4", "Error: bad SIZE parameter");
      if (v > options_.limits.max_message_size)
        return Error(552, "5.3.4", "Error: message size exceeds fixed limit");
      t.declared_size = v;
    } else if (p.keyword == "BODY" && !seen_body && p.has_value) {
      seen_body = true;
      std::string v = Upper(p.value);
      if (v != "7BIT" && v != "8BITMIME")
        return Error(555, "5.5.4", "Error: unsupported BODY parameter");
      t.body_type = v;
    } else if (p.keyword == "SMTPUTF8" && !seen_utf8 && !p.has_value) {
      seen_utf8 = true;
      t.smtputf8 = true;
    } else if (p.keyword == "RET" && !seen_ret && p.has_value) {
      seen_ret = true;
      std::string v = Upper(p.value);
      if (v != "FULL" && v != "HDRS") return Error(501, "5.5.4", "Error: bad RET parameter");
      t.ret = v;
    } else if (p.keyword == "ENVID" && !seen_envid && p.has_value) {
      seen_envid = true;
      if (p.value.size() > 100 || !XtextDecode(p.value, &t.envid))
        return Error(501, "5.5.4", "Error: bad ENVID parameter");
    } else {
      return Error(555, "5.5.4", "Error: unsupported or repeated MAIL parameter");
    }
  }
  if (options_.require_tls && !tls_active_)
    return Error(530, "5.7.0", "Must issue a STARTTLS command first");
  Reply r = handler_->OnMail(t);
  if (r.code == kReplyPending) {
    pending_mail_ = std::move(t);
    state_ = State::kMailPending;
    return;
  }
  if (r.code != 0 && !r.ok()) {
    if (r.permanent()) return Error(r.code, r.enhanced, r.text);
    return Send(r);
  }
  AcceptMail(std::move(t));
}

void ServerSession::CompleteMail(const Reply& r) {
  if (state_ != State::kMailPending) return;
  state_ = State::kCommand;
  Transaction t = std::move(pending_mail_);
  pending_mail_ = Transaction{};
  if (r.code != 0 && !r.ok()) {
    if (r.permanent()) Error(r.code, r.enhanced, r.text);
    else Send(r);
  } else {
    AcceptMail(std::move(t));
  }
  ProcessInput();  // the RCPT/DATA pipelined behind MAIL
}

void ServerSession::AcceptMail(Transaction t) {
  txn_ = std::move(t);
  in_txn_ = true;
  used_bdat_ = false;
  commands_outside_txn_ = 0;
  Send(250, "2.1.0", "Ok");
}

void ServerSession::CmdRcpt(std::string_view args) {
  if (!in_txn_) return Error(503, "5.5.1", "Error: need MAIL command");
  if (!StartsWithIgnoreCase(args, "TO:")) return Error(501, "5.5.4", "Syntax: RCPT TO:<address>");
  PathArgs pa;
  if (!ParsePath(args.substr(3), /*is_mail=*/false, txn_.smtputf8, &pa)) return;
  if (txn_.recipients.size() >= options_.limits.max_recipients)
    return Send(452, "4.5.3", "Error: too many recipients");
  Recipient rc;
  rc.address = pa.address;
  bool seen_notify = false, seen_orcpt = false;
  for (const EsmtpParam& p : pa.params) {
    if (p.keyword == "NOTIFY" && !seen_notify && p.has_value) {
      seen_notify = true;
      std::string v = Upper(p.value);
      bool never = false, other = false;
      std::string_view rest = v;
      while (true) {
        size_t comma = rest.find(',');
        std::string_view item = rest.substr(0, comma);
        if (item == "NEVER") never = true;
        else if (item == "SUCCESS" || item == "FAILURE" || item == "DELAY") other = true;
        else return Error(501, "5.5.4", "Error: bad NOTIFY parameter");
        if (comma == std::string_view::npos) break;
        rest = rest.substr(comma + 1);
      }
      if (never && other) return Error(501, "5.5.4", "Error: NOTIFY=NEVER cannot be combined");
      rc.notify = v;
    } else if (p.keyword == "ORCPT" && !seen_orcpt && p.has_value) {
      seen_orcpt = true;
      std::string decoded;
      size_t semi = p.value.find(';');
      if (semi == std::string::npos || semi == 0 || p.value.size() > 500 ||
          !XtextDecode(p.value.substr(semi + 1), &decoded))
        return Error(501, "5.5.4", "Error: bad ORCPT parameter");
      rc.orcpt = p.value;
    } else {
      return Error(555, "5.5.4", "Error: unsupported or repeated RCPT parameter");
    }
  }
  Reply r = handler_->OnRcpt(txn_, rc);
  if (r.code == kReplyPending) {   // a directory lookup (issue #19): input waits for it
    pending_rcpt_ = std::move(rc);
    state_ = State::kRcptPending;
    return;
  }
  FinishRcpt(std::move(rc), r);
}

void ServerSession::FinishRcpt(Recipient rc, const Reply& r) {
  if (r.code != 0 && !r.ok()) {
    if (r.permanent()) return Error(r.code, r.enhanced, r.text);
    return Send(r);
  }
  txn_.recipients.push_back(std::move(rc));
  Send(250, "2.1.5", "Ok");
}

void ServerSession::CompleteRcpt(const Reply& r) {
  if (state_ != State::kRcptPending) return;
  state_ = State::kCommand;
  Recipient rc = std::move(pending_rcpt_);
  pending_rcpt_ = Recipient{};
  FinishRcpt(std::move(rc), r);
  ProcessInput();   // what was pipelined behind RCPT
}

Reply ServerSession::BeginData() {
  Reply r = handler_->OnDataStart(txn_);
  if (r.code != 0 && !r.ok()) return r;
  data_started_ = true;
  dstate_ = DataState::kBol;
  refusal_ = Refusal::kNone;
  data_bytes_ = line_bytes_ = header_bytes_ = 0;
  header_done_ = false;
  header_line_len_ = header_prefix_len_ = 0;
  received_count_ = 0;
  saw_bare_ = false;
  chunk_.clear();
  return Reply{};
}

void ServerSession::CmdData(std::string_view args) {
  if (!args.empty()) return Error(501, "5.5.4", "Syntax: DATA");
  if (!in_txn_) return Error(503, "5.5.1", "Error: need MAIL command");
  if (used_bdat_) return Error(503, "5.5.1", "Error: DATA after BDAT");
  if (txn_.recipients.empty()) return Error(554, "5.5.1", "Error: no valid recipients");
  if (Reply r = BeginData(); r.code != 0) return Send(r);
  state_ = State::kData;
  Send(354, "", "End data with <CR><LF>.<CR><LF>");
}

void ServerSession::CmdBdat(std::string_view args) {
  // BDAT <size> [LAST]. A size we cannot read leaves us unable to find the next command:
  // the only safe answer is to close.
  size_t sp = args.find(' ');
  std::string_view num = args.substr(0, sp);
  std::string_view tail = sp == std::string_view::npos ? std::string_view() : args.substr(sp + 1);
  uint64_t n = 0;
  auto [ptr, ec] = std::from_chars(num.data(), num.data() + num.size(), n);
  bool last = EqualsIgnoreCase(tail, "LAST");
  if (num.empty() || num.size() > 20 || ec != std::errc() || ptr != num.data() + num.size() ||
      (!tail.empty() && !last)) {
    return Close(554, "5.5.4", "Error: bad BDAT syntax, closing");
  }
  bdat_remaining_ = n;
  bdat_size_ = n;
  bdat_last_ = last;
  bdat_refused_ = false;
  state_ = State::kBdat;
  // A refused chunk is swallowed whole, then answered (RFC 3030 §2), so the next command is
  // still found.
  if (!in_txn_) {
    bdat_reply_ = MakeReply(503, "5.5.1", "Error: need MAIL command");
  } else if (txn_.recipients.empty()) {
    bdat_reply_ = MakeReply(554, "5.5.1", "Error: no valid recipients");
  } else if (!used_bdat_ && !data_started_) {
    used_bdat_ = true;
    bdat_reply_ = BeginData();
  } else if (!data_started_ && refusal_ == Refusal::kNone) {
    bdat_reply_ = MakeReply(503, "5.5.1", "Error: transaction already refused, send RSET");
  } else {
    bdat_reply_ = Reply{};
  }
  bdat_refused_ = bdat_reply_.code != 0;
  if (n == 0) ConsumeBdat(std::string_view());
}

void ServerSession::CmdRset(std::string_view args) {
  ResetTransaction();
  Send(250, "2.0.0", "Ok");
}

void ServerSession::CmdNoop(std::string_view args) { Send(250, "2.0.0", "Ok"); }

void ServerSession::CmdQuit(std::string_view args) {
  ResetTransaction();
  Close(221, "2.0.0", "Bye");
}

void ServerSession::CmdHelp(std::string_view args) {
  Send(214, "2.0.0",
       "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY\n"
       "See RFC 5321");
}

void ServerSession::CmdVrfy(std::string_view args) {
  if (args.empty()) return Error(501, "5.5.4", "Syntax: VRFY address");
  Send(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery");
}

void ServerSession::CmdExpn(std::string_view args) {
  Error(502, "5.5.1", "Error: EXPN not supported");
}

void ServerSession::CmdStarttls(std::string_view args) {
  if (!options_.starttls) return Error(502, "5.5.1", "Error: STARTTLS not available");
  if (tls_active_) return Error(554, "5.5.1", "Error: TLS already active");
  if (!args.empty()) return Error(501, "5.5.4", "Syntax: STARTTLS");
  if (in_txn_) return Error(503, "5.5.1", "Error: STARTTLS inside a mail transaction");
  Send(220, "2.0.0", "Ready to start TLS");
  // Whatever was pipelined after STARTTLS arrived in clear and must not be taken as if it came
  // through TLS (CVE-2011-0411): ProcessInput drops the rest of in_ once paused here.
  state_ = State::kStartTls;
  discard_after_starttls_ = true;
}

void ServerSession::TlsStarted() {
  if (state_ != State::kStartTls) return;
  state_ = State::kCommand;
  tls_active_ = true;
  ResetTransaction();
  helo_.clear();
  txn_.helo.clear();
  esmtp_ = false;
  in_.clear();
  ProcessInput();
}

// ---- message content ------------------------------------------------------------------

void ServerSession::AbortData(Refusal why) {
  if (refusal_ == Refusal::kNone) refusal_ = why;
  if (data_started_) {
    data_started_ = false;
    chunk_.clear();
    handler_->OnDataAbort();
  }
}

void ServerSession::FlushChunk() {
  if (!chunk_.empty() && data_started_ && refusal_ == Refusal::kNone)
    handler_->OnDataChunk(chunk_);
  chunk_.clear();
}

void ServerSession::ScanHeader(std::string_view bytes) {
  // Runs over the message header only (DATA and BDAT alike): bounds its size and counts
  // Received: fields to stop mail loops (RFC 5321 §6.3).
  static constexpr std::string_view kReceived = "received:";
  for (char c : bytes) {
    if (header_done_) return;
    if (++header_bytes_ > options_.limits.max_header_size) return AbortData(Refusal::kHeaderTooBig);
    if (c == '\n') {
      if (header_line_len_ == 0) header_done_ = true;
      else if (header_prefix_len_ == kReceived.size() && ++received_count_ > kMaxReceived)
        return AbortData(Refusal::kTooManyHops);
      header_line_len_ = header_prefix_len_ = 0;
      continue;
    }
    if (c == '\r') continue;
    if (header_line_len_++ == header_prefix_len_ && header_prefix_len_ < kReceived.size() &&
        std::tolower(static_cast<unsigned char>(c)) == kReceived[header_prefix_len_])
      ++header_prefix_len_;
  }
}

// The limits are checked byte by byte in message order, so the first one a message crosses is
// the one reported, however the input was split into reads (the fuzzer checks this).
void ServerSession::EmitData(std::string_view bytes) {
  if (refusal_ != Refusal::kNone) return;
  const uint64_t room = options_.limits.max_message_size - std::min(data_bytes_, options_.limits.max_message_size);
  if (!header_done_) {
    ScanHeader(bytes.substr(0, static_cast<size_t>(std::min<uint64_t>(room, bytes.size()))));
    if (refusal_ != Refusal::kNone) return;
  }
  data_bytes_ += bytes.size();
  if (bytes.size() > room) return AbortData(Refusal::kTooBig);
  chunk_.append(bytes);
  if (chunk_.size() >= kChunkSize) FlushChunk();
}

void ServerSession::EmitDataChar(char c) { EmitRun(std::string_view(&c, 1)); }

void ServerSession::EmitRun(std::string_view run) {
  if (refusal_ != Refusal::kNone) return;
  const uint64_t max = options_.limits.max_data_line_length;
  const uint64_t fits = max - std::min(line_bytes_, max);
  line_bytes_ += run.size();
  if (run.size() <= fits) return EmitData(run);
  EmitData(run.substr(0, static_cast<size_t>(fits)));  // bytes before the line limit count first
  if (refusal_ == Refusal::kNone) AbortData(Refusal::kLineTooLong);
}

size_t ServerSession::ConsumeData(std::string_view in) {
  // One pass over the bytes; the only terminator is CRLF "." CRLF at a line start reached by
  // CRLF. See server_session.h SECURITY.
  const bool normalize = options_.bare_newline == BareNewlinePolicy::kNormalize;
  auto end_line = [&]() {
    EmitData("\r\n");
    line_bytes_ = 0;
  };
  auto bare = [&]() {
    saw_bare_ = true;
    if (!normalize) AbortData(Refusal::kBareNewline);
  };
  size_t i = 0;
  for (; i < in.size(); ++i) {
    char c = in[i];
    switch (dstate_) {
      case DataState::kBol:
      case DataState::kBolBare:
        if (c == '.' && dstate_ == DataState::kBol) { dstate_ = DataState::kBolDot; break; }
        [[fallthrough]];
      case DataState::kMid:
        if (c != '\r' && c != '\n') {
          // Fast path: copy the run up to the next CR or LF in one go.
          size_t j = i + 1;
          while (j < in.size() && in[j] != '\r' && in[j] != '\n') ++j;
          EmitRun(in.substr(i, j - i));
          dstate_ = DataState::kMid;
          i = j - 1;
          break;
        }
        if (c == '\r') { dstate_ = DataState::kCR; }
        else if (c == '\n') { bare(); end_line(); dstate_ = DataState::kBolBare; }
        else { EmitDataChar(c); dstate_ = DataState::kMid; }
        break;
      case DataState::kCR:
        if (c == '\n') { end_line(); dstate_ = DataState::kBol; }
        else { bare(); end_line(); dstate_ = DataState::kBolBare; --i; }  // reprocess c
        break;
      case DataState::kBolDot:
        if (c == '\r') { dstate_ = DataState::kBolDotCR; }
        else if (c == '\n') { bare(); EmitDataChar('.'); end_line(); dstate_ = DataState::kBolBare; }
        else { EmitDataChar(c); dstate_ = DataState::kMid; }  // dot-unstuffing
        break;
      case DataState::kBolDotCR:
        if (c == '\n') {
          state_ = State::kCommand;
          FinishData();
          return i + 1;
        }
        bare();
        EmitDataChar('.');
        end_line();
        dstate_ = DataState::kBolBare;
        --i;
        break;
    }
  }
  FlushChunk();
  return i;
}

size_t ServerSession::ConsumeBdat(std::string_view in) {
  size_t n = static_cast<size_t>(std::min<uint64_t>(bdat_remaining_, in.size()));
  if (!bdat_refused_ && refusal_ == Refusal::kNone) {
    EmitData(in.substr(0, n));
    FlushChunk();
  }
  bdat_remaining_ -= n;
  if (bdat_remaining_ == 0) {
    state_ = State::kCommand;
    if (bdat_refused_) {
      if (bdat_reply_.transient()) Send(bdat_reply_);
      else Error(bdat_reply_.code, bdat_reply_.enhanced, bdat_reply_.text);
      if (bdat_last_ && in_txn_) ResetTransaction();
    } else if (bdat_last_) {
      FinishData();
    } else if (refusal_ != Refusal::kNone) {
      // Keep accepting chunks until LAST; the refusal is reported then.
      Send(250, "2.0.0", "chunk discarded");
    } else {
      Send(250, "2.0.0", std::to_string(bdat_size_) + " octets received");
    }
  }
  return n;
}

void ServerSession::FinishData() {
  FlushChunk();
  Refusal why = refusal_;
  if (why == Refusal::kNone && data_started_) {
    state_ = State::kCommitting;
    data_started_ = false;
    handler_->OnDataEnd(txn_);
    return;
  }
  AbortData(why);
  ++counters_.messages_refused;
  Reply r;
  switch (why) {
    case Refusal::kBareNewline:
      r = MakeReply(550, "5.5.2", "Error: bare <LF> or <CR> in message text; use <CR><LF>");
      break;
    case Refusal::kTooBig: r = MakeReply(552, "5.3.4", "Error: message size exceeds fixed limit"); break;
    case Refusal::kLineTooLong: r = MakeReply(554, "5.6.0", "Error: message line too long"); break;
    case Refusal::kHeaderTooBig: r = MakeReply(552, "5.3.4", "Error: message header too large"); break;
    case Refusal::kTooManyHops:
      r = MakeReply(554, "5.4.6", "Error: too many Received headers, mail loop suspected");
      break;
    case Refusal::kNone: r = MakeReply(451, "4.3.0", "Error: message storage failed"); break;
  }
  handler_->OnRefused(txn_, r);
  if (r.transient()) Send(r);
  else Error(r.code, r.enhanced, r.text);
  ResetTransaction();
}

void ServerSession::CompleteData(const Reply& reply) {
  if (state_ != State::kCommitting) return;
  state_ = State::kCommand;
  if (reply.ok()) ++counters_.messages_accepted;
  else ++counters_.messages_refused;
  Send(reply);
  ResetTransaction();
  ProcessInput();  // pipelined commands that arrived meanwhile
}

}  // namespace mailseal::smtp
