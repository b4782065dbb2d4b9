// cert_store.cc — see cert_store.h.
#include "dataplane/smime/cert_store.h"
#include "dataplane/base/strings.h"

#include "dataplane/base/file.h"
#include "dataplane/base/openssl_error.h"
#include "dataplane/smime/naming.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
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
  // Harvested entries: <domain>.dca.pem, <domain>.dsa.pem, <domain>.caps.
  DIR* d = ::opendir(dir.c_str());
  if (!d && !create && errno == ENOENT) return s;
  if (!d) return InternalError(StrCat("opendir ", dir, ": ", std::strerror(errno)));
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    for (const char* kind : {".dca.pem", ".dsa.pem", ".caps"}) {
      size_t k = std::strlen(kind);
      if (name.size() <= k || name.compare(name.size() - k, k, kind) != 0) continue;
      std::string domain = name.substr(0, name.size() - k);
      if (!ValidDomainName(domain)) continue;
      Result<std::string> data = ReadFile(dir + "/" + name);
      if (!data.ok()) continue;
      if (std::strcmp(kind, ".caps") == 0) {
        std::istringstream lines(*data);
        std::string line;
        auto& caps = s->caps_[domain];
        while (std::getline(lines, line) && caps.size() < 64)
          if (!line.empty()) caps.push_back(line);
      } else if (X509Ref x = ParsePem(*data)) {
        (std::strcmp(kind, ".dca.pem") == 0 ? s->dca_ : s->dsa_)[domain] = x;
      } else {
        base::Log(base::LogLevel::kWarning, "certstore", "unreadable certificate file ignored", {{"file", name}});
      }
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
  for (const auto& [domain, cert] : dca_) {
    auto p = pinned_.find(domain);
    out.push_back({domain, "dca", p != pinned_.end() && p->second, cert});
  }
  for (const auto& [domain, cert] : dsa_) out.push_back({domain, "dsa", false, cert});
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
  dca_[domain] = x;
  pinned_[domain] = true;
  return OkStatus();
}

X509Ref CertStore::Dca(std::string_view domain_in, std::string* covering) const {
  std::string domain = base::AsciiLower(domain_in);
  std::shared_lock l(mu_);
  for (std::string_view d = domain; !d.empty();) {
    auto it = dca_.find(std::string(d));
    if (it != dca_.end()) {
      if (covering) *covering = it->first;
      return it->second;
    }
    size_t dot = d.find('.');
    if (dot == std::string_view::npos) break;
    d = d.substr(dot + 1);
  }
  return nullptr;
}

std::vector<std::string> CertStore::Capabilities(std::string_view domain) const {
  std::shared_lock l(mu_);
  auto it = caps_.find(base::AsciiLower(domain));
  return it == caps_.end() ? std::vector<std::string>{} : it->second;
}

std::vector<X509Ref> CertStore::KnownSigners() const {
  std::shared_lock l(mu_);
  std::vector<X509Ref> out;
  for (const auto& [d, x] : dsa_) out.push_back(x);
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
  // "Status unknown" is not kept: it lasts only until the refresher has the CRL or OCSP answer.
  if (!key.empty() && r.first != CertStatus::kStatusUnknown) {
    std::lock_guard<std::mutex> l(check_mu_);
    if (checked_.size() > 4096) checked_.clear();
    checked_[key] = {r.first, r.second, now};
  }
  return r;
}

Status CertStore::Persist(const std::string& name, const std::string& data) const {
  return base::WriteFileDurably(StrCat(dir_, "/", name), data);
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
      std::vector<std::string> names = AuthorityDomains(c.get(), authority);
      if (std::find(names.begin(), names.end(), domain) == names.end()) continue;
      if (Check(c.get(), purpose).first != CertStatus::kValid || !KeyStrengthProblem(c.get()).empty()) continue;
      X509Ref held;
      {
        std::shared_lock l(mu_);
        if (table == &dca_ && pinned_.count(domain)) continue;
        auto it = table->find(domain);
        if (it != table->end()) held = it->second;
      }
      if (held && (SameCert(held.get(), c.get()) ||
                   (IssuedBefore(c.get(), held.get()) && Check(held.get(), purpose).first == CertStatus::kValid)))
        continue;
      {
        std::unique_lock l(mu_);
        (*table)[domain] = c;
      }
      if (Status st = Persist(StrCat(domain, ".", kind, ".pem"), ToPem(c.get())); !st.ok())
        base::Log(base::LogLevel::kWarning, "certstore", "cannot persist harvested certificate", {{"error", st.message()}});
      changed.push_back(StrCat(kind, " certificate"));
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

std::string CertStore::Wanted(const std::string& domain) const {
  CertWatcher* w = watcher_.load();
  if (!w) return "";
  w->Wanted(domain);
  return w->LookupState(domain);
}

}  // namespace mailseal::smime
