// smime_processor.h — the crypto workers' job: seal and open queued mail (issue #4). Its own
// module (sealing/) above the queue and the crypto stage it plugs into.
//
// Each worker has its own SmimeProcessor, made on its thread: it leases one PKCS#11 session for
// itself and binds the DSA and DCA keys to it (hsm/token_key.h), so workers never share a
// session or OpenSSL key state. Per job it reads the spool file, asks smime::Gateway what to
// do, writes every sealed/opened/held copy as a new spool file (synced, with an id derived
// from the original's, so a retry after a crash finds the copy instead of making a second; the
// queue manager syncs the directory for a batch), and returns the copies, typed, in its
// completion.
//
// SECURITY: token trouble never turns into clear mail or a hold: when a key operation fails
// the session is probed and, if the token is gone, the whole message is deferred (SEE-AG-4).
// The DSA signs only while hsm::CheckMaySign allows it (key age, SEE-2.3).
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <memory>
#include <string>

#include "dataplane/crypto/crypto_stage.h"
#include "dataplane/records/archive.h"
#include "dataplane/pki/crl_cache.h"
#include "dataplane/queue/spool.h"
#include "dataplane/smime/discovery.h"
#include "dataplane/smime/gateway.h"
#include "hsm/keys.h"
#include "hsm/token_manager.h"
#include "mailseal/v1/config.pb.h"

namespace mailseal::sealing {

// SmimeShared: what every worker reads (built once at start-up, immutable but for the store).
struct SmimeShared {
  queue::Spool* spool = nullptr;
  hsm::TokenManager* token = nullptr;
  // CRLs fetched from the certificates' distribution points (issue #15); declared before the
  // store, whose OpenSSL store points at it, so that it outlives it.
  std::unique_ptr<pki::CrlCache> crls;
  std::unique_ptr<smime::CertStore> store;
  // Looks for partner certificates when mail waits for them and releases the held copies
  // (issue #15); declared after the store, which points at it, so that it goes first.
  // release_holds is set by mailseald once the queue exists; StartDiscovery starts the thread.
  std::unique_ptr<smime::Discovery> discovery;
  std::function<size_t(const std::string& domain)> release_holds;
  smime::GatewayPolicy policy;
  smime::X509Ref dsa_cert, dca_cert;
  std::vector<smime::X509Ref> chain;
  std::string dsa_label, dca_label;
  // Whether a worker has logged that the domain keys or certificates are missing on the token
  // (logged once for all workers, and once when they are found).
  mutable std::atomic<bool> keys_missing_reported{false};
  std::vector<std::pair<std::string, smime::X509Ref>> previous_dca;   // (token label, certificate)
  // The compiled policy document (issue #6), replaced by the control thread on every accepted
  // change; each job loads it once.
  std::atomic<std::shared_ptr<const policy::CompiledPolicy>> document{std::make_shared<const policy::CompiledPolicy>()};
  std::unique_ptr<smime::PingLimiter> ping_limiter = std::make_unique<smime::PingLimiter>();
  // The SEEMAIL list read from a directory (smime.seemail_directory), merged into `document`
  // by PublishPolicy; `document_base` is the policy document as compiled, without it.
  std::mutex publish_mu;
  std::shared_ptr<const policy::CompiledPolicy> document_base;
  std::vector<std::string> directory_seemail;
  // Content scanning (DE-15, issue #19): each worker makes its own scanners from this.
  mailseal::v1::Scanning scanning;
  // The e-records archive (DE-21, issue #19): the archive's public key (null: no archive), and
  // each worker appends with a writer of its own. A message is archived before it goes on:
  // a failed append defers it (never delivered without its record).
  std::shared_ptr<EVP_PKEY> archive_key;
  std::string archive_dir, archive_run;
  bool archive_inbound = false, archive_outbound = false;
};

// PublishPolicy puts a compiled policy document in force, with the SEEMAIL list read from the
// directory added (an entry of the document itself wins). SetDirectorySeemail replaces that
// list and publishes again. Both any thread.
void PublishPolicy(SmimeShared* shared, std::shared_ptr<const policy::CompiledPolicy> compiled);
void SetDirectorySeemail(SmimeShared* shared, std::vector<std::string> list);

// LoadSmime builds the shared part from the config, refusing what cannot work (missing files,
// certificates that are not ours); errors name the field.
// `check_only` (mailseald --check-config) touches nothing on disk.
Result<std::unique_ptr<SmimeShared>> LoadSmime(const mailseal::v1::Config& cfg, queue::Spool* spool,
                                               hsm::TokenManager* token, bool check_only = false);

// ReloadCertificates puts the configuration's trust list, CRL files and pinned partner
// certificates in force without a restart (SIGHUP, issue #15). Built aside and checked as at
// start; on an error nothing changes and the reason names the field. A pinned certificate
// replaced in its file is the new pin; one removed from the configuration stays until a restart.
Status ReloadCertificates(SmimeShared* shared, const mailseal::v1::Config& cfg);

// PolicyOnly: the shared part without an smime section (no token, no certificate store): the
// policy document still decides every recipient, and what it says must be signed, sealed or
// held is held — never relayed in clear (issue #12, fail closed). Local mail passes unchanged.
std::unique_ptr<SmimeShared> PolicyOnly(const mailseal::v1::Config& cfg, queue::Spool* spool);

// StartDiscovery: held copies are released through `release` (QueueManager::
// ReleaseCertificateHolds) and the directory thread starts.
void StartDiscovery(SmimeShared* shared, std::function<size_t(const std::string& domain)> release);

crypto::ProcessorFactory SmimeProcessorFactory(const SmimeShared* shared);

// TokenCertificate: the certificate installed on the token beside `pair`
// (KeyService.InstallCertificate), or none.
smime::X509Ref TokenCertificate(hsm::Session& session, const hsm::KeyPair& pair);

// DomainKeysReady: OK when the DSA and DCA pairs are on the token with their certificates (a
// configured file or one installed on the token); otherwise what is missing. For health
// (mailseal.sealing): an appliance before its initialise ceremony is not ready to seal. A
// shared part without smime section or token is ready (policy only).
Status DomainKeysReady(const SmimeShared* shared);

}  // namespace mailseal::sealing
