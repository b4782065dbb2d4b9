// cert_store.h — partner domain certificates and what each partner can read (SEE-2.8b, 2.10).
//
// Holds the managed trust list (SEE-2.7) and CRLs, the DCA certificates of partner domains
// (pinned by the operator — config or API — or learnt: from their verified signed mail, the
// CA's directory, SMIMEA), their DSA certificates (to verify mail that arrives without
// certificates), and each domain's cached SMIMECapabilities (SEE-2.4). Per domain and kind it
// keeps the current certificate, up to two old ones (a DSA certificate replaced while mail it
// signed is in transit still verifies that mail) and the next one (issued, valid from a
// future date: it takes over by itself when its time comes, so a partner's planned renewal
// needs nobody). Entries persist in a directory, one file per domain, kind and slot
// (<domain>.<kind>.pem, .old.pem, .next.pem; .pin marks an API pin), written atomically
// (temp file, fsync, rename).
//
// SECURITY: only certificates that chain to the trust list for the right purpose and carry the
// RFC 3183 authority name of the learning domain are harvested, and only from messages whose
// signature verified (the caller's duty); a pinned certificate is never replaced by a
// harvested one. Domain names are checked before they become file names.
// Thread safe: workers look up and learn concurrently.
//
// STANDARDS: RFC 5280 (path validation, CRLs), RFC 3183 §4 (authority names), RFC 8551 §2.5.2
// (SMIMECapabilities).
#pragma once

#include <openssl/x509.h>

#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <memory>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "dataplane/base/status.h"
#include "dataplane/base/strings.h"
#include "dataplane/pki/validator.h"
#include "dataplane/smime/seal.h"

namespace mailseal::smime {

// CertWatcher: told when mail waits for a partner domain's certificate and when one turns up
// (smime/discovery.h looks it up in the CAs' directories and releases the held mail). Called
// on crypto workers and the control thread: never blocks.
class CertWatcher {
 public:
  virtual ~CertWatcher() = default;
  // Wanted: mail for `domain` was just held for want of a usable certificate.
  virtual void Wanted(const std::string& domain) = 0;
  // Found: a certificate for `domain` was learnt, discovered or pinned.
  virtual void Found(const std::string& domain) = 0;
  // LookupState: what looking for `domain`'s certificate has come to, for the hold reason
  // ("looked up in ldap://… at …: none there"); empty when nobody looks.
  virtual std::string LookupState(const std::string& domain) const = 0;
};

class CertStore {
 public:
  // Open loads the trust list (PEM bundle), CRLs (PEM; any given turns revocation checking on)
  // and the harvested entries in `dir` (created 0700 if missing).
  // `create` false (config checks): a missing directory is not made, just treated as empty.
  static Result<std::unique_ptr<CertStore>> Open(const std::string& dir, const std::string& trust_file,
                                                  const std::vector<std::string>& crl_files, bool create = true);
  ~CertStore();

  // trust: the trust list in force (SEE-2.7); hold the pointer for the length of a validation —
  // a reload swaps in a new one and the old one lives until its last user lets go.
  std::shared_ptr<const pki::TrustList> trust() const { return trust_.load(); }
  // LoadTrust builds a trust list from a PEM/DER bundle and CRL files (every anchor a
  // conforming CA certificate, every CRL numbered), as Open does; nothing changes here.
  static Result<std::shared_ptr<pki::TrustList>> LoadTrust(const std::string& trust_file,
                                                           const std::vector<std::string>& crl_files);
  // SetTrust puts a new trust list in force (SIGHUP, issue #15) and forgets every cached check.
  void SetTrust(std::shared_ptr<const pki::TrustList> trust);
  // Pin sets a partner's DCA certificate from the operator's config.
  Status Pin(const std::string& domain, const std::string& pem_file);
  // Offer: certificates discovered for `domain` (a CA's directory, SMIMEA, an answer to our
  // request; `source` names it). When the approval rule (SetApprovalRule) says the domain's
  // discovered certificates need an administrator, a qualifying DCA is kept aside as
  // "pending" (not used) until Approve; otherwise it is Learn. Returns what changed.
  std::string Offer(const std::string& domain, const std::vector<X509Ref>& certs, const std::string& source);
  // SetApprovalRule: whether discovered certificates for a domain wait for approval (SEE-2.8b:
  // "discovery can be automatic or need an administrator's approval"). Null: automatic.
  void SetApprovalRule(std::function<bool(const std::string& domain)> rule);
  // Approve (management API): the pending DCA of `domain` is checked again and taken (then
  // released mail goes). NotFound when none is pending.
  Result<std::string> Approve(const std::string& domain);
  // Pending: the certificate waiting for approval for `domain`, and where it came from.
  X509Ref Pending(const std::string& domain, std::string* source = nullptr) const;
  // Add (management API): a partner certificate given by an operator — DCA or DSA by its RFC 3183
  // name, valid now (or, unpinned, from a future date: the next one). `pin`: a DCA that
  // learning never replaces, kept across restarts. Returns what changed; InvalidArgument with
  // the reason when it does not qualify.
  Result<std::string> Add(const std::string& domain, X509* cert, bool pin);
  // Remove (management API): forget every certificate of `kind` ("dca" or "dsa") for `domain`
  // (current, old, next; on disk too). A certificate pinned in the configuration is not
  // removed here (FailedPrecondition); NotFound when there is nothing.
  Status Remove(const std::string& domain, const std::string& kind);
  // PromoteDue: next certificates whose time has come become current (persisted); returns the
  // domains whose DCA changed (held mail may go). Called periodically (discovery's thread).
  std::vector<std::string> PromoteDue();
  // Dca: the DCA certificate for a recipient domain — the domain's own, or its nearest
  // ancestor's (RFC 3183: a domain certificate covers sub-domains). Null when none.
  X509Ref Dca(std::string_view domain, std::string* covering_domain = nullptr) const;
  std::vector<std::string> Capabilities(std::string_view domain) const;
  // KnownSigners: DSA certificates for messages that arrive without one.
  std::vector<X509Ref> KnownSigners() const;
  // Learn takes what a verified message from `domain` (or its CA's directory) teaches: its DCA
  // and DSA certificates (those among `certs` that qualify) and its capabilities. A valid
  // certificate held is not replaced by one issued before it (an old one in transit); an
  // expired, revoked or otherwise unusable one is. Returns what changed, for the log; a new DCA
  // certificate is reported to the watcher (held mail is released).
  std::string Learn(const std::string& domain, const std::vector<X509Ref>& certs,
                    const std::vector<std::string>& capabilities);
  // SetWatcher: who is told of wanted and found certificates (not owned; null: nobody).
  void SetWatcher(CertWatcher* w) { watcher_.store(w); }
  CertWatcher* watcher() const { return watcher_.load(); }
  // Wanted: mail for `domain` is held for want of its certificate; returns what looking for it
  // has come to so far (for the hold reason), or "".
  std::string Wanted(const std::string& domain) const;
  // Check: a certificate's standing for `purpose` (X509_PURPOSE_SMIME_ENCRYPT for a DCA).
  // Results are cached for a minute per (certificate, purpose): a path check costs more than
  // the ECDSA signature of a 4 KiB message (tools/bench/smime). "Status unknown" is not cached
  // (it ends as soon as the CRL or OCSP answer arrives).
  std::pair<CertStatus, std::string> Check(X509* cert, int purpose) const;

  // Listed: one partner certificate the store holds (for the management API).
  struct Listed {
    std::string domain;
    std::string kind;     // "dca" or "dsa"
    std::string slot;     // "current", "old", "next" or "pending" (discovered, awaiting approval)
    bool pinned = false;  // pinned by an operator (configuration or API); else learnt
    bool pinned_by_config = false;
    X509Ref cert;
  };
  std::vector<Listed> List() const;

 private:
  CertStore() = default;
  mailseal::Status Persist(const std::string& name, const std::string& data) const;

  std::string dir_;
  std::atomic<CertWatcher*> watcher_{nullptr};
  std::atomic<std::shared_ptr<const pki::TrustList>> trust_;
  mutable std::shared_mutex mu_;
  struct Slots {
    X509Ref current;
    std::vector<X509Ref> old;   // newest first, at most kMaxOld
    X509Ref next;               // not valid yet
    X509Ref pending;            // discovered, waiting for an administrator's approval
    std::string pending_source;
    bool pinned = false;
    bool pinned_by_config = false;
  };
  static constexpr size_t kMaxOld = 2;
  using Table = std::map<std::string, Slots>;
  // Install (mu_ held): `c` becomes current (the current one moves to old) or next.
  void InstallLocked(Slots& s, X509Ref c, bool as_next);
  void PersistSlots(const std::string& domain, const char* kind, const Slots& s) const;
  std::string LearnOne(const std::string& domain, X509Ref c, const char* authority, int purpose, Table* table,
                       const char* kind, bool pin, std::string* refusal, const std::string* pending_source = nullptr);
  std::function<bool(const std::string&)> approval_rule_;   // set before use (start-up)
  Table dca_, dsa_;
  std::map<std::string, std::vector<std::string>> caps_;
  struct Checked {
    CertStatus status;
    std::string detail;
    int64_t at_s;
  };
  mutable std::mutex check_mu_;
  mutable std::map<std::string, Checked> checked_;   // key: purpose + SHA-1 of the certificate
};

using base::ValidDomainName;

}  // namespace mailseal::smime
