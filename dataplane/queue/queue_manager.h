// queue_manager.h — the queue manager: schedules acknowledged mail through the crypto stage
// to delivery agents, retries with exponential backoff, and bounces what cannot be delivered.
//
// Threads: one manager thread owns every message's delivery state and does all spool state
// changes; delivery agents (threads, like Postfix's smtp(8) processes) deliver one job at a
// time and hand results back; the crypto stage's workers are fed over SPSC rings by the
// manager thread alone. Shared queues between them are guarded by one mutex (control path).
//
// SECURITY: spool files are re-validated on recovery; a bad one goes to corrupt/. A message
// leaves the spool only after every recipient is delivered or bounced (or, with NOTIFY=NEVER,
// failed), so nothing acknowledged is lost.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "dataplane/crypto/crypto_stage.h"
#include "dataplane/queue/dsn.h"
#include "dataplane/queue/notifier.h"
#include "dataplane/tls/report.h"
#include "dataplane/io/transport.h"
#include "dataplane/queue/spool.h"
#include "dataplane/smtp/reply.h"
#include "mailseal/v1/config.pb.h"

namespace mailseal::queue {

struct DeliveryJob {
  std::shared_ptr<const SpoolMessage> msg;
  std::string path;                 // spool file to read the body from
  std::string destination;          // next-hop key: "[relay]" or the recipient domain
  std::vector<uint32_t> rcpts;      // recipient indices
  bool require_tls = false;         // a recipient's policy rule says TLS or nothing
};

struct RecipientResult {
  uint32_t index = 0;
  smtp::Reply reply;
};

struct DeliveryResult {
  std::string queue_id;
  std::string destination;
  std::vector<RecipientResult> results;
  std::string remote_mta;           // "host [ip]:port" that answered, if any
  bool spool_corrupt = false;       // the body failed its CRC: move the file to corrupt/
  bool peer_dsn = false;            // the next hop took NOTIFY= (RFC 3461): it reports success itself
};

// MailEvent: one mail event for the audit trail. `action` is one of the fixed names the code
// uses ("mail.accepted", "mail.sealed", ..., crypto::TreatmentEvent) — never taken from free
// text; `detail` is for people (identifiers and addresses only, never content).
struct MailEvent {
  const char* action = "";
  std::string queue_id;
  std::string detail;
  uint64_t policy_version = 0;   // of the decision the event carries out (0: none)
};

struct QueueOptions {
  std::string hostname;
  // network: the back end deliveries connect through (required when agents run).
  io::Backend* network = nullptr;
  mailseal::v1::Delivery delivery;
  uint32_t max_messages = 10000;
  uint32_t crypto_workers = 2;
  crypto::ProcessorFactory processor;   // what crypto workers do; null: pass everything on
  // crypto_rings: where the crypto stage's rings come from (the DPDK back end: rte_ring),
  // called by Start(); null: SpscRing.
  crypto::RingFactory crypto_rings;
  std::vector<int> crypto_cpus;   // crypto::CryptoStage::SetCpus
  // on_event: mail events for the audit trail ("mail.accepted", "mail.sealed", "mail.opened",
  // "mail.held", "mail.delivered", "mail.bounced"), called on the manager thread; must not
  // block for long (the recorder batches). Identifiers and addresses only, never content.
  std::function<void(const MailEvent& event)> on_event;
  // notifications: the current settings for notices about held mail (issue #6; read at every
  // queue scan, so a policy change applies at once); null: nobody is told.
  std::function<NotifierOptions()> notifications;
  // hold_expiry_ms: held mail older than this goes back to its sender (DSN) and is removed;
  // read at every hold scan (once a minute). Null or 0: kept until released or deleted.
  std::function<int64_t()> hold_expiry_ms;
  // requires_tls: whether the policy in force says mail to this recipient goes only over TLS
  // (a domain rule's require_tls); null: never required.
  std::function<bool(const std::string& recipient)> requires_tls;
  // held_for_certificate: a copy held for want of `domain`'s certificate is durable in hold/
  // (called on the manager thread). Certificate discovery may have found the certificate while
  // the copy was being written and released nothing then: it looks again (issue #15).
  std::function<void(const std::string& domain)> held_for_certificate;
};

struct QueueStats {
  uint64_t received = 0, delivered = 0, bounced = 0, deferrals = 0, dsns = 0, corrupt = 0;
  size_t in_queue = 0, deferred = 0;
  // crypto_jobs: jobs the workers finished; crypto_jobs_in_memory: of them, those that carried
  // their message (no spool read).
  uint64_t crypto_jobs = 0, crypto_jobs_in_memory = 0;
};

class DeliveryAgent;

class QueueManager {
 public:
  QueueManager(Spool* spool, QueueOptions options);
  ~QueueManager();

  // Recover scans the spool before Start(): incoming/ (complete files go on, incomplete ones
  // were never acknowledged and are removed), active/ and deferred/.
  [[nodiscard]] Status Recover();
  // Start: the crypto stage (its rings made here), the manager and the delivery agents.
  [[nodiscard]] Status Start();
  // CryptoRings: the kind of the crypto stage's rings ("spsc", "rte_ring"), after Start().
  const char* CryptoRings() const { return crypto_->ring_kind(); }
  // Stop ends the agents after their current job and joins every thread. Mail stays queued.
  void Stop();

  // Submit (any thread): a message just published to active/.
  void Submit(SpoolMessage msg);
  // Released (any thread): held copy `held_id` left hold/ (released by an operator, or because
  // the certificate it waited for turned up): a notice not yet sent no longer reports it.
  void Released(const std::string& held_id);
  // ReleaseCertificateHolds (any thread but the manager's; reads hold/): every copy held for
  // want of a certificate of `domain` or a sub-domain (its hold_cert_domain) is queued again
  // as a fresh message and decided anew; each release is an audited "mail.released" event.
  // Returns how many went.
  size_t ReleaseCertificateHolds(const std::string& domain);
  // Accepting: false when the queue holds max_messages (SMTP answers 452 4.3.1).
  bool Accepting() const { return held_.load(std::memory_order_relaxed) < options_.max_messages; }
  QueueStats Stats() const;
  // SetSuspended: while true no delivery starts (mail stays queued) — the security module is
  // down and nothing may leave unprotected (SEE-AG-4).
  void SetSuspended(bool suspended);

  // For agents. TakeJob: `held` is the destination the agent holds a connection slot for
  // ("" when none); taking a job for another destination gives that slot up and occupies one
  // of the new destination (at most per_destination_concurrency connections per destination,
  // busy or cached). ReleaseSlot: the agent closed its connection.
  bool TakeJob(const std::string& held, int wait_ms, DeliveryJob* job);
  void ReleaseSlot(const std::string& destination);
  void PostResult(DeliveryResult result);
  bool stopping() const { return stop_.load(std::memory_order_acquire); }

  // Recall (any thread; DE-6): withdraws queued message `id`: its undelivered recipients are
  // recorded as failed with `reason` and no DSN, and the file leaves the spool. The future
  // gives the withdrawn addresses; NOT_FOUND when it is not queued, FAILED_PRECONDITION while
  // an agent is delivering it or a crypto worker holds it (try again).
  std::future<Result<std::vector<std::string>>> Recall(const std::string& id, const std::string& reason);
  const QueueOptions& options() const { return options_; }
  // tls_reporter: where delivery agents record TLS sessions (RFC 8460); null when not configured.
  tls::Reporter* tls_reporter() const { return tls_reporter_.get(); }

 private:
  enum RcptState : uint8_t { kPending, kDelivered, kFailed, kTransferred };
  struct FailedInfo {
    std::string status, diagnostic, remote_mta;
    bool content_refused = false;   // by a content scanner: the DSN quotes the header only
  };
  struct Entry {
    std::shared_ptr<const SpoolMessage> msg;
    std::shared_ptr<const std::string> body;   // kept from the writer until its job takes it
    SpoolState state = SpoolState::kActive;
    std::vector<RcptState> rcpt;
    std::vector<bool> recorded;          // a STATUS record (and DSN) already covers it
    std::vector<FailedInfo> failures;
    uint32_t attempts = 0;
    int64_t next_attempt_ms = 0;
    int outstanding = 0;
    bool sealed = false;                 // the crypto stage is done with it
    int64_t crypto_retry_ms = 0;         // the crypto stage deferred it: resubmit then
    bool needs_finalize = false;         // a DSN could not be queued: run Finalize again
    std::string last_temp;               // last temporary failure, for logs
    bool recalled = false;               // withdrawn by an operator: no DSN
    bool delay_notified = false;         // the sender was told of the delay (once, SEE-2.8c)
    std::vector<FailedRecipient> relayed;
    int64_t expires_ms = -1;             // its Expires:/Expiry-Date: (DE-6); -1 not read yet, 0 none   // NOTIFY=SUCCESS to a next hop without DSN: "relayed" DSN due
  };
  struct RecallRequest {
    std::string id, reason;
    std::promise<Result<std::vector<std::string>>> done;
  };

  void Run();
  void Wake();
  void Admit(SpoolMessage msg, SpoolState state, int64_t next_attempt_ms, uint32_t attempts);
  bool DelayNoticeDue(const Entry& e, int64_t now) const;
  bool SendDelayNotice(const std::string& id, int64_t now);
  void FinishDeferral(const std::string& id, int64_t now, std::vector<mailseal::v1::SpoolStatus> records,
                      mailseal::v1::SpoolStatus d);
  void PumpCrypto();
  // SyncCopies makes a batch of completions' copies durable (one syncfs of the spool: the
  // workers wrote them unsynced) before any of them is relied on.
  void SyncCopies(const std::vector<crypto::Completion>& done);
  void ApplyCompletion(const crypto::Completion& c, int64_t now);
  // Transfer records that `rcpts` of `id` are carried on by the copy `to` (durably).
  // Transfer: `rcpts` of `e` now travel in the copy `to`; `record`: also in e's spool file.
  void Transfer(Entry& e, const std::vector<uint32_t>& rcpts, const std::string& to, int64_t now, bool record = true);
  void ReconcileCopies(const std::string& id, const mailseal::v1::SpoolEnvelope& env, int64_t now);
  void Dispatch(Entry& e);
  void Apply(const DeliveryResult& r);
  void Finalize(const std::string& id);
  Result<std::vector<std::string>> DoRecall(const std::string& id, const std::string& reason);
  void RetryDue(int64_t now);
  void ReleaseSlotLocked(const std::string& destination);
  void SendNotices(int64_t now);
  Result<std::string> QueueOwn(const std::string& to, const std::string& text, int64_t now);
  void ExpireHeld(int64_t now);
  void MoveToCorrupt(const std::string& id, SpoolState from, const Status& why);
  std::string PathOf(const Entry& e) const;
  int64_t Backoff(uint32_t attempts) const;

  Spool* spool_;
  QueueOptions options_;
  std::unique_ptr<tls::Reporter> tls_reporter_;
  std::unique_ptr<crypto::CryptoStage> crypto_;
  std::thread thread_;
  std::vector<std::unique_ptr<DeliveryAgent>> agents_;
  std::atomic<bool> stop_{false};
  std::atomic<uint32_t> held_{0};

  // Manager thread only.
  std::unordered_map<std::string, Entry> entries_;
  std::deque<std::string> to_crypto_;
  Notifier notifier_{NotifierOptions{}};
  int64_t next_hold_scan_ms_ = 0;
  int64_t hold_lifetime_seen_ = 0;

  // Shared, under mu_.
  mutable std::mutex mu_;
  std::condition_variable manager_cv_;
  std::condition_variable agents_cv_;
  bool wake_ = false;
  bool suspended_ = false;
  std::deque<SpoolMessage> submitted_;
  std::vector<std::string> released_;   // bounded (100,000): ids for the notifier to forget
  std::deque<DeliveryResult> results_;
  std::deque<std::unique_ptr<RecallRequest>> recalls_;
  std::map<std::string, std::deque<DeliveryJob>> ready_;
  std::map<std::string, uint32_t> conns_;   // connection slots held per destination
  QueueStats stats_;
};

}  // namespace mailseal::queue
