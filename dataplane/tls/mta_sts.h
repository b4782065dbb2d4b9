// mta_sts.h — SMTP MTA Strict Transport Security (RFC 8461): a domain's policy, discovered by
// its _mta-sts TXT record and fetched over HTTPS, says which MX hosts may receive its mail and
// that they must present a certificate valid for their name.
//
// Policies are cached per domain for their max_age (bounded: 86400·365 s, 1,000 domains); a new
// TXT id fetches again; while a cached policy is unexpired, a failed TXT lookup or fetch keeps
// it (RFC 8461 §5.1). The fetch follows no redirect, needs a certificate valid for
// mta-sts.<domain> under the configured CAs, takes at most 64 KiB within 10 s.
//
// SECURITY: the TXT answer and the policy body are outside input; parsing is bounded and
// strict (version STSv1, known mode, max_age, at most 64 mx patterns).
//
// STANDARDS: RFC 8461.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "dataplane/base/status.h"

namespace mailseal::tls {

struct StsPolicy {
  enum class Mode { kNone, kTesting, kEnforce };
  Mode mode = Mode::kNone;
  std::vector<std::string> mx;   // patterns, lower case ("mail.example.com", "*.example.net")
  int64_t max_age_s = 0;
  std::string id;                // the TXT record's id it was fetched for
};
const char* StsModeName(StsPolicy::Mode m);

// ParseStsPolicy: RFC 8461 §3.2's key: value lines.
Result<StsPolicy> ParseStsPolicy(std::string_view body);
// StsMxMatches: `host` matches `pattern` (a "*." wildcard stands for exactly one left-most label).
bool StsMxMatches(std::string_view pattern, std::string_view host);
// StsTxtId: the id of a "v=STSv1; id=..." record; "" when the record is not one.
std::string StsTxtId(std::string_view txt);

// StsPolicyFor: the policy in force for `domain`: `txt` answers the _mta-sts TXT question
// (records; an error when the lookup failed), `fetch` gets a URL's body over HTTPS. Cached per
// domain (process-wide). NotFound: the domain has no policy.
using TxtLookup = std::function<Result<std::vector<std::string>>(const std::string& name)>;
using HttpsFetch = std::function<Result<std::string>(const std::string& url)>;
Result<StsPolicy> StsPolicyFor(const std::string& domain, const TxtLookup& txt, const HttpsFetch& fetch, int64_t now_s);

}  // namespace mailseal::tls
