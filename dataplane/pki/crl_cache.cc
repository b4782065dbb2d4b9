// crl_cache.cc — see crl_cache.h.
#include "dataplane/pki/crl_cache.h"
#include "dataplane/base/strings.h"

#include <dirent.h>
#include <openssl/evp.h>
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>

#include "dataplane/base/file.h"
#include "dataplane/base/openssl_error.h"
#include "dataplane/base/log.h"

namespace mailseal::pki {

namespace {

struct Attachment {
  CrlCache* cache;
  Revocation mode;
};

// FreeAttachment: the store's ex_data destructor (the attachment lives as long as the store).
void FreeAttachment(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) { delete static_cast<Attachment*>(ptr); }

int StoreIndex() {
  static const int index = X509_STORE_get_ex_new_index(0, nullptr, nullptr, nullptr, FreeAttachment);
  return index;
}

int64_t Now() { return static_cast<int64_t>(std::time(nullptr)); }


std::string NameDer(const X509_NAME* n) {
  unsigned char* der = nullptr;
  int len = i2d_X509_NAME(n, &der);
  std::string s = len > 0 ? std::string(reinterpret_cast<char*>(der), static_cast<size_t>(len)) : "";
  OPENSSL_free(der);
  return s;
}

BIGNUM* CrlNumber(X509_CRL* crl) {
  int crit = 0;
  ASN1_INTEGER* n = static_cast<ASN1_INTEGER*>(X509_CRL_get_ext_d2i(crl, NID_crl_number, &crit, nullptr));
  BIGNUM* bn = n ? ASN1_INTEGER_to_BN(n, nullptr) : nullptr;
  ASN1_INTEGER_free(n);
  return bn;
}

// LookupCrls: OpenSSL's CRL lookup for a store with a cache attached — the store's own CRLs for
// the issuer, then the held CRLs of the current certificate's distribution points (each URL
// noted for the refresher).
STACK_OF(X509_CRL)* LookupCrls(const X509_STORE_CTX* ctx, const X509_NAME* issuer) {
  STACK_OF(X509_CRL)* out = X509_STORE_CTX_get1_crls(ctx, issuer);
  if (!out) out = sk_X509_CRL_new_null();
  auto* a = static_cast<Attachment*>(X509_STORE_get_ex_data(X509_STORE_CTX_get0_store(ctx), StoreIndex()));
  X509* cert = X509_STORE_CTX_get_current_cert(ctx);
  if (!a || !cert || !out) return out;
  for (const std::string& url : CrlUrls(cert)) {
    a->cache->Note(url, X509_get_issuer_name(cert));
    if (CrlPtr crl = a->cache->Held(url)) {
      X509_CRL_up_ref(crl.get());
      if (!sk_X509_CRL_push(out, crl.get())) X509_CRL_free(crl.get());
    }
  }
  return out;
}

}  // namespace

CrlCache* CrlCache::Of(X509_STORE* store) {
  auto* a = store ? static_cast<Attachment*>(X509_STORE_get_ex_data(store, StoreIndex())) : nullptr;
  return a ? a->cache : nullptr;
}

Revocation RevocationOf(X509_STORE* store, bool* attached) {
  auto* a = store ? static_cast<Attachment*>(X509_STORE_get_ex_data(store, StoreIndex())) : nullptr;
  if (attached) *attached = a != nullptr;
  return a ? a->mode : Revocation::kWhereNamed;
}

Result<std::unique_ptr<CrlCache>> CrlCache::Open(Options options) {
  if (!options.fetch) options.fetch = Fetch;
  std::unique_ptr<CrlCache> c(new CrlCache(std::move(options)));
  const std::string& dir = c->options_.dir;
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return InternalError(StrCat("mkdir ", dir, ": ", std::strerror(errno)));
  // Cached CRLs: "<sha256 of the URL>.crl" = "# <url>\n" + PEM.
  DIR* d = ::opendir(dir.c_str());
  if (!d) return InternalError(StrCat("opendir ", dir, ": ", std::strerror(errno)));
  int64_t now = Now();
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name.size() != 68 || name.compare(64, 4, ".crl") != 0) continue;
    Result<std::string> data = base::ReadFile(StrCat(dir, "/", name), c->options_.limits.max_bytes + 4096);
    if (!data.ok() || data->rfind("# ", 0) != 0) continue;
    size_t nl = data->find('\n');
    if (nl == std::string::npos) continue;
    std::string url = data->substr(2, nl - 2);
    Result<std::vector<CrlPtr>> crls = ParseCrls(std::string_view(*data).substr(nl + 1), 1);
    if (!crls.ok() || c->FileOf(url) != StrCat(dir, "/", name) || c->slots_.size() >= kMaxUrls) continue;
    Slot& s = c->slots_[url];
    s.entry.url = url;
    s.crl = crls->front();
    s.entry.next_update = UnixTime(X509_CRL_get0_nextUpdate(s.crl.get()));
    s.entry.fetched_at = now;
    s.issuers.push_back(NameDer(X509_CRL_get_issuer(s.crl.get())));
  }
  ::closedir(d);
  return c;
}

CrlCache::~CrlCache() { Stop(); }

void CrlCache::Attach(X509_STORE* store, Revocation mode) {
  delete static_cast<Attachment*>(X509_STORE_get_ex_data(store, StoreIndex()));
  X509_STORE_set_ex_data(store, StoreIndex(), new Attachment{this, mode});   // freed with the store
  X509_STORE_set_lookup_crls(store, LookupCrls);
}

std::string CrlCache::FileOf(const std::string& url) const {
  unsigned char md[32];
  unsigned int n = 0;
  EVP_Digest(url.data(), url.size(), md, &n, EVP_sha256(), nullptr);
  return StrCat(options_.dir, "/", base::HexLower(std::string_view(reinterpret_cast<char*>(md), n)), ".crl");
}

bool CrlCache::Note(const std::string& url, const X509_NAME* issuer) {
  std::string der = NameDer(issuer);
  {
    std::shared_lock<std::shared_mutex> l(mu_);
    auto it = slots_.find(url);
    if (it != slots_.end() && std::find(it->second.issuers.begin(), it->second.issuers.end(), der) != it->second.issuers.end())
      return true;
  }
  bool fresh = false;
  {
    std::unique_lock<std::shared_mutex> l(mu_);
    auto it = slots_.find(url);
    if (it == slots_.end()) {
      if (slots_.size() >= kMaxUrls) return false;
      it = slots_.emplace(url, Slot{}).first;
      it->second.entry.url = url;
      fresh = true;
    }
    auto& issuers = it->second.issuers;
    if (std::find(issuers.begin(), issuers.end(), der) == issuers.end() && issuers.size() < 8) issuers.push_back(der);
  }
  if (fresh) {
    {
      std::lock_guard<std::mutex> w(wake_mu_);
      kick_ = true;
    }
    wake_.notify_one();
  }
  return true;
}

CrlPtr CrlCache::Held(const std::string& url) const {
  std::shared_lock<std::shared_mutex> l(mu_);
  auto it = slots_.find(url);
  return it == slots_.end() ? nullptr : it->second.crl;
}

std::vector<CrlCache::Entry> CrlCache::Entries() const {
  std::shared_lock<std::shared_mutex> l(mu_);
  std::vector<Entry> out;
  for (const auto& [url, s] : slots_) out.push_back(s.entry);
  return out;
}

Status CrlCache::Take(const std::string& url, const std::string& body, int64_t now) {
  Result<std::vector<CrlPtr>> list = ParseCrls(body, 1);
  if (!list.ok()) return Status(list.status().code(), StrCat(url, ": ", list.status().message()));
  CrlPtr crl = list->front();
  if (!X509_CRL_get0_nextUpdate(crl.get())) return InvalidArgumentError(StrCat(url, ": the CRL has no nextUpdate"));
  BIGNUM* number = CrlNumber(crl.get());
  if (!number) return InvalidArgumentError(StrCat(url, ": the CRL has no cRLNumber (RFC 5280 §5.2.3)"));
  std::string issuer = NameDer(X509_CRL_get_issuer(crl.get()));
  std::unique_lock<std::shared_mutex> l(mu_);
  auto it = slots_.find(url);
  if (it == slots_.end()) {
    BN_free(number);
    return NotFoundError(StrCat(url, ": no longer wanted"));
  }
  Slot& s = it->second;
  Status st = OkStatus();
  if (!s.issuers.empty() && std::find(s.issuers.begin(), s.issuers.end(), issuer) == s.issuers.end()) {
    st = InvalidArgumentError(StrCat(url, ": the CRL is issued by another CA than the certificates that point to it"));
  } else if (s.crl) {
    BIGNUM* held = CrlNumber(s.crl.get());
    if (held && BN_cmp(number, held) < 0)
      st = InvalidArgumentError(StrCat(url, ": the CRL is older than the one held (cRLNumber went back)"));
    BN_free(held);
  }
  BN_free(number);
  if (!st.ok()) return st;
  s.crl = crl;
  s.entry.next_update = UnixTime(X509_CRL_get0_nextUpdate(crl.get()));
  s.entry.fetched_at = now;
  s.entry.failures = 0;
  s.entry.last_error.clear();
  l.unlock();
  // Durable copy for the next start (the CRL itself, as fetched, in PEM).
  BIO* b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509_CRL(b, crl.get());
  std::string file = StrCat("# ", url, "\n", base::BioString(b));
  BIO_free(b);
  if (Status w = base::WriteFileDurably(FileOf(url), file); !w.ok())
    base::Log(base::LogLevel::kWarning, "pki", "fetched CRL kept in memory only", {{"url", url}, {"error", w.message()}});
  return OkStatus();
}

CrlCache::OcspAnswer CrlCache::Ocsp(X509* cert, X509* issuer) {
  std::vector<std::string> urls = OcspUrls(cert);
  if (urls.empty() || !issuer) return OcspAnswer::kNone;
  OCSP_CERTID* id = OCSP_cert_to_id(EVP_sha1(), cert, issuer);
  if (!id) return OcspAnswer::kNone;
  unsigned char* der = nullptr;
  int len = i2d_OCSP_CERTID(id, &der);
  OCSP_CERTID_free(id);
  std::string key = len > 0 ? std::string(reinterpret_cast<char*>(der), static_cast<size_t>(len)) : "";
  OPENSSL_free(der);
  if (key.empty()) return OcspAnswer::kNone;
  int64_t now = Now();
  {
    std::shared_lock<std::shared_mutex> l(mu_);
    auto it = ocsp_.find(key);
    if (it != ocsp_.end()) return now < it->second.next_update ? it->second.answer : OcspAnswer::kNone;
  }
  {
    std::unique_lock<std::shared_mutex> l(mu_);
    if (ocsp_.size() >= kMaxUrls || ocsp_.count(key)) return OcspAnswer::kNone;
    OcspSlot& slot = ocsp_[key];
    slot.url = urls.front();
    X509_up_ref(cert);
    X509_up_ref(issuer);
    slot.cert = Own(cert);
    slot.issuer = Own(issuer);
  }
  {
    std::lock_guard<std::mutex> w(wake_mu_);
    kick_ = true;
  }
  wake_.notify_one();
  return OcspAnswer::kNone;
}

Status CrlCache::AskOcsp(OcspSlot& slot, int64_t now) {
  OCSP_REQUEST* req = OCSP_REQUEST_new();
  OCSP_CERTID* id = OCSP_cert_to_id(EVP_sha1(), slot.cert.get(), slot.issuer.get());
  if (!req || !id || !OCSP_request_add0_id(req, id)) {
    OCSP_CERTID_free(id);
    OCSP_REQUEST_free(req);
    return InternalError("cannot build an OCSP request");
  }
  unsigned char* der = nullptr;
  int len = i2d_OCSP_REQUEST(req, &der);
  std::string body(reinterpret_cast<char*>(der), static_cast<size_t>(std::max(len, 0)));
  OPENSSL_free(der);
  FetchLimits limits = options_.limits;
  limits.max_bytes = std::min<size_t>(limits.max_bytes, 1u << 20);   // an OCSP answer is small
  Result<std::string> got = options_.post ? options_.post(slot.url, body, limits)
                                          : Post(slot.url, body, "application/ocsp-request", limits);
  if (!got.ok()) {
    OCSP_REQUEST_free(req);
    return got.status();
  }
  const unsigned char* p = reinterpret_cast<const unsigned char*>(got->data());
  OCSP_RESPONSE* resp = d2i_OCSP_RESPONSE(nullptr, &p, static_cast<long>(got->size()));
  OCSP_BASICRESP* bs = resp && OCSP_response_status(resp) == OCSP_RESPONSE_STATUS_SUCCESSFUL ? OCSP_response_get1_basic(resp) : nullptr;
  Status st = OkStatus();
  if (!resp) st = InvalidArgumentError(StrCat(slot.url, ": not an OCSP response"));
  else if (!bs) st = UnavailableError(StrCat(slot.url, ": OCSP responder answered ", OCSP_response_status_str(OCSP_response_status(resp))));
  if (st.ok()) {
    // Authorized responders (RFC 6960 §4.2.2.2): the issuer, or a certificate it issued for
    // OCSP signing — a store with the issuer as its only anchor decides.
    X509_STORE* only_issuer = X509_STORE_new();
    X509_STORE_add_cert(only_issuer, slot.issuer.get());
    X509_STORE_set_flags(only_issuer, X509_V_FLAG_PARTIAL_CHAIN);
    if (OCSP_basic_verify(bs, nullptr, only_issuer, 0) <= 0)
      st = InvalidArgumentError(StrCat(slot.url, ": the OCSP answer is not signed by the issuer or its delegated responder"));
    X509_STORE_free(only_issuer);
  }
  if (st.ok()) {
    OCSP_CERTID* want = OCSP_cert_to_id(EVP_sha1(), slot.cert.get(), slot.issuer.get());
    int status = -1, reason = 0;
    ASN1_GENERALIZEDTIME *rev = nullptr, *thisupd = nullptr, *nextupd = nullptr;
    if (OCSP_resp_find_status(bs, want, &status, &reason, &rev, &thisupd, &nextupd) != 1)
      st = InvalidArgumentError(StrCat(slot.url, ": the OCSP answer does not name the certificate"));
    else if (OCSP_check_validity(thisupd, nextupd, 300, -1) != 1)
      st = InvalidArgumentError(StrCat(slot.url, ": the OCSP answer is out of date"));
    else {
      slot.answer = status == V_OCSP_CERTSTATUS_GOOD ? OcspAnswer::kGood
                  : status == V_OCSP_CERTSTATUS_REVOKED ? OcspAnswer::kRevoked : OcspAnswer::kUnknown;
      slot.next_update = nextupd ? UnixTime(nextupd) : now + 300;
    }
    OCSP_CERTID_free(want);
  }
  ERR_clear_error();
  OCSP_BASICRESP_free(bs);
  OCSP_RESPONSE_free(resp);
  OCSP_REQUEST_free(req);
  return st;
}

size_t CrlCache::RefreshDue(int64_t now) {
  // OCSP answers first: they are asked for when a certificate is being judged right now.
  std::vector<std::pair<std::string, OcspSlot>> asks;
  {
    std::shared_lock<std::shared_mutex> l(mu_);
    for (const auto& [key, slot] : ocsp_)
      if (slot.next_try <= now && (slot.answer == OcspAnswer::kNone || now >= slot.next_update - 10)) asks.emplace_back(key, slot);
  }
  size_t taken = 0;
  for (auto& [key, slot] : asks) {
    Status st = AskOcsp(slot, now);
    std::unique_lock<std::shared_mutex> l(mu_);
    auto it = ocsp_.find(key);
    if (it == ocsp_.end()) continue;
    if (st.ok()) {
      ++taken;
      it->second.answer = slot.answer;
      it->second.next_update = slot.next_update;
      it->second.failures = 0;
      it->second.last_error.clear();
      it->second.next_try = 0;
      l.unlock();
      base::Log(base::LogLevel::kInfo, "pki", "OCSP answer",
                {{"url", slot.url}, {"status", slot.answer == OcspAnswer::kGood ? "good" : slot.answer == OcspAnswer::kRevoked ? "revoked" : "unknown"},
                 {"next_update", std::to_string(slot.next_update)}});
      continue;
    }
    int failures = ++it->second.failures;
    it->second.last_error = st.message();
    it->second.next_try = now + std::min(options_.retry_min_s << std::min(failures - 1, 20), options_.retry_max_s);
    l.unlock();
    base::Log(base::LogLevel::kWarning, "pki", "OCSP answer not had; the certificate's status is unknown until it is",
              {{"url", slot.url}, {"error", st.message()}, {"failures", std::to_string(failures)}});
  }
  std::vector<std::string> due;
  {
    std::shared_lock<std::shared_mutex> l(mu_);
    for (const auto& [url, s] : slots_) {
      if (s.entry.next_try > now) continue;
      if (!s.crl) {
        due.push_back(url);
        continue;
      }
      int64_t this_update = UnixTime(X509_CRL_get0_lastUpdate(s.crl.get()));
      int64_t early = std::min(options_.max_early_s, std::max<int64_t>(0, (s.entry.next_update - this_update) / 10));
      if (now >= s.entry.next_update - early) due.push_back(url);
    }
  }
  for (const std::string& url : due) {
    Result<std::string> body = options_.fetch(url, options_.limits);
    Status st = body.ok() ? Take(url, *body, now) : body.status();
    std::unique_lock<std::shared_mutex> l(mu_);
    auto it = slots_.find(url);
    if (it == slots_.end()) continue;
    Entry& e = it->second.entry;
    if (st.ok()) {
      ++taken;
      e.next_try = 0;
      const int64_t next_update = e.next_update;
      l.unlock();
      base::Log(base::LogLevel::kInfo, "pki", "CRL fetched", {{"url", url}, {"next_update", std::to_string(next_update)}});
      continue;
    }
    ++e.failures;
    e.last_error = st.message();
    int64_t backoff = options_.retry_min_s << std::min(e.failures - 1, 20);
    e.next_try = now + std::min(backoff, options_.retry_max_s);
    const bool held = it->second.crl != nullptr;
    const int failures = e.failures;
    l.unlock();
    base::Log(base::LogLevel::kWarning, "pki",
              held ? "CRL fetch failed; the CRL held is used until its nextUpdate, then the status of its certificates is unknown"
                   : "CRL fetch failed; the revocation status of its certificates is unknown until it succeeds",
              {{"url", url}, {"error", st.message()}, {"failures", std::to_string(failures)}});
  }
  return taken;
}

void CrlCache::Start() {
  thread_ = std::thread([this] { Run(); });
  pthread_setname_np(thread_.native_handle(), "crlfetch");
}

void CrlCache::Stop() {
  {
    std::lock_guard<std::mutex> l(wake_mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void CrlCache::Run() {
  std::unique_lock<std::mutex> l(wake_mu_);
  while (!stop_) {
    l.unlock();
    RefreshDue(Now());
    l.lock();
    wake_.wait_for(l, std::chrono::seconds(1), [&] { return stop_ || kick_; });
    kick_ = false;
  }
}

}  // namespace mailseal::pki
