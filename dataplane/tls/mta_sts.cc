// mta_sts.cc — see mta_sts.h.
#include "dataplane/tls/mta_sts.h"

#include <map>
#include <mutex>

#include "dataplane/base/strings.h"

namespace mailseal::tls {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

struct Cached {
  StsPolicy policy;
  int64_t expires_s = 0;
};
std::mutex cache_mu;
std::map<std::string, Cached> cache;   // bounded: kMaxDomains

constexpr int64_t kMaxAge = 31557600;
constexpr size_t kMaxDomains = 1000;

}  // namespace

const char* StsModeName(StsPolicy::Mode m) {
  switch (m) {
    case StsPolicy::Mode::kNone: return "none";
    case StsPolicy::Mode::kTesting: return "testing";
    case StsPolicy::Mode::kEnforce: return "enforce";
  }
  return "?";
}

Result<StsPolicy> ParseStsPolicy(std::string_view body) {
  if (body.size() > 64 * 1024) return InvalidArgumentError("MTA-STS policy larger than 64 KiB");
  StsPolicy p;
  bool version = false, mode = false, age = false;
  while (!body.empty()) {
    size_t nl = body.find('\n');
    std::string_view line = body.substr(0, nl);
    body = nl == std::string_view::npos ? std::string_view() : body.substr(nl + 1);
    line = Trim(line);
    if (line.empty()) continue;
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) return InvalidArgumentError(StrCat("MTA-STS policy line without ':': ", line.substr(0, 80)));
    std::string key = base::AsciiLower(Trim(line.substr(0, colon)));
    std::string value(Trim(line.substr(colon + 1)));
    if (key == "version") {
      if (value != "STSv1") return InvalidArgumentError(StrCat("MTA-STS policy version '", value, "' is not STSv1"));
      version = true;
    } else if (key == "mode") {
      if (value == "enforce") p.mode = StsPolicy::Mode::kEnforce;
      else if (value == "testing") p.mode = StsPolicy::Mode::kTesting;
      else if (value == "none") p.mode = StsPolicy::Mode::kNone;
      else return InvalidArgumentError(StrCat("MTA-STS mode '", value, "' is not enforce, testing or none"));
      mode = true;
    } else if (key == "max_age") {
      if (value.empty() || value.size() > 10 || value.find_first_not_of("0123456789") != std::string::npos)
        return InvalidArgumentError(StrCat("MTA-STS max_age '", value, "' is not a number"));
      p.max_age_s = std::min<int64_t>(std::stoll(value), kMaxAge);
      age = true;
    } else if (key == "mx") {
      std::string m = base::AsciiLower(value);
      std::string bare = m.starts_with("*.") ? m.substr(2) : m;
      if (!base::ValidDomainName(bare)) return InvalidArgumentError(StrCat("MTA-STS mx '", value, "' is not a host pattern"));
      if (p.mx.size() >= 64) return InvalidArgumentError("MTA-STS policy with more than 64 mx lines");
      p.mx.push_back(std::move(m));
    }   // other keys are ignored (§3.2: extensions)
  }
  if (!version || !mode || !age) return InvalidArgumentError("MTA-STS policy without version, mode or max_age");
  if (p.mode != StsPolicy::Mode::kNone && p.mx.empty()) return InvalidArgumentError("MTA-STS policy names no mx");
  return p;
}

bool StsMxMatches(std::string_view pattern, std::string_view host) {
  std::string p = base::AsciiLower(pattern), h = base::AsciiLower(host);
  while (!h.empty() && h.back() == '.') h.pop_back();
  if (!p.starts_with("*.")) return p == h;
  size_t dot = h.find('.');
  return dot != std::string::npos && dot > 0 && h.substr(dot + 1) == p.substr(2);
}

std::string StsTxtId(std::string_view txt) {
  std::string_view t = Trim(txt);
  if (!t.starts_with("v=STSv1")) return "";
  size_t at = t.find("id=");
  if (at == std::string_view::npos) return "";
  std::string_view id = t.substr(at + 3);
  id = id.substr(0, id.find_first_of("; \t"));
  if (id.empty() || id.size() > 32) return "";
  for (char ch : id)
    if (!std::isalnum(static_cast<unsigned char>(ch))) return "";
  return std::string(id);
}

Result<StsPolicy> StsPolicyFor(const std::string& domain_in, const TxtLookup& txt, const HttpsFetch& fetch, int64_t now_s) {
  std::string domain = base::AsciiLower(domain_in);
  Cached held;
  bool have = false;
  {
    std::lock_guard<std::mutex> l(cache_mu);
    auto it = cache.find(domain);
    if (it != cache.end() && it->second.expires_s > now_s) {
      held = it->second;
      have = true;
    }
  }
  Result<std::vector<std::string>> records = txt(StrCat("_mta-sts.", domain));
  std::string id;
  if (records.ok())
    for (const std::string& r : *records)
      if (std::string i = StsTxtId(r); !i.empty()) {
        if (!id.empty()) {   // several STS records: as none (§3.1)
          id.clear();
          break;
        }
        id = i;
      }
  if (id.empty()) {
    if (have) return held.policy;   // a cached policy outlives a missing record until max_age
    return records.ok() ? NotFoundError(StrCat(domain, " publishes no MTA-STS policy")) : records.status();
  }
  if (have && held.policy.id == id) return held.policy;
  Result<std::string> body = fetch(StrCat("https://mta-sts.", domain, "/.well-known/mta-sts.txt"));
  if (!body.ok()) {
    if (have) return held.policy;
    return UnavailableError(StrCat("MTA-STS policy of ", domain, " cannot be fetched: ", body.status().message()));
  }
  Result<StsPolicy> p = ParseStsPolicy(*body);
  if (!p.ok()) {
    if (have) return held.policy;
    return p.status();
  }
  p->id = id;
  std::lock_guard<std::mutex> l(cache_mu);
  if (cache.size() >= kMaxDomains && !cache.count(domain)) cache.erase(cache.begin());
  cache[domain] = Cached{*p, now_s + p->max_age_s};
  return p;
}

}  // namespace mailseal::tls
