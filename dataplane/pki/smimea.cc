// smimea.cc — see smimea.h.
#include "dataplane/pki/smimea.h"

#include <openssl/sha.h>
#include <poll.h>
#include <unbound.h>

#include <chrono>
#include <fstream>

#include "dataplane/base/strings.h"

namespace mailseal::pki {
namespace {

constexpr int kTypeSmimea = 53;
constexpr int kClassIn = 1;
constexpr size_t kMaxRecords = 16;
constexpr size_t kMaxRecordBytes = 64 * 1024;

std::string Hex(const unsigned char* p, size_t n) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out += kHex[p[i] >> 4];
    out += kHex[p[i] & 15];
  }
  return out;
}

struct Answer {
  bool done = false;
  int err = 0;
  ub_result* result = nullptr;
};

void OnAnswer(void* arg, int err, ub_result* result) {
  auto* a = static_cast<Answer*>(arg);
  a->done = true;
  a->err = err;
  a->result = result;
}

}  // namespace

std::string SmimeaOwner(const std::string& address) {
  size_t at = address.rfind('@');
  if (at == std::string::npos || at == 0 || at + 1 >= address.size()) return "";
  std::string domain = base::AsciiLower(address.substr(at + 1));
  if (!base::ValidDomainName(domain)) return "";
  // RFC 8162 §3.1: the local part as it is (no case folding), SHA2-256, first 28 octets.
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(address.data()), at, md);
  return StrCat(Hex(md, 28), "._smimecert.", domain, ".");
}

std::string SmimeaZoneLine(const std::string& address, const std::string& der, int ttl) {
  std::string owner = SmimeaOwner(address);
  if (owner.empty()) return "";
  return StrCat(owner, " ", ttl, " IN SMIMEA 1 0 0 ",
                Hex(reinterpret_cast<const unsigned char*>(der.data()), der.size()), " ; ", address);
}

Result<std::unique_ptr<SmimeaResolver>> SmimeaResolver::Create(const SmimeaOptions& o) {
  std::unique_ptr<SmimeaResolver> r(new SmimeaResolver());
  r->timeout_ms_ = o.timeout_ms > 0 ? o.timeout_ms : 10000;
  r->ctx_ = ub_ctx_create();
  if (!r->ctx_) return InternalError("ub_ctx_create failed");
  int rc = o.forwarder.empty() ? ub_ctx_resolvconf(r->ctx_, nullptr) : ub_ctx_set_fwd(r->ctx_, o.forwarder.c_str());
  if (rc != 0) return InvalidArgumentError(StrCat("resolver '", o.forwarder, "': ", ub_strerror(rc)));
  if (o.trust_anchor_file.empty()) return InvalidArgumentError("a DNSSEC trust anchor file is required");
  if (!std::ifstream(o.trust_anchor_file)) return NotFoundError(StrCat(o.trust_anchor_file, ": cannot be read"));
  if ((rc = ub_ctx_add_ta_file(r->ctx_, o.trust_anchor_file.c_str())) != 0)
    return InvalidArgumentError(StrCat(o.trust_anchor_file, ": ", ub_strerror(rc)));
  // Asynchronous answers are processed on the caller's thread (no thread of libunbound's own).
  ub_ctx_async(r->ctx_, 0);
  return r;
}

SmimeaResolver::~SmimeaResolver() {
  if (ctx_) ub_ctx_delete(ctx_);
}

Result<SmimeaResolver::Found> SmimeaResolver::Lookup(const std::string& address) {
  std::string owner = SmimeaOwner(address);
  if (owner.empty()) return InvalidArgumentError(StrCat("'", address, "' is not an address"));
  Answer a;
  int id = 0;
  int rc = ub_resolve_async(ctx_, owner.c_str(), kTypeSmimea, kClassIn, &a, OnAnswer, &id);
  if (rc != 0) return UnavailableError(StrCat("SMIMEA lookup of ", owner, ": ", ub_strerror(rc)));
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms_);
  while (!a.done) {
    long left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) {
      ub_cancel(ctx_, id);
      return DeadlineExceededError(StrCat("SMIMEA lookup of ", owner, ": no answer within ", timeout_ms_, " ms"));
    }
    pollfd p{ub_fd(ctx_), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::min<long>(left, 1000))) > 0) ub_process(ctx_);
  }
  std::unique_ptr<ub_result, void (*)(ub_result*)> res(a.result, ub_resolve_free);
  if (a.err != 0 || !res) return UnavailableError(StrCat("SMIMEA lookup of ", owner, ": ", ub_strerror(a.err)));
  if (res->bogus)
    return FailedPreconditionError(StrCat("SMIMEA answer for ", owner, " failed DNSSEC validation (bogus",
                                          res->why_bogus ? StrCat(": ", res->why_bogus) : "", ")"));
  if (!res->secure)
    return FailedPreconditionError(StrCat("SMIMEA answer for ", owner, " is not DNSSEC-signed (insecure): not believed"));
  if (res->nxdomain || !res->havedata) return NotFoundError(StrCat("no SMIMEA record at ", owner));
  Found f;
  for (size_t i = 0; res->data[i] && i < kMaxRecords; ++i) {
    size_t len = static_cast<size_t>(res->len[i]);
    const auto* d = reinterpret_cast<const unsigned char*>(res->data[i]);
    if (len < 4 || len > kMaxRecordBytes) {
      ++f.other_records;
      continue;
    }
    // RFC 6698 §2.1: usage, selector, matching type, association data.
    if (d[1] == 0 && d[2] == 0) f.certificates.emplace_back(reinterpret_cast<const char*>(d + 3), len - 3);
    else ++f.other_records;
  }
  return f;
}

}  // namespace mailseal::pki
