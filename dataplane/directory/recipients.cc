// recipients.cc — see recipients.h.
#include "dataplane/directory/recipients.h"

#include <chrono>

#include "dataplane/base/strings.h"

namespace mailseal::directory {
namespace {
int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

RecipientDirectory::RecipientDirectory(DirectoryOptions options) : options_(std::move(options)) {
  for (int i = 0; i < std::max(1, options_.threads); ++i) threads_.emplace_back([this] { Run(); });
}

RecipientDirectory::~RecipientDirectory() { Stop(); }

void RecipientDirectory::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_)
    if (t.joinable()) t.join();
}

std::optional<Answer> RecipientDirectory::Cached(const std::string& address) {
  std::string key = base::AsciiLower(address);
  std::lock_guard<std::mutex> l(mu_);
  auto it = cache_.find(key);
  if (it == cache_.end()) return std::nullopt;
  if (it->second.expires_ms <= NowMs()) {
    lru_.erase(it->second.lru);
    cache_.erase(it);
    return std::nullopt;
  }
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  ++stats_.hits;
  Answer a;
  a.result = it->second.known ? Lookup::kKnown : Lookup::kUnknown;
  a.detail = "cached";
  a.cached = true;
  return a;
}

void RecipientDirectory::Remember(const std::string& key, bool known) {
  std::lock_guard<std::mutex> l(mu_);
  if (options_.cache_entries == 0) return;
  int64_t expires = NowMs() + (known ? options_.known_ttl_ms : options_.unknown_ttl_ms);
  auto it = cache_.find(key);
  if (it != cache_.end()) {
    it->second.known = known;
    it->second.expires_ms = expires;
    lru_.splice(lru_.begin(), lru_, it->second.lru);
    return;
  }
  while (cache_.size() >= options_.cache_entries && !lru_.empty()) {   // the bound: least recently used goes
    cache_.erase(lru_.back());
    lru_.pop_back();
  }
  lru_.push_front(key);
  cache_.emplace(key, Entry{known, expires, lru_.begin()});
}

bool RecipientDirectory::Submit(const std::string& address, Done done) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopping_ || jobs_.size() >= options_.max_queued) return false;
    jobs_.push_back(Job{address, std::move(done)});
  }
  cv_.notify_one();
  return true;
}

Answer RecipientDirectory::Lookup(const std::string& address) {
  if (std::optional<Answer> c = Cached(address)) return *c;
  Answer a;
  if (address.size() > 320) {   // RFC 5321 §4.5.3.1: 64 + @ + 255
    a.result = Lookup::kUnknown;
    a.detail = "address too long";
    return a;
  }
  std::string key = base::AsciiLower(address);
  pki::LdapSearch q = options_.query;
  q.filter = pki::FilterFor(options_.query.filter, key);
  q.attribute = "1.1";   // no attributes: only whether entries match (RFC 4511 §4.5.1.8)
  pki::LdapLimits limits;
  limits.connect_timeout_ms = options_.timeout_ms;
  limits.total_timeout_ms = options_.timeout_ms;
  limits.max_entries = 16;
  limits.max_bytes = 256 * 1024;
  Result<size_t> n = pki::CountEntries(q, limits);
  {
    std::lock_guard<std::mutex> l(mu_);
    ++stats_.lookups;
    if (!n.ok()) ++stats_.unavailable;
    else if (*n == 0) ++stats_.unknown;
  }
  if (!n.ok()) {
    a.result = Lookup::kUnavailable;
    a.detail = n.status().message();
    return a;
  }
  a.result = *n > 0 ? Lookup::kKnown : Lookup::kUnknown;
  a.detail = StrCat(*n, " entr", *n == 1 ? "y" : "ies");
  Remember(key, *n > 0);
  return a;
}

void RecipientDirectory::Run() {
  while (true) {
    Job job;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [this] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job.done(Lookup(job.address));
  }
}

RecipientDirectory::Stats RecipientDirectory::stats() const {
  std::lock_guard<std::mutex> l(mu_);
  return stats_;
}

}  // namespace mailseal::directory
