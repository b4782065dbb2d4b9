// cert_store.cc — see cert_store.h.
#include "dataplane/smime/cert_store.h"
#include "dataplane/base/strings.h"

#include "dataplane/base/file.h"
#include "dataplane/base/openssl_error.h"
#include "dataplane/smime/naming.h"
#include "dataplane/base/log.h"
#include "dataplane/queue/at_rest.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>

#include "dataplane/base/log.h"

namespace mailseal::smime {
namespace {

Result<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError(StrCat(path, ": cannot be read"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

X509Ref ParsePem(const std::string& pem) {
  BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* x = PEM_read_bio_X509(b, nullptr, nullptr, nullptr);
  BIO_free(b);
  ERR_clear_error();
  return Ref(x);
}

std::string ToPem(X509* x) {
  BIO* b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(b, x);
  std::string out = base::BioString(b);
  BIO_free(b);
  return out;
}

// AuthorityDomains: the domains a certificate is `authority` for under the whole SEE-2.6 rule
// (CN and rfc822Names, naming.h); none when it breaks the rule.
std::vector<std::string> AuthorityDomains(X509* cert, std::string_view authority) {
  return ExamineAuthority(cert, authority).domains;
}

bool SameCert(X509* a, X509* b) { return a && b && X509_cmp(a, b) == 0; }

// IssuedBefore: `a` was issued (notBefore) before `b`.
bool IssuedBefore(X509* a, X509* b) { return ASN1_TIME_compare(X509_get0_notBefore(a), X509_get0_notBefore(b)) < 0; }

}  // namespace


CertStore::~CertStore() = default;

Result<std::unique_ptr<CertStore>> CertStore::Open(const std::string& dir, const std::string& trust_file,
                                                   const std::vector<std::string>& crl_files, bool create) {
  std::unique_ptr<CertStore> s(new CertStore());
  s->dir_ = dir;
  if (create && ::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return InternalError(StrCat("mkdir ", dir, ": ", std::strerror(errno)));
  Result<std::shared_ptr<pki::TrustList>> trust = LoadTrust(trust_file, crl_files);
  if (!trust.ok()) return trust.status();
  s->trust_.store(std::move(trust.value()));
  // Entries: <domain>.<kind>.pem (current), .old.pem (a bundle), .next.pem, .pin (an API pin
  // of the current DCA), and <domain>.caps.
  DIR* d = ::opendir(dir.c_str());
  if (!d && !create && errno == ENOENT) return s;
  if (!d) return InternalError(StrCat("opendir ", dir, ": ", std::strerror(errno)));
  static constexpr struct {
    const char* suffix;
    const char* kind;
    const char* slot;
  } kFiles[] = {{".dca.old.pem", "dca", "old"}, {".dca.next.pem", "dca", "next"}, {".dca.pin", "dca", "pin"},
                {".dca.pending.pem", "dca", "pending"},
                {".dca.pem", "dca", "current"}, {".dsa.old.pem", "dsa", "old"}, {".dsa.next.pem", "dsa", "next"},
                {".dsa.pem", "dsa", "current"}, {".caps", "", "caps"}};
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    for (const auto& f : kFiles) {
      if (!name.ends_with(f.suffix) || name.size() <= std::strlen(f.suffix)) continue;
      std::string domain = name.substr(0, name.size() - std::strlen(f.suffix));
      if (!ValidDomainName(domain)) break;
      std::string slot = f.slot;
      if (slot == "pin") {
        s->dca_[domain].pinned = true;
        break;
      }
      Result<std::string> data = ReadFile(dir + "/" + name);
      if (data.ok()) data = queue::OpenBlob(std::move(data.value()));   // sealed at rest (DE-22) or plain
      if (!data.ok()) {
        base::Log(base::LogLevel::kError, "certstore", "stored file unreadable: skipped", {{"file", name}, {"error", data.status().message()}});
        break;
      }
      if (slot == "caps") {
        std::istringstream lines(*data);
        std::string line;
        auto& caps = s->caps_[domain];
        while (std::getline(lines, line) && caps.size() < 64)
          if (!line.empty()) caps.push_back(line);
        break;
      }
      Slots& slots = (std::strcmp(f.kind, "dca") == 0 ? s->dca_ : s->dsa_)[domain];
      Result<std::vector<pki::X509Ptr>> certs = pki::ParseCertificates(*data, kMaxOld);
      if (!certs.ok()) {
        base::Log(base::LogLevel::kWarning, "certstore", "unreadable certificate file ignored", {{"file", name}});
        break;
      }
      if (slot == "current") slots.current = certs->front();
      else if (slot == "next") slots.next = certs->front();
      else if (slot == "pending") slots.pending = certs->front();
      else slots.old.assign(certs->begin(), certs->end());
      break;
    }
  }
  ::closedir(d);
  return s;
}

Result<std::shared_ptr<pki::TrustList>> CertStore::LoadTrust(const std::string& trust_file,
                                                             const std::vector<std::string>& crl_files) {
  // The managed trust list (SEE-2.7) through the one validator's loader: every anchor must be
  // a conforming CA certificate, every CRL numbered — refused here, with the reason, not when
  // mail depends on them.
  auto t = std::make_shared<pki::TrustList>();
  if (Status st = t->LoadFile(trust_file, /*anchors=*/true, /*crls=*/false); !st.ok()) return st;
  for (const std::string& crl : crl_files)
    if (Status st = t->LoadFile(crl, /*anchors=*/false, /*crls=*/true); !st.ok()) return st;
  if (!crl_files.empty()) X509_STORE_set_flags(t->store(), X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
  return t;
}

void CertStore::SetTrust(std::shared_ptr<const pki::TrustList> trust) {
  trust_.store(std::move(trust));
  std::lock_guard<std::mutex> l(check_mu_);
  checked_.clear();
}

std::vector<CertStore::Listed> CertStore::List() const {
  std::shared_lock l(mu_);
  std::vector<Listed> out;
  for (auto [table, kind] : {std::pair{&dca_, "dca"}, std::pair{&dsa_, "dsa"}})
    for (const auto& [domain, sl] : *table) {
      if (sl.current) out.push_back({domain, kind, "current", sl.pinned, sl.pinned_by_config, sl.current});
      if (sl.next) out.push_back({domain, kind, "next", false, false, sl.next});
      if (sl.pending) out.push_back({domain, kind, "pending", false, false, sl.pending});
      for (const X509Ref& o : sl.old) out.push_back({domain, kind, "old", false, false, o});
    }
  return out;
}

Status CertStore::Pin(const std::string& domain_in, const std::string& pem_file) {
  std::string domain = base::AsciiLower(domain_in);
  if (!ValidDomainName(domain)) return InvalidArgumentError(StrCat("partner domain '", domain_in, "' is not a domain name"));
  Result<std::string> pem = ReadFile(pem_file);
  if (!pem.ok()) return pem.status();
  X509Ref x = ParsePem(*pem);
  if (!x) return InvalidArgumentError(StrCat(pem_file, ": no PEM certificate"));
  std::unique_lock l(mu_);
  Slots& sl = dca_[domain];
  if (!SameCert(sl.current.get(), x.get())) InstallLocked(sl, x, /*as_next=*/false);
  sl.pinned = sl.pinned_by_config = true;
  return OkStatus();
}

void CertStore::InstallLocked(Slots& sl, X509Ref c, bool as_next) {
  if (as_next) {
    sl.next = std::move(c);
    return;
  }
  if (sl.current) {
    std::erase_if(sl.old, [&](const X509Ref& o) { return SameCert(o.get(), sl.current.get()); });
    sl.old.insert(sl.old.begin(), sl.current);
    if (sl.old.size() > kMaxOld) sl.old.resize(kMaxOld);
  }
  if (sl.next && SameCert(sl.next.get(), c.get())) sl.next.reset();
  sl.current = std::move(c);
}

void CertStore::PersistSlots(const std::string& domain, const char* kind, const Slots& sl) const {
  auto write = [&](const std::string& name, const std::string& data) {
    if (Status st = Persist(name, data); !st.ok())
      base::Log(base::LogLevel::kWarning, "certstore", "cannot persist partner certificate", {{"file", name}, {"error", st.message()}});
  };
  auto remove = [&](const std::string& name) { ::unlink(StrCat(dir_, "/", name).c_str()); };
  if (sl.current) write(StrCat(domain, ".", kind, ".pem"), ToPem(sl.current.get()));
  else remove(StrCat(domain, ".", kind, ".pem"));
  if (sl.next) write(StrCat(domain, ".", kind, ".next.pem"), ToPem(sl.next.get()));
  else remove(StrCat(domain, ".", kind, ".next.pem"));
  if (sl.pending) write(StrCat(domain, ".", kind, ".pending.pem"), ToPem(sl.pending.get()));
  else remove(StrCat(domain, ".", kind, ".pending.pem"));
  std::string old;
  for (const X509Ref& o : sl.old) old += ToPem(o.get());
  if (!old.empty()) write(StrCat(domain, ".", kind, ".old.pem"), old);
  else remove(StrCat(domain, ".", kind, ".old.pem"));
  // An API pin survives a restart (a configuration pin is set again from the configuration).
  if (sl.pinned && !sl.pinned_by_config) write(StrCat(domain, ".", kind, ".pin"), "");
  else remove(StrCat(domain, ".", kind, ".pin"));
}

X509Ref CertStore::Dca(std::string_view domain_in, std::string* covering) const {
  std::string domain = base::AsciiLower(domain_in);
  std::shared_lock l(mu_);
  time_t now = std::time(nullptr);
  for (std::string_view d = domain; !d.empty();) {
    auto it = dca_.find(std::string(d));
    if (it != dca_.end() && (it->second.current || it->second.next)) {
      if (covering) *covering = it->first;
      // A next certificate whose time has come is used before PromoteDue makes it current
      // (unless the current one is pinned).
      const Slots& sl = it->second;
      if (sl.next && !sl.pinned && X509_cmp_time(X509_get0_notBefore(sl.next.get()), &now) < 0) return sl.next;
      if (sl.current) return sl.current;
    }
    size_t dot = d.find('.');
    if (dot == std::string_view::npos) break;
    d = d.substr(dot + 1);
  }
  return nullptr;
}

std::vector<std::string> CertStore::PromoteDue() {
  std::vector<std::string> changed;
  time_t now = std::time(nullptr);
  std::unique_lock l(mu_);
  for (auto [table, kind] : {std::pair{&dca_, "dca"}, std::pair{&dsa_, "dsa"}})
    for (auto& [domain, sl] : *table) {
      if (!sl.next || (sl.pinned && table == &dca_) || X509_cmp_time(X509_get0_notBefore(sl.next.get()), &now) >= 0) continue;
      X509Ref n = sl.next;
      InstallLocked(sl, n, false);
      PersistSlots(domain, kind, sl);
      base::Log(base::LogLevel::kInfo, "certstore", "next certificate took over", {{"domain", domain}, {"kind", kind},
                                                                                    {"subject", pki::Describe(n.get())}});
      if (table == &dca_) changed.push_back(domain);
    }
  return changed;
}

std::vector<std::string> CertStore::Capabilities(std::string_view domain) const {
  std::shared_lock l(mu_);
  auto it = caps_.find(base::AsciiLower(domain));
  return it == caps_.end() ? std::vector<std::string>{} : it->second;
}

std::vector<X509Ref> CertStore::KnownSigners() const {
  // Old and next DSA certificates too: mail signed just before a partner's key changed still
  // verifies (each is judged at the message's signing time).
  std::shared_lock l(mu_);
  std::vector<X509Ref> out;
  for (const auto& [d, sl] : dsa_) {
    if (sl.current) out.push_back(sl.current);
    if (sl.next) out.push_back(sl.next);
    for (const X509Ref& o : sl.old) out.push_back(o);
  }
  return out;
}

std::pair<CertStatus, std::string> CertStore::Check(X509* cert, int purpose) const {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                    std::chrono::steady_clock::now().time_since_epoch()).count();
  std::string key;
  if (X509_digest(cert, EVP_sha1(), md, &n) == 1) {
    key.assign(reinterpret_cast<char*>(md), n);
    key += static_cast<char>(purpose);
    std::lock_guard<std::mutex> l(check_mu_);
    auto it = checked_.find(key);
    if (it != checked_.end() && now - it->second.at_s < 60) return {it->second.status, it->second.detail};
  }
  std::shared_ptr<const pki::TrustList> trust = trust_.load();
  auto r = CheckPath(cert, {}, trust->store(), purpose);
  // "Status unknown" is not kept: it lasts only until the refresher has the CRL or OCSP answer;
  // nor "not yet valid": a renewal's time may come within the minute.
  if (!key.empty() && r.first != CertStatus::kStatusUnknown && r.first != CertStatus::kNotYetValid) {
    std::lock_guard<std::mutex> l(check_mu_);
    if (checked_.size() > 4096) checked_.clear();
    checked_[key] = {r.first, r.second, now};
  }
  return r;
}

Status CertStore::Persist(const std::string& name, const std::string& data) const {
  return base::WriteFileDurably(StrCat(dir_, "/", name), queue::SealBlob(data));   // DE-22: sealed at rest
}

std::string CertStore::LearnOne(const std::string& domain, X509Ref c, const char* authority, int purpose, Table* table,
                                const char* kind, bool pin, std::string* refusal, const std::string* pending_source) {
  std::vector<std::string> names = AuthorityDomains(c.get(), authority);
  if (std::find(names.begin(), names.end(), domain) == names.end()) {
    if (refusal) *refusal = StrCat("it does not name ", authority, "@", domain, " as RFC 3183 asks (CN and rfc822Name)");
    return "";
  }
  if (std::string weak = KeyStrengthProblem(c.get()); !weak.empty()) {
    if (refusal) *refusal = weak;
    return "";
  }
  auto [status, why] = Check(c.get(), purpose);
  bool as_next = false;
  if (status == CertStatus::kNotYetValid && !pin) {
    // Valid from a future date: kept as the next certificate if it is sound then.
    int64_t from = pki::UnixTime(X509_get0_notBefore(c.get()));
    auto later = CheckPath(c.get(), {}, trust_.load()->store(), purpose, from + 60);
    as_next = later.first == CertStatus::kValid;
    if (!as_next) why = later.second;
  }
  if (status != CertStatus::kValid && !as_next) {
    if (refusal) *refusal = StrCat("it is ", CertStatusName(status), why.empty() ? "" : StrCat(" (", why, ")"));
    return "";
  }
  if (pending_source) {   // qualifies: kept aside until an administrator approves it
    std::unique_lock l(mu_);
    Slots& sl = (*table)[domain];
    if (SameCert(sl.current.get(), c.get()) || SameCert(sl.pending.get(), c.get())) return "";
    sl.pending = c;
    sl.pending_source = *pending_source;
    PersistSlots(domain, kind, sl);
    base::Log(base::LogLevel::kWarning, "certstore", "discovered certificate awaits an administrator's approval",
              {{"domain", domain}, {"source", *pending_source}, {"subject", pki::Describe(c.get())},
               {"approve", StrCat("mailsealctl certs approve ", domain)}});
    return StrCat(kind, " certificate awaiting approval");
  }
  X509Ref held, next;
  bool pinned = false;
  {
    std::shared_lock l(mu_);
    auto it = table->find(domain);
    if (it != table->end()) {
      held = it->second.current;
      next = it->second.next;
      pinned = it->second.pinned;
    }
  }
  if (table == &dca_ && pinned && !pin) return "";   // a pin is never replaced by learning
  if (as_next ? (next && (SameCert(next.get(), c.get()) || IssuedBefore(c.get(), next.get())))
              : SameCert(held.get(), c.get()) && (!pin || pinned))
    return "";
  if (!as_next && !pin && held && IssuedBefore(c.get(), held.get()) && Check(held.get(), purpose).first == CertStatus::kValid) {
    // An older valid certificate than the one in use: kept as an old one (a DSA's mail in
    // transit), never made current.
    std::unique_lock l(mu_);
    Slots& sl = (*table)[domain];
    if (std::none_of(sl.old.begin(), sl.old.end(), [&](const X509Ref& o) { return SameCert(o.get(), c.get()); }) &&
        sl.old.size() < kMaxOld) {
      sl.old.push_back(c);
      PersistSlots(domain, kind, sl);
    }
    return "";
  }
  {
    std::unique_lock l(mu_);
    Slots& sl = (*table)[domain];
    if (!SameCert(sl.current.get(), c.get())) InstallLocked(sl, c, as_next);
    if (pin) sl.pinned = true;
    PersistSlots(domain, kind, sl);
  }
  return StrCat(as_next ? "next " : "", kind, " certificate");
}

std::string CertStore::Learn(const std::string& domain_in, const std::vector<X509Ref>& certs,
                             const std::vector<std::string>& caps) {
  std::string domain = base::AsciiLower(domain_in);
  if (!ValidDomainName(domain)) return "";
  std::vector<std::string> changed;
  for (const X509Ref& c : certs) {
    for (auto [authority, purpose, table, kind] :
         {std::tuple{"domain-confidentiality-authority", X509_PURPOSE_SMIME_ENCRYPT, &dca_, "dca"},
          std::tuple{"domain-signing-authority", X509_PURPOSE_SMIME_SIGN, &dsa_, "dsa"}}) {
      if (!ExamineAuthority(c.get(), authority).claims) continue;
      if (std::string what = LearnOne(domain, c, authority, purpose, table, kind, false, nullptr); !what.empty())
        changed.push_back(what);
    }
  }
  if (!caps.empty()) {
    bool differs;
    {
      std::unique_lock l(mu_);
      std::vector<std::string> bounded(caps.begin(), caps.begin() + static_cast<long>(std::min<size_t>(caps.size(), 64)));
      differs = caps_[domain] != bounded;
      if (differs) caps_[domain] = bounded;
    }
    if (differs) {
      std::string text;
      for (const std::string& c : caps) text += c + "\n";
      if (Status st = Persist(StrCat(domain, ".caps"), text); !st.ok())
        base::Log(base::LogLevel::kWarning, "certstore", "cannot persist capabilities", {{"error", st.message()}});
      changed.push_back("capabilities");
    }
  }
  std::string out;
  for (const std::string& c : changed) out += (out.empty() ? "" : ", ") + c;
  if (CertWatcher* w = watcher_.load(); w && std::find(changed.begin(), changed.end(), "dca certificate") != changed.end())
    w->Found(domain);
  return out;
}

void CertStore::SetApprovalRule(std::function<bool(const std::string& domain)> rule) { approval_rule_ = std::move(rule); }

std::string CertStore::Offer(const std::string& domain_in, const std::vector<X509Ref>& certs, const std::string& source) {
  std::string domain = base::AsciiLower(domain_in);
  if (!approval_rule_ || !approval_rule_(domain)) return Learn(domain, certs, {});
  if (!ValidDomainName(domain)) return "";
  std::string what;
  for (const X509Ref& c : certs)
    if (ExamineAuthority(c.get(), "domain-confidentiality-authority").claims)
      if (std::string w = LearnOne(domain, c, "domain-confidentiality-authority", X509_PURPOSE_SMIME_ENCRYPT, &dca_, "dca",
                                   false, nullptr, &source);
          !w.empty())
        what = w;
  return what;
}

X509Ref CertStore::Pending(const std::string& domain, std::string* source) const {
  std::shared_lock l(mu_);
  auto it = dca_.find(base::AsciiLower(domain));
  if (it == dca_.end() || !it->second.pending) return nullptr;
  if (source) *source = it->second.pending_source;
  return it->second.pending;
}

Result<std::string> CertStore::Approve(const std::string& domain_in) {
  std::string domain = base::AsciiLower(domain_in);
  X509Ref p;
  {
    std::unique_lock l(mu_);
    auto it = dca_.find(domain);
    if (it == dca_.end() || !it->second.pending) return NotFoundError(StrCat("no certificate of ", domain, " awaits approval"));
    p = it->second.pending;
    it->second.pending.reset();
    it->second.pending_source.clear();
    PersistSlots(domain, "dca", it->second);
  }
  std::string refusal;
  std::string what = LearnOne(domain, p, "domain-confidentiality-authority", X509_PURPOSE_SMIME_ENCRYPT, &dca_, "dca", false, &refusal);
  if (!refusal.empty()) return FailedPreconditionError(StrCat("not taken: ", refusal));
  if (CertWatcher* w = watcher_.load()) w->Found(domain);
  return what.empty() ? std::string("already held") : what;
}

Result<std::string> CertStore::Add(const std::string& domain_in, X509* cert, bool pin) {
  std::string domain = base::AsciiLower(domain_in);
  if (!ValidDomainName(domain)) return InvalidArgumentError(StrCat("'", domain_in, "' is not a domain name"));
  X509Ref c = RefUp(cert);
  bool dca = ExamineAuthority(cert, "domain-confidentiality-authority").claims;
  bool dsa = ExamineAuthority(cert, "domain-signing-authority").claims;
  if (!dca && !dsa)
    return InvalidArgumentError("the certificate names neither a domain-confidentiality-authority nor a domain-signing-authority");
  if (pin && !dca) return InvalidArgumentError("only a DCA certificate is pinned (a DSA is checked against the trust list)");
  std::string refusal, what;
  if (dca) what = LearnOne(domain, c, "domain-confidentiality-authority", X509_PURPOSE_SMIME_ENCRYPT, &dca_, "dca", pin, &refusal);
  if (dsa && refusal.empty())
    what += LearnOne(domain, c, "domain-signing-authority", X509_PURPOSE_SMIME_SIGN, &dsa_, "dsa", false, &refusal);
  if (!refusal.empty()) return InvalidArgumentError(StrCat("not taken for ", domain, ": ", refusal));
  if (what.empty()) return std::string("already held");
  if (CertWatcher* w = watcher_.load(); w && dca) w->Found(domain);
  return what;
}

Status CertStore::Remove(const std::string& domain_in, const std::string& kind) {
  std::string domain = base::AsciiLower(domain_in);
  Table* table = kind == "dca" ? &dca_ : kind == "dsa" ? &dsa_ : nullptr;
  if (!table) return InvalidArgumentError("kind is dca or dsa");
  std::unique_lock l(mu_);
  auto it = table->find(domain);
  if (it == table->end() || (!it->second.current && !it->second.next && !it->second.pending && it->second.old.empty()))
    return NotFoundError(StrCat("no ", kind, " certificate is held for ", domain));
  if (it->second.pinned_by_config)
    return FailedPreconditionError(StrCat(domain, "'s DCA certificate is pinned in the configuration (smime.partners): change it there"));
  Slots empty;
  PersistSlots(domain, kind.c_str(), empty);
  table->erase(it);
  std::lock_guard<std::mutex> cl(check_mu_);
  checked_.clear();
  return OkStatus();
}

std::string CertStore::Wanted(const std::string& domain) const {
  CertWatcher* w = watcher_.load();
  if (!w) return "";
  w->Wanted(domain);
  return w->LookupState(domain);
}

}  // namespace mailseal::smime
