// libFuzzer target for the SMTP server core (issue #2).
//
// Input: byte 0 picks options (bare-newline policy, small limits), byte 1 a chunking seed;
// the rest is client input. Checked invariants, beyond "no crash, no sanitizer report":
//  - feeding in one piece and in arbitrary chunks produces the same replies and messages;
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
                                        bool chunked) {
  Handler h;
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
    s.Feed(in.substr(pos, n));
    pos += n;
    out += s.TakeOutput();
    if (s.BufferedInput() > o.limits.max_line_length + 64) std::abort();
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
  std::string_view in(reinterpret_cast<const char*>(data + 2), size - 2);
  auto whole = Run(o, in, data[1], false);
  auto chunked = Run(o, in, data[1], true);
  if (whole != chunked) std::abort();
  CheckReplies(whole.first);
  return 0;
}
