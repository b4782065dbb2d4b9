// report.h — SMTP TLS reporting (RFC 8460): per policy domain, how many sessions reached the
// TLS their policy asked for and why the others did not, written as RFC 8460 JSON aggregate
// reports for the operator (sending them to the domain's rua is not done).
//
// Every delivery agent records into one Reporter (thread safe, bounded: 1,000 domains, 100
// failure kinds each); WriteDue writes one file per domain per period to the report directory
// (<dir>/<start>_<domain>.json, written whole, then renamed) and starts the next period.
//
// STANDARDS: RFC 8460 §4 (report format, result types).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "dataplane/base/status.h"

namespace mailseal::tls {

class Reporter {
 public:
  Reporter(std::string dir, std::string organization, std::string contact, int64_t period_s);

  // Record one session: `policy_type` "tlsa", "sts" or "no-policy-found"; `failure` an RFC 8460
  // result type ("certificate-host-mismatch", "certificate-not-trusted", "tlsa-invalid",
  // "dnssec-invalid", "validation-failure", "starttls-not-supported", ...), empty on success.
  void Record(const std::string& domain, const std::string& policy_type, const std::vector<std::string>& policy_string,
              const std::string& mx_host, const std::string& receiving_ip, const std::string& failure);
  // WriteDue: when the period has ended (or `force`), the reports are written and a new period
  // starts. Returns how many files were written.
  Result<size_t> WriteDue(int64_t now_s, bool force = false);

 private:
  struct Failure {
    std::string result_type, mx, ip;
    uint64_t count = 0;
  };
  struct Domain {
    std::string policy_type;
    std::vector<std::string> policy_string;
    std::vector<std::string> mx;
    uint64_t ok = 0, failed = 0;
    std::vector<Failure> failures;
  };
  std::string dir_, organization_, contact_;
  int64_t period_s_;
  std::mutex mu_;
  int64_t start_s_ = 0;
  std::map<std::string, Domain> domains_;
};

}  // namespace mailseal::tls
