// report.cc — see report.h.
#include "dataplane/tls/report.h"

#include <algorithm>
#include <ctime>

#include "dataplane/base/file.h"
#include "dataplane/base/strings.h"

namespace mailseal::tls {
namespace {

std::string Iso(int64_t t) {
  time_t tt = static_cast<time_t>(t);
  tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string Json(std::string_view s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += static_cast<char>(ch);
    } else if (ch < 0x20) {
      char b[8];
      snprintf(b, sizeof b, "\\u%04x", ch);
      out += b;
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out + "\"";
}

std::string JsonList(const std::vector<std::string>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + Json(v[i]);
  return out + "]";
}

}  // namespace

Reporter::Reporter(std::string dir, std::string organization, std::string contact, int64_t period_s)
    : dir_(std::move(dir)), organization_(std::move(organization)), contact_(std::move(contact)),
      period_s_(std::max<int64_t>(period_s, 1)), start_s_(static_cast<int64_t>(std::time(nullptr))) {}

void Reporter::Record(const std::string& domain, const std::string& policy_type, const std::vector<std::string>& policy_string,
                      const std::string& mx_host, const std::string& receiving_ip, const std::string& failure) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = domains_.find(domain);
  if (it == domains_.end()) {
    if (domains_.size() >= 1000) return;   // bounded
    it = domains_.emplace(domain, Domain{}).first;
  }
  Domain& d = it->second;
  d.policy_type = policy_type;
  if (!policy_string.empty()) d.policy_string = policy_string;
  if (!mx_host.empty() && std::find(d.mx.begin(), d.mx.end(), mx_host) == d.mx.end() && d.mx.size() < 32) d.mx.push_back(mx_host);
  if (failure.empty()) {
    ++d.ok;
    return;
  }
  ++d.failed;
  for (Failure& f : d.failures)
    if (f.result_type == failure && f.mx == mx_host && f.ip == receiving_ip) {
      ++f.count;
      return;
    }
  if (d.failures.size() < 100) d.failures.push_back({failure, mx_host, receiving_ip, 1});
}

Result<size_t> Reporter::WriteDue(int64_t now_s, bool force) {
  std::map<std::string, Domain> done;
  int64_t start;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!force && now_s - start_s_ < period_s_) return size_t{0};
    done.swap(domains_);
    start = start_s_;
    start_s_ = now_s;
  }
  size_t n = 0;
  for (const auto& [domain, d] : done) {
    std::string j = "{\n";
    j += StrCat("  \"organization-name\": ", Json(organization_), ",\n");
    j += StrCat("  \"date-range\": {\"start-datetime\": ", Json(Iso(start)), ", \"end-datetime\": ", Json(Iso(now_s)), "},\n");
    j += StrCat("  \"contact-info\": ", Json(contact_), ",\n");
    j += StrCat("  \"report-id\": ", Json(StrCat(Iso(start), "_", domain)), ",\n");
    j += "  \"policies\": [{\n";
    j += StrCat("    \"policy\": {\"policy-type\": ", Json(d.policy_type), ", \"policy-string\": ", JsonList(d.policy_string),
                ", \"policy-domain\": ", Json(domain), ", \"mx-host\": ", JsonList(d.mx), "},\n");
    j += StrCat("    \"summary\": {\"total-successful-session-count\": ", d.ok, ", \"total-failure-session-count\": ", d.failed,
                "},\n");
    j += "    \"failure-details\": [";
    for (size_t i = 0; i < d.failures.size(); ++i) {
      const Failure& f = d.failures[i];
      j += StrCat(i ? ",\n      " : "\n      ", "{\"result-type\": ", Json(f.result_type), ", \"receiving-mx-hostname\": ",
                  Json(f.mx), ", \"receiving-ip\": ", Json(f.ip), ", \"failed-session-count\": ", f.count, "}");
    }
    j += d.failures.empty() ? "]\n" : "\n    ]\n";
    j += "  }]\n}\n";
    std::string name = StrCat(dir_, "/", Iso(start), "_", domain, ".json");
    if (Status st = base::WriteFileDurably(name, j); !st.ok()) return st;
    ++n;
  }
  return n;
}

}  // namespace mailseal::tls
