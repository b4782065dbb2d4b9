// discovery.cc — see discovery.h.
#include "dataplane/smime/discovery.h"
#include "dataplane/smime/gateway.h"

#include <openssl/x509v3.h>
#include <pthread.h>

#include <algorithm>
#include <chrono>

#include "dataplane/base/log.h"
#include "dataplane/base/strings.h"
#include "dataplane/pki/validator.h"

namespace mailseal::smime {
namespace {

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string UtcNow() {
  time_t t = time(nullptr);
  tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

Discovery::Discovery(CertStore* store, DiscoveryOptions o, Release release)
    : store_(store), o_(std::move(o)), release_(std::move(release)) {}

Discovery::~Discovery() { Stop(); }

void Discovery::Start() {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "certdisc");
    Run();
  });
}

void Discovery::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Discovery::Wanted(const std::string& domain_in) {
  std::string domain = base::AsciiLower(domain_in);
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = wanted_.find(domain);
    if (it == wanted_.end()) {
      if (wanted_.size() >= o_.max_wanted) {
        // Bounded: the domain waited for least recently goes (it is asked again when mail
        // for it is held again).
        auto oldest = wanted_.begin();
        for (auto j = wanted_.begin(); j != wanted_.end(); ++j)
          if (j->second.wanted_ms < oldest->second.wanted_ms) oldest = j;
        wanted_.erase(oldest);
      }
      it = wanted_.emplace(domain, Want{}).first;
      if (!o_.directories.empty())
        it->second.state = StrCat("looking it up in ", o_.directories.size() == 1 ? "the CA's directory" : "the CAs' directories",
                                  " (", o_.directories.front().query.server, o_.directories.size() > 1 ? ", …" : "", ")",
                                  o_.smimea ? " and DNS (SMIMEA)" : "", "; released automatically when a valid certificate is found");
      else if (o_.smimea)
        it->second.state = "looking it up in DNS (SMIMEA); released automatically when a valid certificate is found";
      else if (o_.send_requests)
        it->second.state = StrCat("asking domain-certificate-request@", domain,
                                  " by signed mail; released automatically when a valid certificate is found");
    }
    Want& w = it->second;
    int64_t now = SteadyMs();
    w.wanted_ms = now;
    w.found = false;
    if (!HasSources() || w.queued || (w.last_try_ms >= 0 && now - w.last_try_ms < o_.retry_ms)) return;
    w.queued = true;
    lookups_.push_back(domain);
  }
  cv_.notify_all();
}

void Discovery::Found(const std::string& domain_in) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (releases_.size() < o_.max_wanted) releases_.push_back(base::AsciiLower(domain_in));
  }
  cv_.notify_all();
}

std::string Discovery::LookupState(const std::string& domain_in) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = wanted_.find(base::AsciiLower(domain_in));
  return it == wanted_.end() ? "" : it->second.state;
}

std::vector<Discovery::Entry> Discovery::Entries() const {
  std::lock_guard<std::mutex> l(mu_);
  std::vector<Entry> out;
  for (const auto& [d, w] : wanted_) out.push_back({d, w.state, w.last_try_unix_ms, w.found});
  return out;
}

std::string Discovery::Lookup(const std::string& domain_in) {
  std::string domain = base::AsciiLower(domain_in);
  if (!ValidDomainName(domain)) return StrCat("'", domain_in, "' is not a domain name");
  if (o_.directories.empty() && !o_.smimea) return "no directory and no SMIMEA resolver is configured (smime.directories, smime.smimea)";
  std::lock_guard<std::mutex> one_at_a_time(lookup_mu_);
  std::vector<std::string> said;
  bool any_answer = false;
  std::string learnt;
  for (const Directory& dir : o_.directories) {
    pki::LdapSearch q = dir.query;
    q.filter = pki::FilterFor(dir.query.filter, domain);
    Result<std::vector<std::string>> values = pki::Search(q, o_.limits);
    if (!values.ok()) {
      said.push_back(std::string(values.status().message()));
      continue;
    }
    any_answer = true;
    std::vector<X509Ref> certs;
    size_t unreadable = 0, other_ca = 0;
    for (const std::string& v : *values) {
      Result<std::vector<pki::X509Ptr>> parsed = pki::ParseCertificates(v, 16);
      if (!parsed.ok()) {
        ++unreadable;
        continue;
      }
      for (pki::X509Ptr& x : *parsed) {
        if (dir.ca && X509_check_issued(dir.ca.get(), x.get()) != X509_V_OK) {
          ++other_ca;
          continue;
        }
        certs.push_back(x);
      }
    }
    std::string changed = certs.empty() ? "" : store_->Offer(domain, certs, q.server);
    if (!changed.empty()) learnt = StrCat(changed, " from ", q.server);
    std::string what = StrCat(q.server, ": ", values->size(), " value", values->size() == 1 ? "" : "s");
    if (unreadable) what += StrCat(", ", unreadable, " not a certificate");
    if (other_ca) what += StrCat(", ", other_ca, " not issued by the directory's CA");
    if (!certs.empty() && changed.empty()) what += ", none valid now for S/MIME encryption naming the domain's authority";
    said.push_back(what);
    base::Log(base::LogLevel::kInfo, "certdisc", "directory lookup",
              {{"domain", domain}, {"server", q.server}, {"answer", what}, {"learnt", changed}});
  }
  if (o_.smimea) {
    std::string address = StrCat("domain-confidentiality-authority@", domain);
    Result<pki::SmimeaResolver::Found> f = o_.smimea->Lookup(address);
    if (!f.ok()) {
      said.push_back(StrCat("SMIMEA: ", f.status().message()));
      if (f.status().code() == StatusCode::kNotFound || f.status().code() == StatusCode::kFailedPrecondition)
        any_answer = true;   // an answer, if not a usable one: DNS is not down
      if (f.status().code() == StatusCode::kFailedPrecondition)
        base::Log(base::LogLevel::kWarning, "certdisc", "SMIMEA answer refused", {{"domain", domain}, {"why", f.status().message()}});
    } else {
      any_answer = true;
      std::vector<X509Ref> certs;
      size_t unreadable = 0;
      for (const std::string& der : f->certificates) {
        Result<std::vector<pki::X509Ptr>> parsed = pki::ParseCertificates(der, 1);
        if (parsed.ok()) certs.push_back(parsed->front());
        else ++unreadable;
      }
      std::string changed = certs.empty() ? "" : store_->Offer(domain, certs, "SMIMEA");
      if (!changed.empty()) learnt = StrCat(changed, " from SMIMEA");
      std::string what = StrCat("SMIMEA (DNSSEC secure): ", f->certificates.size(), " certificate",
                                f->certificates.size() == 1 ? "" : "s");
      if (f->other_records) what += StrCat(", ", f->other_records, " record(s) without a whole certificate");
      if (unreadable) what += StrCat(", ", unreadable, " not a certificate");
      if (!certs.empty() && changed.empty()) what += ", none valid now for S/MIME encryption naming the domain's authority";
      said.push_back(what);
      base::Log(base::LogLevel::kInfo, "certdisc", "SMIMEA lookup", {{"domain", domain}, {"answer", what}, {"learnt", changed}});
    }
  }
  std::string text = StrCat("looked up at ", UtcNow(), ": ");
  for (size_t i = 0; i < said.size(); ++i) text += (i ? "; " : "") + said[i];
  std::string pending_source;
  if (store_->Pending(domain, &pending_source))
    text += StrCat(" — a certificate found (", pending_source, ") awaits an administrator's approval: mailsealctl certs approve ",
                   domain);
  else if (!learnt.empty()) text += StrCat(" — learnt ", learnt);
  else if (!any_answer) base::Log(base::LogLevel::kWarning, "certdisc", "no directory answered", {{"domain", domain}, {"why", text}});
  return text;
}

std::string Discovery::RequestIfDue(const std::string& domain) {
  if (!o_.send_requests || !send_request_) return "";
  int64_t now = SteadyMs();
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = wanted_.find(domain);
    if (it == wanted_.end()) return "";
    if (it->second.last_request_ms >= 0 && now - it->second.last_request_ms < o_.request_interval_ms)
      return StrCat("a signed request went to domain-certificate-request@", domain, " earlier; waiting for the answer");
    it->second.last_request_ms = now;
  }
  Status st = send_request_(domain);
  if (!st.ok()) {
    base::Log(base::LogLevel::kError, "certdisc", "certificate request not queued", {{"domain", domain}, {"error", st.message()}});
    return StrCat("the request to domain-certificate-request@", domain, " could not be queued: ", st.message());
  }
  base::Log(base::LogLevel::kInfo, "certdisc", "certificate requested by signed mail",
            {{"domain", domain}, {"to", StrCat("domain-certificate-request@", domain)}});
  return StrCat("a signed request was sent to domain-certificate-request@", domain, " at ", UtcNow(), " (SEE-2.8b)");
}

Result<std::vector<std::string>> Discovery::ReadSeemailList(size_t* skipped) {
  pki::LdapLimits limits = o_.limits;
  limits.max_entries = 10000;
  limits.max_values = 10000;
  Result<std::vector<std::string>> values = pki::Search(o_.seemail_query, limits);
  if (!values.ok()) return values.status();
  std::vector<std::string> out;
  size_t bad = 0;
  for (const std::string& v : *values) {
    std::string e = base::AsciiLower(v);
    size_t at = e.rfind('@');
    bool ok = at == std::string::npos ? ValidDomainName(e)
                                      : at > 0 && ValidDomainName(e.substr(at + 1)) &&
                                            e.find_first_of(" \t\r\n<>()[],;:\\\"") == std::string::npos;
    if (ok) out.push_back(std::move(e));
    else ++bad;
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  if (skipped) *skipped = bad;
  return out;
}

void Discovery::ReleaseIfUsable(const std::string& domain) {
  std::string covering;
  X509Ref dca = store_->Dca(domain, &covering);
  // Usable as the gateway judges it: valid now, and suitable (naming, key strength) — a copy
  // held as unsuitable must not be released to be held again.
  if (!dca || store_->Check(dca.get(), X509_PURPOSE_SMIME_ENCRYPT).first != CertStatus::kValid ||
      !UnsuitableDca(dca.get()).empty())
    return;
  // Every wanted domain this certificate covers (sub-domains too) is satisfied.
  std::vector<std::string> covered;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [d, w] : wanted_)
      if (base::InDomain(d, covering)) {
        w.found = true;
        covered.push_back(d);
      }
  }
  size_t n = release_ ? release_(covering) : 0;
  if (n) base::Log(base::LogLevel::kInfo, "certdisc", "held mail released: a valid certificate is known",
                   {{"domain", covering}, {"messages", std::to_string(n)}});
  std::lock_guard<std::mutex> l(mu_);
  for (const std::string& d : covered) wanted_.erase(d);
}

void Discovery::Run() {
  std::unique_lock<std::mutex> l(mu_);
  while (!stop_) {
    if (!releases_.empty()) {
      std::string d = std::move(releases_.front());
      releases_.pop_front();
      l.unlock();
      ReleaseIfUsable(d);
      l.lock();
      continue;
    }
    if (!lookups_.empty()) {
      std::string d = std::move(lookups_.front());
      lookups_.pop_front();
      auto it = wanted_.find(d);
      if (it == wanted_.end()) continue;
      it->second.last_try_ms = SteadyMs();
      it->second.last_try_unix_ms = UnixMs();
      l.unlock();
      std::string state = Lookup(d);
      std::string covering;
      X509Ref now_known = store_->Dca(d, &covering);
      if (!now_known || store_->Check(now_known.get(), X509_PURPOSE_SMIME_ENCRYPT).first != CertStatus::kValid)
        if (std::string asked = RequestIfDue(d); !asked.empty()) state = StrCat(state, "; ", asked);
      l.lock();
      it = wanted_.find(d);
      if (it != wanted_.end()) {
        it->second.queued = false;
        it->second.state = StrCat(state, it->second.found ? "" : StrCat("; asked again in ", o_.retry_ms / 1000, " s"));
      }
      l.unlock();
      ReleaseIfUsable(d);
      l.lock();
      continue;
    }
    // The SEEMAIL list from its directory, when due.
    if (!o_.seemail_query.server.empty() && seemail_sink_ && SteadyMs() >= next_seemail_ms_) {
      l.unlock();
      size_t skipped = 0;
      Result<std::vector<std::string>> list = ReadSeemailList(&skipped);
      if (list.ok()) {
        base::Log(base::LogLevel::kInfo, "certdisc", "SEEMAIL list read from the directory",
                  {{"server", o_.seemail_query.server}, {"entries", std::to_string(list->size())},
                   {"skipped", std::to_string(skipped)}});
        seemail_sink_(std::move(list.value()));
      } else {
        base::Log(base::LogLevel::kWarning, "certdisc", "SEEMAIL list not read: the last one read stays in force",
                  {{"error", list.status().message()}});
      }
      l.lock();
      // A failed read is tried again sooner (a tenth of the period, at least a minute).
      next_seemail_ms_ = SteadyMs() + (list.ok() ? o_.seemail_refresh_ms : std::max<int64_t>(60000, o_.seemail_refresh_ms / 10));
      continue;
    }
    // A copy held just after its certificate turned up (a worker decided before the store
    // learnt it, and wrote the copy after the release scan) is caught here within 30 s.
    int64_t now = SteadyMs();
    if (now - last_recheck_ms_ >= 30000) {
      last_recheck_ms_ = now;
      std::vector<std::string> recheck;
      for (const auto& [d, w] : wanted_)
        if (!w.queued) recheck.push_back(d);
      l.unlock();
      // Next certificates whose time has come take over (a partner's planned renewal).
      for (const std::string& d : store_->PromoteDue()) recheck.push_back(d);
      for (const std::string& d : recheck) ReleaseIfUsable(d);
      l.lock();
      continue;
    }
    // Mail still waiting: its domains are asked again when their retry time comes.
    int64_t next = std::min(now + 60000, last_recheck_ms_ + 30000);
    if (!o_.seemail_query.server.empty() && seemail_sink_) next = std::min(next, next_seemail_ms_);
    for (auto& [d, w] : wanted_) {
      if (!HasSources() || w.queued || w.found) continue;
      int64_t due = w.last_try_ms < 0 ? now : w.last_try_ms + o_.retry_ms;
      if (now - w.wanted_ms > 24 * 3600 * 1000LL) continue;   // nothing held for it for a day
      if (due <= now) {
        w.queued = true;
        lookups_.push_back(d);
      } else {
        next = std::min(next, due);
      }
    }
    if (!lookups_.empty()) continue;
    cv_.wait_for(l, std::chrono::milliseconds(next - now));
  }
}

}  // namespace mailseal::smime
