// libFuzzer target for the SPF evaluator (RFC 7208): hostile records from every DNS answer.
//
// Input: lines. Line 0 is the client address selector and sender; every TXT question is
// answered with the line picked by a hash of the name asked, so includes and redirects reach
// other fuzzed records (and loop). A/AAAA/MX/PTR answers are made up from the name too.
// Invariants beyond "no crash, no sanitizer report": at most 10 DNS-querying terms are
// evaluated (+1 for the one refused), a bounded number of questions is asked, the explanation
// and the Received-SPF field stay bounded and the field has no line break but its folds.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "dataplane/spf/spf.h"

using namespace mailseal::spf;

namespace {
class FuzzDns : public Dns {
 public:
  std::vector<std::string> lines;
  int questions = 0;
  Answer Query(const std::string& name, RrType type) override {
    ++questions;
    Answer a;
    size_t h = std::hash<std::string>()(name);
    if (h % 11 == 0) {
      a.rcode = Answer::Rcode::kNxDomain;
      return a;
    }
    if (h % 13 == 0) {
      a.rcode = Answer::Rcode::kTempFail;
      return a;
    }
    switch (type) {
      case RrType::kTxt:
        a.records.push_back(lines[h % lines.size()]);
        if (h % 5 == 0) a.records.push_back(lines[(h / 5) % lines.size()]);
        break;
      case RrType::kA: a.records.push_back(std::string("\xc0\x00\x02", 3) + static_cast<char>(h % 4)); break;
      case RrType::kAaaa: a.records.push_back(std::string(15, '\x20') + static_cast<char>(h % 4)); break;
      case RrType::kMx:
        for (size_t i = 0; i < h % 14; ++i) a.records.push_back("mx" + std::to_string(i) + ".test");
        break;
      case RrType::kPtr:
        for (size_t i = 0; i < h % 13; ++i) a.records.push_back("p" + std::to_string(i) + ".test.");
        break;
    }
    return a;
  }
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2 || size > 16384) return 0;
  FuzzDns dns;
  std::string in(reinterpret_cast<const char*>(data) + 1, size - 1);
  size_t start = 0;
  for (size_t i = 0; i <= in.size(); ++i)
    if (i == in.size() || in[i] == '\n') {
      dns.lines.push_back(in.substr(start, i - start));
      start = i + 1;
    }
  Request req;
  static const char* kIps[] = {"192.0.2.1", "192.0.2.3", "2001:db8::1", "::ffff:192.0.2.2"};
  req.ip = kIps[data[0] & 3];
  req.mail_from = (data[0] & 4) ? "" : "user@" + std::string(dns.lines[0].substr(0, 80));
  req.helo = "helo.test";
  req.receiver = "mx.fuzz.test";
  Verdict v = Check(req, dns);
  if (v.dns_terms > 11) std::abort();
  if (dns.questions > 2000) std::abort();
  if (v.explanation.size() > 4096) std::abort();
  std::string f = ReceivedSpf(v, req);
  for (size_t i = 0; i < f.size(); ++i) {
    if (f[i] == '\n') std::abort();   // a bare LF
    if (f[i] != '\r') continue;
    if (i + 1 >= f.size() || f[i + 1] != '\n' || (i + 2 != f.size() && f[i + 2] != '\t')) std::abort();
    ++i;
  }
  return 0;
}
