// crl_cache.h — CRLs fetched from the certificates' own distribution points, cached on disk,
// refreshed before they expire by a background thread, and offered to the validator (issue
// #15, SEE-2.8: "Gateways MUST always verify whether the certificate is valid").
//
// How it fits: Attach() hooks the cache into an OpenSSL store (its CRL lookup), so every
// validation through that store (pki::Validate; the S/MIME send and receive paths) sees the
// held CRLs and, for a certificate naming a distribution point, registers the URL. The mail
// path never waits for the network: a URL seen for the first time is fetched by the refresher
// thread, and until then the certificate's revocation status is unknown (SEE-2.8 table). A
// held CRL is fetched again before its nextUpdate (the last tenth of its validity, at most an
// hour early); when that fails the old one stays until it expires — then the status is unknown.
//
// SECURITY: URLs and CRL bodies are outside input. Each URL's body is bounded
// (FetchLimits::max_bytes), at most kMaxUrls URLs are tracked, a CRL is kept only when it
// parses, names the issuer the certificate that pointed at it expects (scope: the
// certificate's issuer or the distribution point's cRLIssuer), has nextUpdate and cRLNumber,
// and its cRLNumber is not below the one held (no rollback to an older list). Its signature is
// checked by the validator each time it is used (against the issuer's key on the path). Files
// in `dir` are written durably (temp, fsync, rename) and read back bounded.
//
// OCSP answers are asked for the same way (by POST, RFC 6960 A.1), kept in memory until their
// nextUpdate (five minutes when they name none), and believed only when signed by the issuer
// or by a responder the issuer delegated (id-kp-OCSPSigning), within five minutes' clock skew.
//
// STANDARDS: RFC 5280 §5 (CRL profile), §5.2.3 (cRLNumber), §6.3 (CRL validation); RFC 6960
// §2.2, §4.2.2.2 (authorized responders), §4.2.2.1 (time); RFC 5019 (SHA-1 CertIDs).
#pragma once

#include <openssl/x509.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "dataplane/base/status.h"
#include "dataplane/pki/fetch.h"
#include "dataplane/pki/validator.h"

namespace mailseal::pki {

// Revocation: what a store's validations ask for.
enum class Revocation {
  kWhereNamed,   // a certificate that names a CRL distribution point must have a current CRL
  kRequired,     // every certificate of the path must have one (crl_files configured)
};

class CrlCache {
 public:
  static constexpr size_t kMaxUrls = 1024;
  struct Options {
    std::string dir;                  // where fetched CRLs are kept (created 0700)
    FetchLimits limits;
    int64_t retry_min_s = 5;          // first retry after a failed fetch; doubles to retry_max_s
    int64_t retry_max_s = 600;
    int64_t max_early_s = 3600;       // refresh at most this long before nextUpdate
    // fetch: how a URL is fetched (tests may count calls); default pki::Fetch.
    std::function<Result<std::string>(const std::string&, const FetchLimits&)> fetch;
    // post: how an OCSP request is sent (url, DER request); default pki::Post.
    std::function<Result<std::string>(const std::string&, const std::string&, const FetchLimits&)> post;
  };
  // Of `store`, when one is attached (the validator's revocation callback uses it).
  static CrlCache* Of(X509_STORE* store);
  static Result<std::unique_ptr<CrlCache>> Open(Options options);
  ~CrlCache();

  // Attach: validations through `store` consult this cache (and the store's own CRLs);
  // `mode` says which certificates must have a CRL. The cache must outlive the store's use.
  void Attach(X509_STORE* store, Revocation mode);

  // Start / Stop the refresher thread.
  void Start();
  void Stop();
  // RefreshDue fetches every URL that is due now (the refresher calls it; tests call it
  // directly). Returns how many CRLs were taken in.
  size_t RefreshDue(int64_t now);

  // Note registers `url` as wanted for certificates issued by `issuer` (called from the
  // store's CRL lookup). Returns false when kMaxUrls are tracked already.
  bool Note(const std::string& url, const X509_NAME* issuer);
  // Held: the CRL held for `url` (null when none).
  CrlPtr Held(const std::string& url) const;

  // OCSP (RFC 6960), for a certificate that names a responder when no current CRL is held:
  // the cached answer when it is current; the certificate is noted for the refresher
  // otherwise (kNone until it has asked). Never waits for the network.
  enum class OcspAnswer { kNone, kGood, kRevoked, kUnknown };
  OcspAnswer Ocsp(X509* cert, X509* issuer);

  struct Entry {
    std::string url;
    int64_t next_update = 0;   // of the held CRL (0: none held)
    int64_t fetched_at = 0;
    int64_t next_try = 0;
    std::string last_error;
    int failures = 0;
  };
  std::vector<Entry> Entries() const;

 private:
  explicit CrlCache(Options o) : options_(std::move(o)) {}
  struct Slot {
    Entry entry;
    CrlPtr crl;
    std::vector<std::string> issuers;   // DER of the X509_NAMEs whose CRL this URL may hold
  };
  struct OcspSlot {
    std::string url;
    X509Ptr cert, issuer;
    OcspAnswer answer = OcspAnswer::kNone;
    int64_t next_update = 0, next_try = 0;
    int failures = 0;
    std::string last_error;
  };
  Status AskOcsp(OcspSlot& slot, int64_t now);   // slot copied out of the map (no lock held)
  std::string FileOf(const std::string& url) const;
  Status Take(const std::string& url, const std::string& body, int64_t now);
  void Run();

  Options options_;
  mutable std::shared_mutex mu_;
  std::map<std::string, Slot> slots_;
  std::map<std::string, OcspSlot> ocsp_;   // by the DER of the OCSP CertID
  std::mutex wake_mu_;
  std::condition_variable wake_;
  bool stop_ = false;
  bool kick_ = false;   // a new URL waits: fetch without waiting for the next second
  std::thread thread_;
};

// RevocationOf: the mode Attach() set on `store` (kWhereNamed when none attached).
Revocation RevocationOf(X509_STORE* store, bool* attached);

}  // namespace mailseal::pki
