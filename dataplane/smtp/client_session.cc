// client_session.cc — see client_session.h.
#include "dataplane/smtp/client_session.h"

#include <algorithm>
#include <cctype>
#include <charconv>

#include "dataplane/smtp/address.h"

namespace mailseal::smtp {
namespace {
constexpr size_t kMaxReplyLine = 4096;
constexpr size_t kMaxReplyLines = 200;

Reply ParseReplyLines(int code, const std::vector<std::string>& lines) {
  Reply r;
  r.code = code;
  std::string text;
  for (size_t i = 0; i < lines.size(); ++i) {
    std::string_view t = lines[i];
    // Enhanced status code "x.y.z " at the start of the text (RFC 2034).
    if (t.size() >= 6 && (t[0] == '2' || t[0] == '4' || t[0] == '5') && t[1] == '.') {
      size_t sp = t.find(' ');
      std::string_view esc = t.substr(0, sp);
      bool ok = esc.size() >= 5 && esc.size() <= 11;
      for (char c : esc) ok = ok && (std::isdigit(static_cast<unsigned char>(c)) || c == '.');
      if (ok) {
        if (i == 0) r.enhanced = std::string(esc);
        t = sp == std::string_view::npos ? std::string_view() : t.substr(sp + 1);
      }
    }
    if (i) text += '\n';
    text += t;
  }
  r.text = std::move(text);
  return r;
}

std::string Upper(std::string_view s) {
  std::string u(s);
  for (char& c : u) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return u;
}
}  // namespace

const Reply& MessageResult::RecipientOutcome(size_t i) const {
  if (mail.code != 0 && !mail.ok()) return mail;
  if (i < rcpt.size() && rcpt[i].code != 0 && !rcpt[i].ok()) return rcpt[i];
  return data;
}

void BodyEncoder::Encode(std::string_view in, std::string* out) {
  out->reserve(out->size() + in.size() + in.size() / 32);
  for (char c : in) {
    if (c == '\n') {
      if (!cr_) out->push_back('\r');
      out->push_back('\n');
      bol_ = true;
      cr_ = false;
      continue;
    }
    if (cr_) {  // bare CR: end the line properly
      out->push_back('\n');
      bol_ = true;
      cr_ = false;
    }
    if (c == '\r') {
      out->push_back('\r');
      cr_ = true;
      continue;
    }
    if (bol_ && c == '.') out->push_back('.');
    out->push_back(c);
    bol_ = false;
  }
}

void BodyEncoder::Finish(std::string* out) {
  if (cr_) {
    out->push_back('\n');
    bol_ = true;
    cr_ = false;
  }
  if (!bol_) out->append("\r\n");
  out->append(".\r\n");
  bol_ = true;
}

ClientSession::ClientSession(std::string helo_name, Tls tls) : helo_name_(std::move(helo_name)), tls_(tls) {}

void ClientSession::TlsStarted() {
  if (state_ != State::kTlsReady) return;
  tls_active_ = true;
  caps_ = ServerCapabilities{};   // what was said in clear is forgotten (RFC 3207 §4.2)
  out_ += "EHLO " + helo_name_ + "\r\n";
  state_ = State::kEhlo;
}

// AfterEhlo: with the capabilities known, STARTTLS first if it is wanted and not yet done.
void ClientSession::AfterEhlo() {
  if (!tls_active_ && tls_ != Tls::kNever && caps_.starttls) {
    out_ += "STARTTLS\r\n";
    state_ = State::kStartTls;
    return;
  }
  if (!tls_active_ && tls_ == Tls::kRequired)
    return Fail(MakeReply(451, "4.7.5", "TLS required by policy, but the next hop does not offer STARTTLS"));
  state_ = State::kReady;
}

std::string ClientSession::TakeOutput() {
  std::string o;
  o.swap(out_);
  return o;
}

void ClientSession::Fail(const Reply& why) {
  if (state_ == State::kClosed || state_ == State::kFailed) return;
  failure_ = why;
  state_ = State::kFailed;
}

void ClientSession::Feed(std::string_view bytes) {
  if (state_ == State::kClosed || state_ == State::kFailed) return;
  in_.append(bytes);
  size_t pos = 0;
  while (state_ != State::kFailed && state_ != State::kClosed) {
    size_t lf = in_.find('\n', pos);
    if (lf == std::string::npos) {
      if (in_.size() - pos > kMaxReplyLine)
        Fail(MakeReply(421, "4.4.0", "next hop sent an over-long reply line"));
      break;
    }
    std::string_view line(in_.data() + pos, lf - pos);
    pos = lf + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    int code = 0;
    if (line.size() < 3 || std::from_chars(line.data(), line.data() + 3, code).ec != std::errc() ||
        code < 200 || code > 599 || (line.size() > 3 && line[3] != ' ' && line[3] != '-')) {
      Fail(MakeReply(421, "4.4.0", "next hop sent a malformed reply"));
      break;
    }
    if (!lines_.empty() && code != reply_code_) {
      Fail(MakeReply(421, "4.4.0", "next hop changed reply code inside a multi-line reply"));
      break;
    }
    reply_code_ = code;
    lines_.emplace_back(line.size() > 4 ? line.substr(4) : std::string_view());
    if (lines_.size() > kMaxReplyLines) {
      Fail(MakeReply(421, "4.4.0", "next hop sent too many reply lines"));
      break;
    }
    if (line.size() > 3 && line[3] == '-') continue;
    Reply r = ParseReplyLines(code, lines_);
    lines_.clear();
    OnReply(r);
    if (state_ == State::kTlsReady) {
      // Nothing may follow the 220 in clear: bytes there would be read as if they came over
      // TLS (STARTTLS command injection, CVE-2011-0411 class).
      if (pos < in_.size()) Fail(MakeReply(421, "4.7.0", "next hop sent data after its 220 to STARTTLS"));
      break;
    }
  }
  in_.erase(0, std::min(pos, in_.size()));
  if (state_ == State::kTlsReady) in_.clear();
}

void ClientSession::OnReply(const Reply& r) {
  switch (state_) {
    case State::kGreeting:
      if (r.code != 220) return Fail(r);
      banner_ = r.text.substr(0, r.text.find('\n'));
      out_ += "EHLO " + helo_name_ + "\r\n";
      state_ = State::kEhlo;
      return;
    case State::kEhlo:
      if (r.ok()) {
        caps_ = ServerCapabilities{};
        caps_.esmtp = true;
        std::string_view rest = r.text;
        bool first = true;
        while (!rest.empty() || first) {
          size_t nl = rest.find('\n');
          std::string kw = Upper(rest.substr(0, nl));
          rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
          if (first) { first = false; continue; }  // the greeting name
          if (kw == "PIPELINING") caps_.pipelining = true;
          else if (kw == "8BITMIME") caps_.eight_bit = true;
          else if (kw == "SMTPUTF8") caps_.smtputf8 = true;
          else if (kw == "DSN") caps_.dsn = true;
          else if (kw == "CHUNKING") caps_.chunking = true;
          else if (kw == "STARTTLS") caps_.starttls = true;
          else if (kw.rfind("SIZE", 0) == 0) {
            caps_.size = true;
            if (kw.size() > 5) std::from_chars(kw.data() + 5, kw.data() + kw.size(), caps_.max_size);
          }
        }
        return AfterEhlo();
      }
      if (r.code >= 500 && r.code != 554) {  // EHLO not understood: fall back to HELO
        out_ += "HELO " + helo_name_ + "\r\n";
        state_ = State::kHelo;
        return;
      }
      return Fail(r);
    case State::kHelo:
      if (!r.ok()) return Fail(r);
      caps_ = ServerCapabilities{};
      return AfterEhlo();   // no ESMTP, no STARTTLS: fails here when TLS is required
    case State::kStartTls:
      if (r.code == 220) {
        state_ = State::kTlsReady;
        return;
      }
      if (tls_ == Tls::kRequired)
        return Fail(MakeReply(451, "4.7.5", "TLS required by policy, but STARTTLS was refused: " + r.OneLine()));
      state_ = State::kReady;   // opportunistic: go on in clear
      return;
    case State::kInMessage:
    case State::kBodySent:
      return OnTransactionReply(r);
    case State::kQuitting:
      state_ = State::kClosed;
      return;
    default:
      // A reply nobody asked for (e.g. 421 while idle): the session is over.
      return Fail(r);
  }
}

std::string ClientSession::MailCommand() const {
  std::string c = "MAIL FROM:<" + msg_.mail_from + ">";
  if (caps_.size && msg_.size) c += " SIZE=" + std::to_string(msg_.size);
  if (caps_.eight_bit && msg_.body_type == "8BITMIME") c += " BODY=8BITMIME";
  if (caps_.smtputf8 && msg_.smtputf8) c += " SMTPUTF8";
  if (caps_.dsn) {
    if (!msg_.ret.empty()) c += " RET=" + msg_.ret;
    if (!msg_.envid.empty()) c += " ENVID=" + XtextEncode(msg_.envid);
  }
  return c + "\r\n";
}

std::string ClientSession::RcptCommand(const Recipient& r) const {
  std::string c = "RCPT TO:<" + r.address + ">";
  if (caps_.dsn) {
    if (!r.notify.empty()) c += " NOTIFY=" + r.notify;
    if (!r.orcpt.empty()) c += " ORCPT=" + r.orcpt;
  }
  return c + "\r\n";
}

void ClientSession::StartMessage(const ClientMessage& msg) {
  msg_ = msg;
  result_ = MessageResult{};
  result_.rcpt.resize(msg.recipients.size());
  expected_.clear();
  next_rcpt_to_send_ = 0;
  next_rcpt_reply_ = 0;
  any_rcpt_ok_ = false;
  data_sent_ = false;
  discard_data_reply_ = false;
  state_ = State::kInMessage;
  // Refuse locally what the next hop cannot take (RFC 6531 §3.4, RFC 1870 §6).
  if (msg.smtputf8 && !caps_.smtputf8) {
    result_.mail = MakeReply(553, "5.6.7", "next hop does not support SMTPUTF8");
    state_ = State::kMessageDone;
    return;
  }
  if (caps_.max_size && msg.size > caps_.max_size) {
    result_.mail = MakeReply(552, "5.3.4", "message larger than next hop's SIZE limit");
    state_ = State::kMessageDone;
    return;
  }
  out_ += MailCommand();
  expected_.push_back(Cmd::kMail);
  if (caps_.pipelining) {
    for (const Recipient& r : msg_.recipients) {
      out_ += RcptCommand(r);
      expected_.push_back(Cmd::kRcpt);
    }
    next_rcpt_to_send_ = msg_.recipients.size();
    out_ += "DATA\r\n";
    expected_.push_back(Cmd::kData);
    data_sent_ = true;
  }
}

void ClientSession::SendNextUnpipelined() {
  if (next_rcpt_to_send_ < msg_.recipients.size()) {
    out_ += RcptCommand(msg_.recipients[next_rcpt_to_send_++]);
    expected_.push_back(Cmd::kRcpt);
  } else if (!data_sent_) {
    if (!any_rcpt_ok_) {
      result_.data = MakeReply(554, "5.5.1", "no recipient accepted");
      out_ += "RSET\r\n";
      expected_.push_back(Cmd::kRset);
      return;
    }
    out_ += "DATA\r\n";
    expected_.push_back(Cmd::kData);
    data_sent_ = true;
  }
}

void ClientSession::OnTransactionReply(const Reply& r) {
  if (state_ == State::kBodySent) {
    if (discard_data_reply_) result_.data = MakeReply(554, "5.5.1", "no recipient accepted");
    else result_.data = r;
    state_ = State::kMessageDone;
    return;
  }
  if (expected_.empty()) return Fail(r);
  Cmd cmd = expected_.front();
  expected_.pop_front();
  switch (cmd) {
    case Cmd::kMail:
      result_.mail = r;
      break;
    case Cmd::kRset:
      state_ = State::kMessageDone;
      return;
    case Cmd::kRcpt:
      if (next_rcpt_reply_ < result_.rcpt.size()) result_.rcpt[next_rcpt_reply_++] = r;
      any_rcpt_ok_ = any_rcpt_ok_ || (r.ok() && result_.mail.ok());
      break;
    case Cmd::kData:
      if (r.code == 354) {
        if (!any_rcpt_ok_ || !result_.mail.ok()) {
          // Pipelined DATA accepted although nothing else was: end it empty (RFC 2920 §3.1).
          out_ += ".\r\n";
          state_ = State::kBodySent;
          discard_data_reply_ = true;
          return;
        }
        state_ = State::kSendBody;
        return;
      }
      result_.data = r;
      state_ = State::kMessageDone;
      return;
  }
  if (!caps_.pipelining) {
    if (cmd == Cmd::kMail && !r.ok()) {
      state_ = State::kMessageDone;
      return;
    }
    SendNextUnpipelined();
  }
}

void ClientSession::BodyDone() {
  if (state_ == State::kSendBody) state_ = State::kBodySent;
}

void ClientSession::Quit() {
  if (state_ == State::kClosed || state_ == State::kFailed) return;
  out_ += "QUIT\r\n";
  state_ = State::kQuitting;
}

}  // namespace mailseal::smtp
