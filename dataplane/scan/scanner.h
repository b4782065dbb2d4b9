// scanner.h — content scanning of plaintext mail (DE-15, issue #19): after inbound decryption
// and before outbound sealing the crypto worker hands the message to every configured scanner:
// ClamAV's clamd (INSTREAM over its socket) and any filter speaking the milter protocol
// (Sendmail's libmilter, pymilter, rspamd, opendkim ...), so existing filters plug in.
//
// Each scan is one connection, bounded in time (timeout_ms per exchange) and in size (a
// message over max_bytes is not sent: "too large to scan", handled as the scanner being
// unavailable). Verdicts: pass; reject (the recipients fail with a DSN); quarantine (held, with
// the scanner's reason); unavailable (the scanner could not say: by configuration held — the
// default — deferred, or passed; never passed unscanned unless the configuration says so).
//
// SECURITY: scanners see the plaintext: they must run on this host or a trusted network
// (a unix socket, or loopback). A milter may only ask for quarantine; the modification
// actions (add/change headers, replace the body, change recipients) are not offered in the
// negotiation, and one sent anyway is ignored and logged: a filter cannot alter sealed mail.
// A milter "discard" never drops mail silently: it quarantines.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "dataplane/base/status.h"

namespace mailseal::scan {

enum class Verdict { kPass, kReject, kQuarantine, kUnavailable };
const char* VerdictName(Verdict v);

struct Outcome {
  Verdict verdict = Verdict::kPass;
  std::string reason;    // what the scanner said ("Eicar-Test-Signature FOUND", "550 5.7.1 ...")
  std::string scanner;   // its name
};

struct Message {
  std::string_view bytes;   // the whole message: header and body, CRLF lines
  std::string mail_from;
  std::vector<std::string> rcpts;
  std::string client_address;   // "1.2.3.4:567" or empty
  std::string helo;
  std::string queue_id;
};

struct Limits {
  long timeout_ms = 30000;
  uint64_t max_bytes = 25u << 20;
};

class Scanner {
 public:
  virtual ~Scanner() = default;
  virtual Outcome Scan(const Message& m, const Limits& limits) = 0;
  virtual const std::string& name() const = 0;
};

// clamd: `address` is a unix socket path ("/run/clamav/clamd.ctl") or "host:port". A virus
// found gives `on_virus` (quarantine or reject).
std::unique_ptr<Scanner> MakeClamd(std::string name, std::string address, Verdict on_virus);
// milter: "unix:/path" or "inet:port@host" (Sendmail's notation), protocol version 6.
std::unique_ptr<Scanner> MakeMilter(std::string name, std::string address);

// Connect: a stream socket to "/path", "unix:/path", "host:port" or "inet:port@host", within
// the deadline. For the scanners; exposed for tests.
Result<int> Connect(const std::string& address, long timeout_ms);

}  // namespace mailseal::scan
