// spf.h — Sender Policy Framework evaluation (RFC 7208 check_host()), over an abstract DNS.
//
// Written here rather than taken from libspf2 (Debian's libspf2-2): libspf2's macro expander
// has had several out-of-bounds writes (CVE-2021-20314, CVE-2021-33912/33913, CVE-2023-42118),
// upstream is barely maintained, and it does its own blocking DNS. This evaluator is
// sans-I/O in the same sense as the SMTP cores: every DNS question goes through spf::Dns, so
// the RFC 7208 test suite drives it from its zone data and mailseald from libunbound.
//
// SECURITY: records are untrusted network data. Every limit of RFC 7208 §4.6.4 is enforced —
// 10 DNS-querying terms, 2 void lookups, 10 MX and 10 PTR names per term — and a record, a
// macro expansion and an explanation are bounded in size; nothing recurses deeper than the
// term limit allows.
// STANDARDS: RFC 7208 (SPF), RFC 8601 §2.7.2 (result names in Authentication-Results).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mailseal::spf {

enum class Result { kNone, kNeutral, kPass, kFail, kSoftFail, kTempError, kPermError };
// ResultName: "none", "neutral", "pass", "fail", "softfail", "temperror", "permerror".
const char* ResultName(Result r);

enum class RrType : uint16_t { kA = 1, kPtr = 12, kMx = 15, kTxt = 16, kAaaa = 28 };

struct Answer {
  enum class Rcode { kOk, kNxDomain, kTempFail };
  Rcode rcode = Rcode::kOk;
  // TXT: each record's strings joined; A: 4 bytes; AAAA: 16 bytes; MX (preference dropped),
  // PTR: host names without the trailing dot.
  std::vector<std::string> records;
};

// Dns answers one question. Implementations follow CNAMEs.
class Dns {
 public:
  virtual ~Dns() = default;
  virtual Answer Query(const std::string& name, RrType type) = 0;
};

struct Request {
  std::string ip;          // the SMTP client's address, IPv4 or IPv6 text
  std::string mail_from;   // the reverse path; empty: the null sender (the HELO identity is checked)
  std::string helo;
  std::string receiver = "unknown";   // %{r}: our host name
  std::string default_explanation = "DEFAULT";
  int64_t now_unix = 0;               // %{t}
};

struct Verdict {
  Result result = Result::kNone;
  std::string identity;      // "mailfrom" or "helo"
  std::string domain;        // the domain whose policy was checked
  std::string sender;        // <sender> as checked ("postmaster@helo" for the null sender)
  std::string mechanism;     // the term that decided ("ip4:192.0.2.0/24", "default", ...)
  std::string explanation;   // for fail: the domain's exp= text, else the default
  std::string problem;       // for none/permerror/temperror: why
  // ends_in_hard_all: the domain's own record ends with "-all" (SM-6.1 securemail hosts).
  bool ends_in_hard_all = false;
  int dns_terms = 0;         // DNS-querying terms evaluated (≤ 10)
};

// Check evaluates the MAIL FROM identity (or HELO for the null sender), RFC 7208 §2.4/§4.
Verdict Check(const Request& req, Dns& dns);

// ReceivedSpf renders the Received-SPF header field (RFC 7208 §9.1), CRLF-terminated.
std::string ReceivedSpf(const Verdict& v, const Request& req);

}  // namespace mailseal::spf
