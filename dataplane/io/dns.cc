// dns.cc — see dns.h.
#include "dataplane/io/dns.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <unbound.h>

#include <algorithm>
#include <cstring>

namespace mailseal::io {
namespace {
constexpr int kTypeA = 1, kTypeMx = 15, kTypeAaaa = 28, kClassIn = 1;
constexpr size_t kMaxMx = 32, kMaxAddrs = 16;

// Decodes a (possibly compressed-free) domain name from RDATA; unbound returns uncompressed.
bool DecodeName(const unsigned char* p, size_t len, size_t* off, std::string* out) {
  out->clear();
  while (*off < len) {
    unsigned l = p[(*off)++];
    if (l == 0) return true;
    if (l > 63 || *off + l > len) return false;
    if (!out->empty()) out->push_back('.');
    out->append(reinterpret_cast<const char*>(p + *off), l);
    *off += l;
  }
  return false;
}
// UbResult owns one libunbound result.
struct UbResult {
  ub_result* r = nullptr;
  ~UbResult() {
    if (r) ub_resolve_free(r);
  }
};
}  // namespace

Resolver::Resolver(const std::string& forwarder, const std::vector<std::string>& local_zones,
                   const std::vector<std::string>& local_data) {
  ctx_ = ub_ctx_create();
  if (!ctx_) {
    init_ = InternalError("ub_ctx_create failed");
    return;
  }
  int rc = forwarder.empty() ? ub_ctx_resolvconf(ctx_, nullptr)
                             : ub_ctx_set_fwd(ctx_, forwarder.c_str());
  if (rc != 0) {
    init_ = InvalidArgumentError(StrCat("resolver setup: ", ub_strerror(rc)));
    return;
  }
  ub_ctx_hosts(ctx_, nullptr);  // /etc/hosts too, like every MTA (a missing file is fine)
  for (const std::string& zone : local_zones) {
    size_t sp = zone.find(' ');
    if (sp == std::string::npos ||
        (rc = ub_ctx_zone_add(ctx_, zone.substr(0, sp).c_str(), zone.substr(sp + 1).c_str())) != 0) {
      init_ = InvalidArgumentError(StrCat("dns_local_zones '", zone, "': ",
                                          sp == std::string::npos ? "want \"name type\"" : ub_strerror(rc)));
      return;
    }
  }
  for (const std::string& rr : local_data) {
    if ((rc = ub_ctx_data_add(ctx_, rr.c_str())) != 0) {
      init_ = InvalidArgumentError(StrCat("dns_local_data '", rr, "': ", ub_strerror(rc)));
      return;
    }
  }
}

Resolver::~Resolver() {
  if (ctx_) ub_ctx_delete(ctx_);
}

namespace {
// RcodeText: what a DNS failure means for the operator reading a deferral.
std::string RcodeText(int rcode) {
  switch (rcode) {
    case 1: return "the resolver rejected the query (FORMERR)";
    case 2: return "DNS failed temporarily (SERVFAIL: the resolver or the domain's name servers did not answer)";
    case 5: return "the resolver refused the query (REFUSED)";
    default: return StrCat("the resolver answered rcode ", rcode);
  }
}
}  // namespace

Status Resolver::AddTrustAnchorFile(const std::string& path) {
  if (!init_.ok()) return init_;
  if (int rc = ub_ctx_add_ta_file(ctx_, path.c_str()); rc != 0)
    return InvalidArgumentError(StrCat("DNSSEC trust anchor file ", path, ": ", ub_strerror(rc)));
  validating_ = true;
  return OkStatus();
}

Result<Resolver::TlsaAnswer> Resolver::LookupTlsa(const std::string& host, uint16_t port) {
  if (!init_.ok()) return init_;
  std::string name = StrCat("_", port, "._tcp.", host);
  UbResult ans;
  constexpr int kTypeTlsa = 52;
  int rc = ub_resolve(ctx_, name.c_str(), kTypeTlsa, kClassIn, &ans.r);
  if (rc != 0) return UnavailableError(StrCat("TLSA lookup for ", name, ": ", ub_strerror(rc)));
  const ub_result* res = ans.r;
  if (res->bogus)
    return FailedPreconditionError(StrCat("TLSA lookup for ", name, " failed DNSSEC validation",
                                   res->why_bogus ? StrCat(" (", res->why_bogus, ")") : ""));
  if (res->rcode != 0 && res->rcode != 3) return UnavailableError(StrCat("TLSA lookup for ", name, ": ", RcodeText(res->rcode)));
  TlsaAnswer out;
  out.secure = validating_ && res->secure;
  for (int i = 0; res->havedata && res->data[i] && out.rdata.size() < 32; ++i)
    if (res->len[i] >= 4 && res->len[i] <= 8192) out.rdata.emplace_back(res->data[i], static_cast<size_t>(res->len[i]));
  return out;
}

Result<std::vector<MxHost>> Resolver::LookupMx(const std::string& domain, bool* secure) {
  if (!init_.ok()) return init_;
  UbResult ans;
  int rc = ub_resolve(ctx_, domain.c_str(), kTypeMx, kClassIn, &ans.r);
  if (rc != 0) return UnavailableError(StrCat("MX lookup for ", domain, ": ", ub_strerror(rc)));
  const ub_result* res = ans.r;
  if (res->bogus)
    return UnavailableError(StrCat("MX lookup for ", domain, " failed DNSSEC validation",
                                   res->why_bogus ? StrCat(" (", res->why_bogus, ")") : ""));
  if (secure) *secure = validating_ && res->secure;
  if (res->rcode == 3) return NotFoundError(StrCat("domain ", domain, " does not exist"));
  if (res->rcode != 0) return UnavailableError(StrCat("MX lookup for ", domain, ": ", RcodeText(res->rcode)));
  std::vector<MxHost> out;
  if (res->havedata) {
    for (int i = 0; res->data[i] && out.size() < kMaxMx; ++i) {
      const auto* p = reinterpret_cast<const unsigned char*>(res->data[i]);
      size_t len = static_cast<size_t>(res->len[i]);
      if (len < 3) continue;
      MxHost mx;
      mx.preference = (p[0] << 8) | p[1];
      size_t off = 2;
      if (!DecodeName(p, len, &off, &mx.host)) continue;
      out.push_back(std::move(mx));
    }
  }
  if (out.size() == 1 && out[0].host.empty())
    return FailedPreconditionError(StrCat("domain ", domain, " accepts no mail (null MX)"));
  std::stable_sort(out.begin(), out.end(),
                   [](const MxHost& a, const MxHost& b) { return a.preference < b.preference; });
  if (out.empty()) out.push_back(MxHost{0, domain});  // implicit MX
  return out;
}

Result<std::vector<sockaddr_storage>> Resolver::LookupAddresses(const std::string& host) {
  std::vector<sockaddr_storage> out;
  // An address literal needs no lookup.
  sockaddr_storage ss{};
  auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, host.c_str(), &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    out.push_back(ss);
    return out;
  }
  if (inet_pton(AF_INET6, host.c_str(), &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    out.push_back(ss);
    return out;
  }
  if (!init_.ok()) return init_;
  bool nxdomain = false, tempfail = false;
  for (int type : {kTypeA, kTypeAaaa}) {
    UbResult ans;
    if (ub_resolve(ctx_, host.c_str(), type, kClassIn, &ans.r) != 0) { tempfail = true; continue; }
    const ub_result* res = ans.r;
    if (res->rcode == 3) nxdomain = true;
    else if (res->rcode != 0) tempfail = true;
    for (int i = 0; res->havedata && res->data[i] && out.size() < kMaxAddrs; ++i) {
      sockaddr_storage a{};
      if (type == kTypeA && res->len[i] == 4) {
        auto* a4 = reinterpret_cast<sockaddr_in*>(&a);
        a4->sin_family = AF_INET;
        std::memcpy(&a4->sin_addr, res->data[i], 4);
        out.push_back(a);
      } else if (type == kTypeAaaa && res->len[i] == 16) {
        auto* a6 = reinterpret_cast<sockaddr_in6*>(&a);
        a6->sin6_family = AF_INET6;
        std::memcpy(&a6->sin6_addr, res->data[i], 16);
        out.push_back(a);
      }
    }
  }
  if (!out.empty()) return out;
  if (tempfail) return UnavailableError(StrCat("address lookup for ", host, " failed"));
  if (nxdomain) return NotFoundError(StrCat("host ", host, " does not exist"));
  return NotFoundError(StrCat("host ", host, " has no address"));
}

spf::Answer Resolver::Query(const std::string& name, spf::RrType type) {
  constexpr size_t kMaxRecords = 64;
  spf::Answer a;
  a.rcode = spf::Answer::Rcode::kTempFail;
  if (!init_.ok() || name.empty() || name.size() > 253) {
    if (!name.empty() && name.size() > 253) a.rcode = spf::Answer::Rcode::kNxDomain;
    return a;
  }
  UbResult ans;
  if (ub_resolve(ctx_, name.c_str(), static_cast<int>(type), kClassIn, &ans.r) != 0) return a;
  const ub_result* res = ans.r;
  if (res->rcode == 3) {
    a.rcode = spf::Answer::Rcode::kNxDomain;
    return a;
  }
  if (res->rcode != 0) return a;
  a.rcode = spf::Answer::Rcode::kOk;
  for (int i = 0; res->havedata && res->data[i] && a.records.size() < kMaxRecords; ++i) {
    const auto* p = reinterpret_cast<const unsigned char*>(res->data[i]);
    size_t len = static_cast<size_t>(res->len[i]);
    std::string rec;
    switch (type) {
      case spf::RrType::kTxt: {   // character-strings, joined (RFC 7208 §3.3)
        size_t off = 0;
        bool ok = true;
        while (off < len) {
          size_t l = p[off++];
          if (off + l > len) { ok = false; break; }
          rec.append(reinterpret_cast<const char*>(p + off), l);
          off += l;
        }
        if (!ok) continue;
        break;
      }
      case spf::RrType::kA:
      case spf::RrType::kAaaa:
        if (len != (type == spf::RrType::kA ? 4u : 16u)) continue;
        rec.assign(reinterpret_cast<const char*>(p), len);
        break;
      case spf::RrType::kMx: {
        size_t off = 2;
        if (len < 3 || !DecodeName(p, len, &off, &rec)) continue;
        break;
      }
      case spf::RrType::kPtr: {
        size_t off = 0;
        if (!DecodeName(p, len, &off, &rec)) continue;
        break;
      }
    }
    a.records.push_back(std::move(rec));
  }
  return a;
}

}  // namespace mailseal::io
