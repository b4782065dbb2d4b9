// discovery.h — finding a partner's certificate when mail waits for it (SEE-2.8b, issue #15).
//
// When mail for a partner domain is held because no usable DCA certificate is known (none,
// expired, revoked, from a CA not trusted), the crypto worker tells Discovery (Wanted); its own
// thread ("certdisc") asks the CAs' directories — per trusted CA an LDAP server, base, filter
// template and attribute (default base "c=NZ", filter
// "(mail=domain-confidentiality-authority@%s)", attribute "userCertificate;binary") — and hands
// what it finds to the certificate store (CertStore::Learn: only a certificate that validates
// now for S/MIME encryption, issued by the directory's CA, naming the domain's authority
// address per RFC 3183 and strong enough is taken; a pinned one is never replaced). When the
// store then holds a valid certificate for the domain — found here, learnt from the partner's
// signed mail, or pinned by a reload — every copy held for it is released (queued again and
// decided anew) through the `release` callback.
//
// With `smimea` set, the domain's DNSSEC-validated SMIMEA records (RFC 8162) for
// domain-confidentiality-authority@<domain> are asked too; a certificate found there goes
// through the same checks.
//
// A domain is looked up at most once per `retry_ms` while mail waits for it; a failed lookup
// (directory down, garbage answer) leaves the mail held, its reason saying what the lookup
// came to; the administrator's notice about held mail is digested by the queue's notifier (one
// notice, not one per message). Wanted domains are bounded (`max_wanted`).
//
// SECURITY: directory answers are outside input (pki/ldap.h bounds them); nothing is believed
// that does not validate against the managed trust list. Thread safe; Wanted and Found never
// block a mail thread.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dataplane/pki/ldap.h"
#include "dataplane/pki/smimea.h"
#include "dataplane/smime/cert_store.h"

namespace mailseal::smime {

struct Directory {
  pki::LdapSearch query;   // server, base, filter template ("%s" = the domain), attribute
  X509Ref ca;              // the trusted CA whose certificates it publishes; null: any on the trust list
};

struct DiscoveryOptions {
  std::vector<Directory> directories;
  // DNSSEC-validated SMIMEA records (RFC 8162) of the domain's authority address; null: not asked.
  std::unique_ptr<pki::SmimeaResolver> smimea;
  int64_t retry_ms = 300000;
  // The SEE-2.8b fallback: a signed request to domain-certificate-request@<domain> when the
  // sources give nothing usable, at most once per `request_interval_ms` per domain. The
  // request is queued by `send_request` (set with SetRequester once the queue exists).
  bool send_requests = false;
  // The SEEMAIL list read from a directory every `seemail_refresh_ms` (server empty: not read);
  // each read that succeeds goes to the sink set with SetSeemailSink.
  pki::LdapSearch seemail_query;
  int64_t seemail_refresh_ms = 3600000;
  int64_t request_interval_ms = 3600000;
  size_t max_wanted = 1024;
  pki::LdapLimits limits;
};

class Discovery : public CertWatcher {
 public:
  // release(domain): release every copy held for want of `domain`'s certificate; returns how
  // many went.
  using Release = std::function<size_t(const std::string& domain)>;
  Discovery(CertStore* store, DiscoveryOptions o, Release release);
  ~Discovery() override;
  Discovery(const Discovery&) = delete;
  Discovery& operator=(const Discovery&) = delete;

  void Start();
  void Stop();
  // SetRequester: how a certificate request is queued (mailseald: a message from
  // domain-certificate-request@<our domain>, signed on its way out). Before Start.
  void SetRequester(std::function<Status(const std::string& domain)> send_request) { send_request_ = std::move(send_request); }
  // SetSeemailSink: who gets the SEEMAIL list each time it is read (domains and addresses,
  // lower case, checked). Before Start.
  void SetSeemailSink(std::function<void(std::vector<std::string>)> sink) { seemail_sink_ = std::move(sink); }
  // ReadSeemailList: the list from the directory now (bounded: 10,000 entries); values that are
  // neither a domain nor an address are skipped and counted in `skipped`.
  Result<std::vector<std::string>> ReadSeemailList(size_t* skipped = nullptr);

  void Wanted(const std::string& domain) override;
  void Found(const std::string& domain) override;
  std::string LookupState(const std::string& domain) const override;

  // Lookup (tests, `mailsealctl certs refresh`): ask the directories for `domain` now, on the
  // calling thread; returns what it came to.
  std::string Lookup(const std::string& domain);

  struct Entry {
    std::string domain;
    std::string state;          // LookupState
    int64_t last_try_unix_ms = 0;
    bool found = false;
  };
  std::vector<Entry> Entries() const;

 private:
  struct Want {
    int64_t last_try_ms = -1;   // steady clock; -1: never tried
    int64_t last_try_unix_ms = 0;
    int64_t wanted_ms = 0;      // last time mail waited for it
    std::string state;
    bool found = false;
    bool queued = false;
    int64_t last_request_ms = -1;   // steady clock; -1: no request sent
  };
  void Run();
  bool HasSources() const { return !o_.directories.empty() || o_.smimea || o_.send_requests; }
  // RequestIfDue: the fallback request for `domain` when none went within the interval; what
  // was done, for the state text ("" nothing).
  std::string RequestIfDue(const std::string& domain);
  std::string LookupLocked(const std::string& domain, std::unique_lock<std::mutex>& l);
  void ReleaseIfUsable(const std::string& domain);

  CertStore* store_;
  DiscoveryOptions o_;
  Release release_;
  std::function<Status(const std::string& domain)> send_request_;
  std::function<void(std::vector<std::string>)> seemail_sink_;
  int64_t next_seemail_ms_ = 0;
  mutable std::mutex mu_;
  std::mutex lookup_mu_;   // one lookup at a time (the SMIMEA resolver is single-threaded)
  std::condition_variable cv_;
  std::map<std::string, Want> wanted_;
  std::deque<std::string> lookups_, releases_;
  bool stop_ = false;
  int64_t last_recheck_ms_ = 0;
  std::thread thread_;
};

}  // namespace mailseal::smime
