// libFuzzer target for the SMTP server core (issue #2).
//
// Input: byte 0 picks options (bare-newline policy, small limits, STARTTLS offered/required,
// MAIL decided later as after an SPF check), byte 1 a chunking seed; the rest is client input.
// Checked invariants, beyond "no crash, no sanitizer report":
//  - feeding in one piece and in arbitrary chunks produces the same replies and messages
//    (not with STARTTLS: what is pipelined behind it is dropped, so chunking matters there);
//  - nothing fed while a STARTTLS is pending is ever answered;
//  - every reply line is "DDD" + ' ' or '-' ... CRLF;
//  - buffered input stays bounded.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>

#include "dataplane/smtp/server_session.h"

using namespace mailseal::smtp;

namespace {
class Handler : public ServerHandler {
 public:
  ServerSession* s = nullptr;
  std::string log;
  std::string cur;
  bool pending = false;
  std::string pending_from;
  Reply OnMail(const Transaction& t) override {
    if (!pending) return {};
    pending_from = t.mail_from;
    return MakeReply(kReplyPending, "", "");
  }
  Reply OnRcpt(const Transaction&, const Recipient& r) override {
    if (r.address.size() % 7 == 3) return MakeReply(554, "5.7.1", "denied");
    return {};
  }
  void OnDataChunk(std::string_view b) override { cur.append(b); }
  void OnDataEnd(const Transaction& t) override {
    log += "[msg " + t.mail_from + " " + std::to_string(t.recipients.size()) + " " + cur + "]";
    cur.clear();
    s->CompleteData(MakeReply(250, "2.0.0", "ok"));
  }
  void OnDataAbort() override {
    log += "[abort]";
    cur.clear();
  }
};

std::pair<std::string, std::string> Run(const ServerOptions& o, std::string_view in, uint8_t seed,
                                        bool chunked, bool pending) {
  Handler h;
  h.pending = pending;
  ServerSession s(o, &h);
  h.s = &s;
  s.Start();
  std::string out = s.TakeOutput();
  size_t pos = 0;
  uint32_t x = seed * 2654435761u + 1;
  while (pos < in.size() && !s.Closed()) {
    size_t n = in.size() - pos;
    if (chunked) {
      x = x * 1103515245u + 12345u;
      n = std::min<size_t>(n, 1 + (x >> 16) % 17);
    }
    bool tls_pending = s.TlsPending();
    s.Feed(in.substr(pos, n));
    pos += n;
    std::string replies = s.TakeOutput();
    if (tls_pending && !replies.empty()) std::abort();   // clear bytes after STARTTLS answered
    out += replies;
    // While paused the driver stops reading, so only an unpaused session must stay bounded.
    if (!s.Paused() && s.BufferedInput() > o.limits.max_line_length + 64) std::abort();
    if (s.TlsPending() && (x & 1)) s.TlsStarted();   // some handshakes succeed, some never end
    for (int guard = 0; guard < 100000 && s.Paused() && !s.TlsPending() && h.pending; ++guard) {
      // A deterministic "SPF" decision, so both feeds agree.
      s.CompleteMail(h.pending_from.size() % 2 ? MakeReply(550, "5.7.23", "spf fail") : Reply{});
      out += s.TakeOutput();
    }
  }
  return {out, h.log};
}

void CheckReplies(const std::string& out) {
  std::string_view r(out);
  size_t pos = 0;
  while (pos < r.size()) {
    size_t end = r.find("\r\n", pos);
    if (end == std::string_view::npos) std::abort();
    std::string_view line = r.substr(pos, end - pos);
    if (line.size() < 4 || !isdigit(line[0]) || !isdigit(line[1]) || !isdigit(line[2]) ||
        (line[3] != ' ' && line[3] != '-'))
      std::abort();
    pos = end + 2;
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  ServerOptions o;
  o.hostname = "fuzz.test";
  o.bare_newline = (data[0] & 1) ? BareNewlinePolicy::kNormalize : BareNewlinePolicy::kReject;
  if (data[0] & 2) {
    o.limits.max_message_size = 300;
    o.limits.max_recipients = 3;
    o.limits.max_line_length = 512;
    o.limits.max_data_line_length = 1000;
    o.limits.max_header_size = 100;
    o.limits.max_errors = 5;
  }
  o.starttls = data[0] & 4;
  o.require_tls = (data[0] & 12) == 12;
  bool pending = data[0] & 16;
  std::string_view in(reinterpret_cast<const char*>(data + 2), size - 2);
  auto whole = Run(o, in, data[1], false, pending);
  auto chunked = Run(o, in, data[1], true, pending);
  if (!o.starttls && whole != chunked) std::abort();
  CheckReplies(whole.first);
  CheckReplies(chunked.first);
  return 0;
}
