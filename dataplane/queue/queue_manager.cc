// queue_manager.cc — see queue_manager.h.
#include "dataplane/queue/queue_manager.h"

#include <pthread.h>

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <set>

#include "dataplane/base/clock.h"
#include "dataplane/base/log.h"
#include "dataplane/base/strings.h"
#include "dataplane/queue/delivery_agent.h"
#include "dataplane/queue/dsn.h"
#include "dataplane/smtp/address.h"

namespace mailseal::queue {
using base::Log;
using base::LogLevel;
using mailseal::v1::SpoolStatus;

namespace {
// The queue's clock: a stepped system clock moves neither retry times nor ages (clock.h).
int64_t NowMs() { return base::QueueNowMs(); }
constexpr const char* kRelayDestination = "[relay]";

Status AppendStatuses(const std::string& path, const std::vector<SpoolStatus>& statuses) {
  for (const SpoolStatus& s : statuses) {
    if (Status st = AppendStatus(path, s); !st.ok()) return st;
  }
  return OkStatus();
}
}  // namespace

QueueManager::QueueManager(Spool* spool, QueueOptions options)
    : spool_(spool), options_(std::move(options)) {
  crypto_ = std::make_unique<crypto::CryptoStage>(options_.crypto_workers, 1024, [this] { Wake(); },
                                                  options_.processor);
  if (const std::string& dir = options_.delivery.tls_report_dir(); !dir.empty()) {
    ::mkdir(dir.c_str(), 0750);
    uint32_t period = options_.delivery.tls_report_period_s() ? options_.delivery.tls_report_period_s() : 86400;
    tls_reporter_ = std::make_unique<tls::Reporter>(dir, options_.hostname, StrCat("postmaster@", options_.hostname), period);
  }
}

QueueManager::~QueueManager() { Stop(); }

std::string QueueManager::PathOf(const Entry& e) const { return spool_->PathOf(e.state, e.msg->id); }

int64_t QueueManager::Backoff(uint32_t attempts) const {
  int64_t d = static_cast<int64_t>(options_.delivery.min_backoff_s()) * 1000;
  int64_t cap = static_cast<int64_t>(options_.delivery.max_backoff_s()) * 1000;
  for (uint32_t i = 1; i < attempts && d < cap; ++i) d *= 2;
  return std::min(d, cap);
}

void QueueManager::MoveToCorrupt(const std::string& id, SpoolState from, const Status& why) {
  Status st = spool_->Move(id, from, SpoolState::kCorrupt);
  Log(LogLevel::kError, "qmgr", "corrupt spool file moved to corrupt/",
      {{"qid", id}, {"error", why.message()}, {"move", st.ok() ? "ok" : st.message()}});
  std::lock_guard<std::mutex> l(mu_);
  ++stats_.corrupt;
}

Status QueueManager::Recover() {
  int64_t now = NowMs();
  // incoming/: whatever has a valid END was complete (maybe acknowledged); the rest was not.
  Result<std::vector<std::string>> incoming = spool_->List(SpoolState::kIncoming);
  if (!incoming.ok()) return incoming.status();
  for (const std::string& id : *incoming) {
    std::string path = spool_->PathOf(SpoolState::kIncoming, id);
    Result<SpoolMessage> m = ReadSpoolFile(path);
    if (m.ok() && m->id == id) {
      if (Status st = spool_->Move(id, SpoolState::kIncoming, SpoolState::kActive); !st.ok()) return st;
      Log(LogLevel::kWarning, "qmgr", "recovered complete message from incoming/", {{"qid", id}});
      Admit(std::move(m.value()), SpoolState::kActive, now, 0);
    } else if (!m.ok() && m.status().code() == StatusCode::kUnavailable) {
      // Encrypted under a data key this run does not hold (DE-22): it may be whole and
      // acknowledged, so it is kept for an operator, never deleted.
      MoveToCorrupt(id, SpoolState::kIncoming, m.status());
    } else {
      Log(LogLevel::kWarning, "qmgr", "removed incomplete, never acknowledged message",
          {{"qid", id}, {"reason", m.ok() ? "id mismatch" : m.status().message()}});
      if (Status st = spool_->Remove(id, SpoolState::kIncoming); !st.ok()) return st;
    }
  }
  for (SpoolState state : {SpoolState::kActive, SpoolState::kDeferred}) {
    Result<std::vector<std::string>> ids = spool_->List(state);
    if (!ids.ok()) return ids.status();
    for (const std::string& id : *ids) {
      Result<SpoolMessage> m = ReadSpoolFile(spool_->PathOf(state, id));
      if (!m.ok() || m->id != id) {
        MoveToCorrupt(id, state, m.ok() ? DataLossError("queue id does not match file name") : m.status());
        continue;
      }
      if (m->torn_tail) {   // the message is whole: keep it, cut the tail (a duplicate at worst)
        Status cut = CutTornTail(spool_->PathOf(state, id), *m);
        Log(LogLevel::kWarning, "qmgr", "torn status tail cut off; the message is kept (a recipient may get it twice)",
            {{"qid", id}, {"problem", m->tail_problem}, {"cut", cut.ok() ? "ok" : cut.message()}});
      }
      int64_t next = now;
      uint32_t attempts = 0;
      for (const SpoolStatus& s : m->statuses) {
        if (s.kind() == SpoolStatus::KIND_DEFERRED) {
          attempts = s.attempts();
          // A retry time further ahead than the longest backoff was written before the clock
          // was set back (or is damage): due now, not in a day (issue #13, clock jumps).
          if (state == SpoolState::kDeferred)
            next = std::min<int64_t>(s.next_attempt_unix_ms(),
                                     now + static_cast<int64_t>(options_.delivery.max_backoff_s()) * 1000);
        }
      }
      Admit(std::move(m.value()), state, next, attempts);
    }
  }
  Result<std::vector<std::string>> held = spool_->List(SpoolState::kHold);
  // A crash between a crypto-stage copy being written and its original recording the transfer
  // leaves both: record it now, so the original's recipients are not sealed a second time.
  std::vector<std::pair<std::string, mailseal::v1::SpoolEnvelope>> copies;
  for (const auto& [id, e] : entries_)
    if (!e.msg->envelope.derived_from().empty()) copies.emplace_back(id, e.msg->envelope);
  for (const std::string& id : held.ok() ? *held : std::vector<std::string>{}) {
    Result<SpoolMessage> m = ReadSpoolFile(spool_->PathOf(SpoolState::kHold, id));
    if (m.ok() && !m->envelope.derived_from().empty()) copies.emplace_back(id, m->envelope);
  }
  for (const auto& [id, env] : copies) ReconcileCopies(id, env, now);
  Result<std::vector<std::string>> corrupt = spool_->List(SpoolState::kCorrupt);
  Log(LogLevel::kInfo, "qmgr", "queue recovered",
      {{"messages", std::to_string(entries_.size())},
       {"hold", std::to_string(held.ok() ? held->size() : 0)},
       {"corrupt", std::to_string(corrupt.ok() ? corrupt->size() : 0)}});
  return OkStatus();
}

void QueueManager::Admit(SpoolMessage msg, SpoolState state, int64_t next_attempt_ms,
                         uint32_t attempts) {
  Entry e;
  size_t n = static_cast<size_t>(msg.envelope.recipients_size());
  e.rcpt.assign(n, kPending);
  e.recorded.assign(n, false);
  e.failures.resize(n);
  for (const SpoolStatus& s : msg.statuses) {
    if (s.kind() == SpoolStatus::KIND_DEFERRED && s.delay_notified()) e.delay_notified = true;
    if (s.recipient_index() >= n) continue;
    if (s.kind() == SpoolStatus::KIND_DELIVERED) e.rcpt[s.recipient_index()] = kDelivered;
    else if (s.kind() == SpoolStatus::KIND_FAILED) e.rcpt[s.recipient_index()] = kFailed;
    else if (s.kind() == SpoolStatus::KIND_TRANSFERRED) e.rcpt[s.recipient_index()] = kTransferred;
    else continue;
    e.recorded[s.recipient_index()] = true;
  }
  e.state = state;
  e.attempts = attempts;
  e.next_attempt_ms = next_attempt_ms;
  std::string id = msg.id;
  if (state == SpoolState::kActive) e.body = std::move(msg.retained_body);
  msg.retained_body.reset();
  e.msg = std::make_shared<const SpoolMessage>(std::move(msg));
  entries_[id] = std::move(e);
  held_.store(static_cast<uint32_t>(entries_.size()), std::memory_order_relaxed);
  if (state == SpoolState::kActive) to_crypto_.push_back(id);
}

Status QueueManager::Start() {
  std::string error;
  if (options_.crypto_rings) crypto_->SetRingFactory(options_.crypto_rings);
  crypto_->SetCpus(options_.crypto_cpus);
  if (!crypto_->Start(&error)) return UnavailableError(error);
  thread_ = std::thread([this] { Run(); });
  pthread_setname_np(thread_.native_handle(), "qmgr");
  for (uint32_t i = 0; i < options_.delivery.agents(); ++i) {
    agents_.push_back(std::make_unique<DeliveryAgent>(this, static_cast<int>(i), options_.network));
    agents_.back()->Start();
  }
  return OkStatus();
}

void QueueManager::Stop() {
  if (stop_.exchange(true)) return;
  {
    std::lock_guard<std::mutex> l(mu_);
    wake_ = true;
  }
  manager_cv_.notify_all();
  agents_cv_.notify_all();
  // A delivery in progress may wait minutes for a slow next hop: cut it short. Its message
  // stays queued (a possible duplicate later, never a loss).
  for (auto& a : agents_) a->Abort();
  for (auto& a : agents_) a->Join();
  if (thread_.joinable()) thread_.join();
  crypto_->Stop();
  if (tls_reporter_)   // the period so far is not lost at a stop
    if (Result<size_t> n = tls_reporter_->WriteDue(NowMs() / 1000, /*force=*/true); !n.ok())
      Log(LogLevel::kError, "qmgr", "TLS reports not written", {{"error", n.status().message()}});
  std::lock_guard<std::mutex> l(mu_);
  for (auto& rq : recalls_) rq->done.set_value(UnavailableError("the queue manager stopped"));
  recalls_.clear();
}

void QueueManager::Wake() {
  {
    std::lock_guard<std::mutex> l(mu_);
    wake_ = true;
  }
  manager_cv_.notify_one();
}

void QueueManager::Submit(SpoolMessage msg) {
  held_.fetch_add(1, std::memory_order_relaxed);  // counted now; Admit recounts exactly
  {
    std::lock_guard<std::mutex> l(mu_);
    submitted_.push_back(std::move(msg));
    ++stats_.received;
    wake_ = true;
  }
  manager_cv_.notify_one();
}

void QueueManager::Released(const std::string& held_id) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (released_.size() < 100000) released_.push_back(held_id);
    wake_ = true;
  }
  manager_cv_.notify_one();
}

size_t QueueManager::ReleaseCertificateHolds(const std::string& domain_in) {
  std::string domain = base::AsciiLower(domain_in);
  Result<std::vector<std::string>> ids = spool_->List(SpoolState::kHold);
  if (!ids.ok()) {
    Log(LogLevel::kError, "qmgr", "cannot list hold/ to release mail", {{"error", ids.status().message()}});
    return 0;
  }
  size_t n = 0;
  for (const std::string& id : *ids) {
    Result<SpoolMessage> m = ReadSpoolFile(spool_->PathOf(SpoolState::kHold, id));
    if (!m.ok()) continue;
    const std::string& held_for = m->envelope.hold_cert_domain();
    if (!base::InDomain(held_for, domain)) continue;
    Result<SpoolMessage> fresh = RequeueHeld(spool_, id);
    if (!fresh.ok()) {
      Log(LogLevel::kError, "qmgr", "held message not released", {{"qid", id}, {"error", fresh.status().message()}});
      continue;
    }
    std::string new_id = fresh->id;
    Released(id);
    Submit(std::move(fresh.value()));
    ++n;
    Log(LogLevel::kInfo, "qmgr", "released from hold: the certificate it waited for is known",
        {{"qid", id}, {"new_qid", new_id}, {"domain", held_for}});
    if (options_.on_event)
      options_.on_event({"mail.released", id, StrCat("new=", new_id, " a valid certificate for ", domain,
                                                     " is known: queued again and decided anew")});
  }
  return n;
}

void QueueManager::SetSuspended(bool suspended) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (suspended_ == suspended) return;
    suspended_ = suspended;
  }
  Log(suspended ? LogLevel::kWarning : LogLevel::kInfo, "qmgr",
      suspended ? "delivery suspended" : "delivery resumed", {});
  agents_cv_.notify_all();
}

QueueStats QueueManager::Stats() const {
  std::lock_guard<std::mutex> l(mu_);
  QueueStats s = stats_;
  s.crypto_jobs = crypto_->jobs_done();
  s.crypto_jobs_in_memory = crypto_->jobs_in_memory();
  return s;
}

bool QueueManager::TakeJob(const std::string& held, int wait_ms, DeliveryJob* job) {
  // Connections per destination are what the limit counts: an agent that holds a connection
  // (busy or cached idle) to a destination occupies one of its slots until it releases it.
  std::unique_lock<std::mutex> l(mu_);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  const uint32_t limit = options_.delivery.per_destination_concurrency();
  while (!stop_.load(std::memory_order_acquire)) {
    if (!suspended_) {
      auto take = [&](std::map<std::string, std::deque<DeliveryJob>>::iterator it) {
        *job = std::move(it->second.front());
        it->second.pop_front();
        if (it->second.empty()) ready_.erase(it);
        if (job->destination != held) {
          if (!held.empty()) ReleaseSlotLocked(held);
          ++conns_[job->destination];
        }
        return true;
      };
      if (!held.empty()) {
        auto it = ready_.find(held);
        if (it != ready_.end()) return take(it);  // reuse the connection we hold
      }
      for (auto it = ready_.begin(); it != ready_.end(); ++it) {
        if (conns_[it->first] < limit) return take(it);
      }
    }
    if (agents_cv_.wait_until(l, deadline) == std::cv_status::timeout) return false;
  }
  return false;
}

void QueueManager::ReleaseSlotLocked(const std::string& destination) {
  auto c = conns_.find(destination);
  if (c != conns_.end() && --c->second == 0) conns_.erase(c);
}

void QueueManager::ReleaseSlot(const std::string& destination) {
  {
    std::lock_guard<std::mutex> l(mu_);
    ReleaseSlotLocked(destination);
  }
  agents_cv_.notify_all();  // a destination slot is free again
}

void QueueManager::PostResult(DeliveryResult result) {
  {
    std::lock_guard<std::mutex> l(mu_);
    results_.push_back(std::move(result));
    wake_ = true;
  }
  manager_cv_.notify_one();
}

void QueueManager::PumpCrypto() {
  while (!to_crypto_.empty()) {
    const std::string& id = to_crypto_.front();
    auto it = entries_.find(id);
    if (it == entries_.end()) {
      to_crypto_.pop_front();
      continue;
    }
    crypto::Job job{id, PathOf(it->second), nullptr, nullptr};
    if (it->second.body) {   // the message as received, still in memory: no spool read
      job.message = it->second.msg;
      job.body = std::move(it->second.body);
    }
    if (!crypto_->Submit(job)) {   // every ring full: try again after completions
      it->second.body = std::move(job.body);
      break;
    }
    to_crypto_.pop_front();
  }
}

void QueueManager::Transfer(Entry& e, const std::vector<uint32_t>& rcpts, const std::string& to, int64_t now,
                            bool record) {
  std::vector<SpoolStatus> records;
  for (uint32_t i : rcpts) {
    if (i >= e.rcpt.size() || e.rcpt[i] != kPending) continue;
    SpoolStatus s;
    s.set_kind(SpoolStatus::KIND_TRANSFERRED);
    s.set_recipient_index(i);
    s.set_reply(to);
    s.set_at_unix_ms(now);
    records.push_back(std::move(s));
    e.rcpt[i] = kTransferred;
    e.recorded[i] = true;
  }
  if (!record) return;
  if (Status st = AppendStatuses(PathOf(e), records); !st.ok())
    Log(LogLevel::kError, "qmgr", "cannot record transfer to a crypto-stage copy (a restart may duplicate it)",
        {{"qid", e.msg->id}, {"copy", to}, {"error", st.message()}});
}

void QueueManager::ReconcileCopies(const std::string& id, const mailseal::v1::SpoolEnvelope& env, int64_t now) {
  auto it = entries_.find(env.derived_from());
  if (it == entries_.end()) return;
  std::vector<uint32_t> rcpts(env.derived_rcpts().begin(), env.derived_rcpts().end());
  Transfer(it->second, rcpts, id, now);
}

void QueueManager::SyncCopies(const std::vector<crypto::Completion>& done) {
  // The workers write their copies without syncing (Durability::kGroup): one syncfs here makes
  // the batch durable — files and directory entries, active/ and hold/ — before any original
  // is retired or any copy handed on (issue #14: sealed copies committed in groups).
  bool any = false;
  for (const crypto::Completion& c : done)
    for (const crypto::DerivedCopy& d : c.derived) any = any || !d.consumed();
  if (!any) return;
  if (Status st = spool_->SyncAll(); !st.ok()) {
    // LevelDB's rule, as the committer: after a failed sync nothing is relied on; exit and
    // let recovery start from the disk (copies found there are reconciled with originals).
    Log(LogLevel::kError, "qmgr", "sync of the spool's file system failed, exiting", {{"error", st.message()}});
    std::abort();
  }
}

void QueueManager::ApplyCompletion(const crypto::Completion& c, int64_t now) {
  auto it = entries_.find(c.queue_id);
  if (it == entries_.end()) return;
  if (c.verdict == crypto::Verdict::kTempFail) {
    it->second.crypto_retry_ms = now + 5000;
    it->second.last_temp = c.reason;
    Log(LogLevel::kWarning, "crypto", "deferred by the crypto stage", {{"qid", c.queue_id}, {"reason", c.reason}});
    return;
  }
  if (c.verdict == crypto::Verdict::kCorrupt) {
    SpoolState st = it->second.state;
    entries_.erase(it);
    held_.store(static_cast<uint32_t>(entries_.size()), std::memory_order_relaxed);
    MoveToCorrupt(c.queue_id, st, DataLossError(c.reason));
    return;
  }
  it->second.sealed = true;
  std::vector<std::string> admit;
  // When the copies take every recipient still pending, the original is retired at once: the
  // transfer is not written into it (one sync less per sealed message on the manager thread).
  // The copies are durable already and name their original (derived_from), so a crash before
  // the original's removal is reconciled at recovery; the removal precedes any change to the
  // copies in the spool directory's journal, so a delivered copy never leaves its original
  // behind to be sealed again (spool on a journaling file system: ext4, xfs).
  size_t pending = std::count(it->second.rcpt.begin(), it->second.rcpt.end(), kPending);
  size_t taken = 0;
  for (const crypto::DerivedCopy& d : c.derived)
    for (uint32_t i : d.rcpts) taken += !d.rejected() && i < it->second.rcpt.size() && it->second.rcpt[i] == kPending;
  bool record = taken < pending;
  for (const crypto::DerivedCopy& d : c.derived) {
    if (d.rejected()) {   // a content scanner refused it (issue #19): failed, with a DSN
      for (uint32_t i : d.rcpts) {
        if (i >= it->second.rcpt.size() || it->second.rcpt[i] != kPending) continue;
        it->second.rcpt[i] = kFailed;
        it->second.failures[i] = {"5.7.1", StrCat("X-Mailseal; ", d.what), "", true};
      }
      Log(LogLevel::kWarning, "crypto", "rejected", {{"qid", c.queue_id}, {"recipients", std::to_string(d.rcpts.size())}, {"what", d.what}});
      if (options_.on_event) options_.on_event({crypto::TreatmentEvent(d.treatment), c.queue_id, d.what, d.policy_version});
      continue;
    }
    Transfer(it->second, d.rcpts, d.queue_id, now, record);
    Log(d.held() ? LogLevel::kWarning : LogLevel::kInfo, "crypto", d.held() ? "held" : "transformed",
        {{"qid", c.queue_id}, {"copy", d.queue_id}, {"recipients", std::to_string(d.rcpts.size())}, {"what", d.what}});
    if (options_.on_event)
      options_.on_event({crypto::TreatmentEvent(d.treatment), c.queue_id, StrCat("copy=", d.queue_id, " ", d.what), d.policy_version});
    if (!d.held() && !d.consumed() && !entries_.count(d.queue_id)) admit.push_back(d.queue_id);
    if (d.held() && !d.cert_domain.empty() && options_.held_for_certificate) options_.held_for_certificate(d.cert_domain);
    bool warned = d.warned;
    if ((d.held() || warned) && options_.notifications) {
      notifier_.SetOptions(options_.notifications());   // the policy in force now decides who is told
      HeldItem item{d.queue_id, it->second.msg->envelope.mail_from(), {}, d.what, now};
      for (uint32_t i : d.rcpts)
        if (i < static_cast<uint32_t>(it->second.msg->envelope.recipients_size()))
          item.recipients.push_back(it->second.msg->envelope.recipients(static_cast<int>(i)).address());
      if (warned) notifier_.OnWarned(std::move(item), it->second.msg->envelope.is_dsn(), now);
      else notifier_.OnHeld(item, it->second.msg->envelope.is_dsn(), now);
    }
  }
  // Recipients left on the original go as they are: say why (the policy decision, issue #6).
  size_t carried = 0;
  for (const crypto::DerivedCopy& d : c.derived) carried += d.rcpts.size();
  if (options_.on_event && carried < it->second.rcpt.size() && !c.reason.empty() && !it->second.msg->envelope.crypto_done())
    options_.on_event({"mail.passed", c.queue_id, StrCat("rcpts=", it->second.rcpt.size() - carried, " ", c.reason), c.policy_version});
  for (const std::string& qid : admit) {
    Result<SpoolMessage> m = ReadSpoolFile(spool_->PathOf(SpoolState::kActive, qid));
    if (!m.ok()) {
      Log(LogLevel::kError, "qmgr", "crypto-stage copy unreadable", {{"qid", qid}, {"error", m.status().message()}});
      continue;
    }
    Admit(std::move(m.value()), SpoolState::kActive, now, 0);
  }
  auto again = entries_.find(c.queue_id);  // Admit may have rehashed the map
  if (again == entries_.end()) return;
  Log(LogLevel::kDebug, "qmgr", "policy verdict", {{"qid", c.queue_id}, {"reason", c.reason}});
  Dispatch(again->second);
}

void QueueManager::Dispatch(Entry& e) {
  std::map<std::string, std::vector<uint32_t>> by_dest;
  std::set<std::string> tls_dest;   // destinations some recipient may only reach over TLS
  bool relay = !options_.delivery.relay_host().empty();
  for (uint32_t i = 0; i < e.rcpt.size(); ++i) {
    if (e.rcpt[i] != kPending) continue;
    const std::string& addr = e.msg->envelope.recipients(static_cast<int>(i)).address();
    std::string domain = smtp::DomainOf(addr);
    bool routed = false;
    for (const auto& r : options_.delivery.routes()) routed = routed || r.domain() == domain;
    std::string dest = (relay && !routed) ? kRelayDestination : domain;
    by_dest[dest].push_back(i);
    if (options_.requires_tls && options_.requires_tls(addr)) tls_dest.insert(dest);
  }
  if (by_dest.empty()) {
    Finalize(e.msg->id);
    return;
  }
  std::string path = PathOf(e);
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [dest, rcpts] : by_dest) {
      // Bound one job's recipients like a next hop would (RFC 5321 §4.5.3.1.8: at least 100).
      for (size_t k = 0; k < rcpts.size(); k += 100) {
        DeliveryJob j;
        j.msg = e.msg;
        j.path = path;
        j.destination = dest;
        j.require_tls = tls_dest.count(dest) > 0;
        j.rcpts.assign(rcpts.begin() + static_cast<long>(k),
                       rcpts.begin() + static_cast<long>(std::min(rcpts.size(), k + 100)));
        ready_[dest].push_back(std::move(j));
        ++e.outstanding;
      }
    }
  }
  agents_cv_.notify_all();
}

void QueueManager::Apply(const DeliveryResult& r) {
  auto it = entries_.find(r.queue_id);
  if (it == entries_.end()) return;
  Entry& e = it->second;
  --e.outstanding;
  if (r.spool_corrupt) e.last_temp = "spool file corrupt";
  for (const RecipientResult& rr : r.results) {
    if (rr.index >= e.rcpt.size() || e.rcpt[rr.index] != kPending) continue;
    const std::string& addr = e.msg->envelope.recipients(static_cast<int>(rr.index)).address();
    if (rr.reply.ok()) {
      e.rcpt[rr.index] = kDelivered;
      // A delivery receipt was asked for and the next hop cannot give one: we do (RFC 3461).
      if (!r.peer_dsn && WantsSuccessDsn(e.msg->envelope, rr.index))
        e.relayed.push_back({rr.index, "2.0.0", StrCat("smtp; ", rr.reply.OneLine()), r.remote_mta});
      Log(LogLevel::kInfo, "smtp", "delivered",
          {{"qid", e.msg->id}, {"to", addr}, {"relay", r.remote_mta}, {"reply", rr.reply.OneLine()}});
      if (options_.on_event) options_.on_event({"mail.delivered", e.msg->id, StrCat("to=<", addr, "> relay=", r.remote_mta)});
      std::lock_guard<std::mutex> l(mu_);
      ++stats_.delivered;
    } else if (rr.reply.permanent()) {
      e.rcpt[rr.index] = kFailed;
      e.failures[rr.index] = {EnhancedStatusOf(rr.reply.code, rr.reply.enhanced),
                              StrCat("smtp; ", rr.reply.OneLine()),
                              r.remote_mta.substr(0, r.remote_mta.find(' '))};
      Log(LogLevel::kWarning, "smtp", "bounced",
          {{"qid", e.msg->id}, {"to", addr}, {"relay", r.remote_mta}, {"reply", rr.reply.OneLine()}});
      if (options_.on_event)
        options_.on_event({"mail.bounced", e.msg->id, StrCat("to=<", addr, "> reply=", rr.reply.OneLine())});
    } else {
      e.last_temp = rr.reply.OneLine();
      Log(LogLevel::kInfo, "smtp", "deferred",
          {{"qid", e.msg->id}, {"to", addr}, {"relay", r.remote_mta}, {"reply", rr.reply.OneLine()}});
    }
  }
  if (r.spool_corrupt) {
    if (e.outstanding == 0) {
      SpoolState st = e.state;
      entries_.erase(it);
      held_.store(static_cast<uint32_t>(entries_.size()), std::memory_order_relaxed);
      MoveToCorrupt(r.queue_id, st, DataLossError("body CRC mismatch during delivery"));
    }
    return;
  }
  if (e.outstanding == 0) Finalize(r.queue_id);
}

void QueueManager::Finalize(const std::string& id) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return;
  Entry& e = it->second;
  e.needs_finalize = false;
  int64_t now = NowMs();
  bool pending = std::count(e.rcpt.begin(), e.rcpt.end(), kPending) > 0;
  int64_t age_ms = now - e.msg->envelope.arrival_unix_ms();
  bool expired = pending && age_ms >= static_cast<int64_t>(options_.delivery.max_lifetime_s()) * 1000;
  if (expired) {
    for (size_t i = 0; i < e.rcpt.size(); ++i) {
      if (e.rcpt[i] != kPending) continue;
      e.rcpt[i] = kFailed;
      e.failures[i] = {"4.4.7",
                       StrCat("X-Mailseal; delivery time expired after ", e.attempts + 1,
                              " attempts; last error: ", e.last_temp),
                       ""};
      Log(LogLevel::kWarning, "qmgr", "expired",
          {{"qid", id}, {"to", e.msg->envelope.recipients(static_cast<int>(i)).address()},
           {"last_error", e.last_temp}});
    }
    pending = false;
  }
  // Delivery receipts the next hop could not give (RFC 3461 "relayed"): one for them all.
  if (!e.relayed.empty()) {
    std::string rpath = PathOf(e);
    Result<std::string> text = BuildRelayedDsn(
        options_.hostname, *e.msg, e.relayed,
        [&](const std::function<Status(std::string_view)>& sink) { return ReadBody(rpath, *e.msg, sink); }, now);
    Result<std::string> qid = text.ok() ? QueueOwn(e.msg->envelope.mail_from(), *text, now) : Result<std::string>(text.status());
    if (qid.ok()) {
      Log(LogLevel::kInfo, "qmgr", "delivery receipt queued", {{"qid", id}, {"receipt_qid", *qid}});
      if (options_.on_event) options_.on_event({"mail.receipt", id, StrCat("receipt=", *qid, " rcpts=", e.relayed.size())});
    } else {
      Log(LogLevel::kError, "qmgr", "cannot queue a delivery receipt", {{"qid", id}, {"error", qid.status().message()}});
    }
    auto again = entries_.find(id);   // QueueOwn's Admit may have rehashed the map
    if (again == entries_.end()) return;
    again->second.relayed.clear();
    return Finalize(id);
  }
  // Failed recipients not yet covered: one DSN for them, made durable before we record them.
  std::vector<FailedRecipient> dsn;
  std::vector<SpoolStatus> records;
  for (uint32_t i = 0; i < e.rcpt.size(); ++i) {
    if (e.recorded[i] || e.rcpt[i] == kPending) continue;
    SpoolStatus s;
    s.set_recipient_index(i);
    s.set_at_unix_ms(now);
    if (e.rcpt[i] == kDelivered) {
      s.set_kind(SpoolStatus::KIND_DELIVERED);
    } else {
      s.set_kind(SpoolStatus::KIND_FAILED);
      s.set_reply(e.failures[i].diagnostic);
      s.set_remote_mta(e.failures[i].remote_mta);
      {
        std::lock_guard<std::mutex> l(mu_);
        ++stats_.bounced;
      }
      if (!e.recalled && WantsFailureDsn(e.msg->envelope, i))
        dsn.push_back({i, e.failures[i].status, e.failures[i].diagnostic, e.failures[i].remote_mta,
                       e.failures[i].content_refused});
    }
    records.push_back(std::move(s));
  }
  std::string path = PathOf(e);
  if (!dsn.empty()) {
    Result<std::string> text = BuildFailureDsn(
        options_.hostname, *e.msg, dsn,
        [&](const std::function<Status(std::string_view)>& sink) { return ReadBody(path, *e.msg, sink); },
        now);
    Status st = text.status();
    if (text.ok()) {
      mailseal::v1::SpoolEnvelope env;
      env.set_mail_from("");
      auto* r = env.add_recipients();
      r->set_address(e.msg->envelope.mail_from());
      env.set_arrival_unix_ms(now);
      env.set_is_dsn(true);
      env.set_body_type("8BITMIME");
      Result<std::string> qid = WriteWholeMessage(spool_, env, *text);
      st = qid.status();
      if (qid.ok()) {
        Log(LogLevel::kInfo, "qmgr", "sender notified (DSN)",
            {{"qid", id}, {"dsn_qid", *qid}, {"to", e.msg->envelope.mail_from()}});
        Result<SpoolMessage> m = ReadSpoolFile(spool_->PathOf(SpoolState::kActive, *qid));
        if (m.ok()) {
          {
            std::lock_guard<std::mutex> l(mu_);
            ++stats_.dsns;
          }
          Admit(std::move(m.value()), SpoolState::kActive, now, 0);
        }
      }
    }
    if (!st.ok()) {
      // Could not queue the notice: keep the message and try the whole step again later.
      Log(LogLevel::kError, "qmgr", "cannot queue DSN, will retry", {{"qid", id}, {"error", st.message()}});
      e.needs_finalize = true;
      e.next_attempt_ms = now + Backoff(1);
      return;
    }
  }
  auto it2 = entries_.find(id);  // Admit may have rehashed the map
  Entry& e2 = it2->second;
  if (!pending) {
    if (Status st = spool_->Remove(id, e2.state); !st.ok())
      Log(LogLevel::kError, "qmgr", "cannot remove delivered message", {{"qid", id}, {"error", st.message()}});
    Log(LogLevel::kInfo, "qmgr", "removed", {{"qid", id}});
    entries_.erase(it2);
    held_.store(static_cast<uint32_t>(entries_.size()), std::memory_order_relaxed);
    return;
  }
  // Some recipients wait for another attempt: record progress, then defer.
  e2.attempts++;
  e2.next_attempt_ms = now + Backoff(e2.attempts);
  SpoolStatus d;
  if (!e2.delay_notified && !e2.recalled && DelayNoticeDue(e2, now)) {
    bool queued = SendDelayNotice(id, now);
    auto again = entries_.find(id);   // QueueOwn's Admit may have rehashed the map
    if (again == entries_.end()) return;
    if (queued) {
      again->second.delay_notified = true;
      d.set_delay_notified(true);
    }
  }
  FinishDeferral(id, now, std::move(records), std::move(d));
}

// DelayNoticeDue: the message has waited delay_warning_s and will still be retried after it.
bool QueueManager::DelayNoticeDue(const Entry& e, int64_t now) const {
  int64_t warn_ms = static_cast<int64_t>(options_.delivery.delay_warning_s()) * 1000;
  int64_t life_ms = static_cast<int64_t>(options_.delivery.max_lifetime_s()) * 1000;
  int64_t age_ms = now - e.msg->envelope.arrival_unix_ms();
  return warn_ms > 0 && warn_ms < life_ms && age_ms >= warn_ms;
}

// SendDelayNotice queues one "delayed" DSN for the pending recipients that allow it; true when
// it is queued or nobody is to be told (either way the sender is not told again).
bool QueueManager::SendDelayNotice(const std::string& id, int64_t now) {
  Entry& e = entries_.find(id)->second;
  // The enhanced code of the last reply ("451 4.4.1 ...") when it had one, else 4.0.0.
  std::string status = EnhancedStatusOf(451, "");
  if (size_t sp = e.last_temp.find(' '); sp != std::string::npos) {
    std::string code = e.last_temp.substr(sp + 1, e.last_temp.find(' ', sp + 1) - sp - 1);
    if (code.size() >= 5 && code[0] == '4' && code[1] == '.') status = code;
  }
  std::string diagnostic = StrCat("X-Mailseal; ", e.last_temp.empty() ? "not delivered yet" : e.last_temp);
  std::vector<FailedRecipient> delayed;
  for (uint32_t i = 0; i < e.rcpt.size(); ++i)
    if (e.rcpt[i] == kPending && WantsDelayDsn(e.msg->envelope, i)) delayed.push_back({i, status, diagnostic, ""});
  if (delayed.empty()) return true;
  int64_t until = e.msg->envelope.arrival_unix_ms() + static_cast<int64_t>(options_.delivery.max_lifetime_s()) * 1000;
  std::string path = PathOf(e);
  std::shared_ptr<const SpoolMessage> msg = e.msg;
  Result<std::string> text = BuildDelayedDsn(
      options_.hostname, *msg, delayed,
      [&](const std::function<Status(std::string_view)>& sink) { return ReadBody(path, *msg, sink); }, now, until);
  Result<std::string> qid = text.ok() ? QueueOwn(msg->envelope.mail_from(), *text, now) : Result<std::string>(text.status());
  if (!qid.ok()) {
    Log(LogLevel::kError, "qmgr", "cannot queue a delay notice (tried again at the next deferral)",
        {{"qid", id}, {"error", qid.status().message()}});
    return false;
  }
  Log(LogLevel::kInfo, "qmgr", "sender told of the delay (DSN)",
      {{"qid", id}, {"dsn_qid", *qid}, {"to", msg->envelope.mail_from()}, {"retry_until", Rfc5322Date(until)}});
  if (options_.on_event) options_.on_event({"mail.delayed", id, StrCat("notice=", *qid, " rcpts=", delayed.size())});
  return true;
}

// FinishDeferral records the progress (and the deferral) and moves the message to deferred/.
void QueueManager::FinishDeferral(const std::string& id, int64_t now, std::vector<SpoolStatus> records,
                                  SpoolStatus d) {
  auto it2 = entries_.find(id);
  if (it2 == entries_.end()) return;
  Entry& e2 = it2->second;
  std::string path = PathOf(e2);
  d.set_kind(SpoolStatus::KIND_DEFERRED);
  d.set_at_unix_ms(now);
  d.set_next_attempt_unix_ms(e2.next_attempt_ms);
  d.set_attempts(e2.attempts);
  d.set_reply(e2.last_temp);
  records.push_back(d);
  if (Status st = AppendStatuses(path, records); !st.ok()) {
    Log(LogLevel::kError, "qmgr", "cannot record delivery status", {{"qid", id}, {"error", st.message()}});
  } else {
    for (size_t i = 0; i < e2.rcpt.size(); ++i)
      if (e2.rcpt[i] != kPending) e2.recorded[i] = true;
  }
  if (e2.state == SpoolState::kActive) {
    if (Status st = spool_->Move(id, SpoolState::kActive, SpoolState::kDeferred); st.ok())
      e2.state = SpoolState::kDeferred;
    else
      Log(LogLevel::kError, "qmgr", "cannot move to deferred/", {{"qid", id}, {"error", st.message()}});
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    ++stats_.deferrals;
  }
  Log(LogLevel::kInfo, "qmgr", "deferred",
      {{"qid", id}, {"attempts", std::to_string(e2.attempts)},
       {"retry_in_s", std::to_string((e2.next_attempt_ms - now) / 1000)}, {"reason", e2.last_temp}});
}

void QueueManager::RetryDue(int64_t now) {
  std::vector<std::string> due;
  std::vector<std::string> finalize;
  for (auto& [id, e] : entries_) {
    if (!e.sealed && e.crypto_retry_ms && e.crypto_retry_ms <= now) {
      e.crypto_retry_ms = 0;
      to_crypto_.push_back(id);
      continue;
    }
    if (e.needs_finalize && e.outstanding == 0 && e.next_attempt_ms <= now) {
      finalize.push_back(id);
      continue;
    }
    if (e.outstanding == 0 && e.sealed && e.next_attempt_ms <= now &&
        std::count(e.rcpt.begin(), e.rcpt.end(), kPending) > 0 &&
        (e.state == SpoolState::kDeferred || e.attempts > 0))
      due.push_back(id);
  }
  for (const std::string& id : finalize) Finalize(id);
  for (const std::string& id : due) {
    auto found = entries_.find(id);
    if (found == entries_.end()) continue;
    Entry& e = found->second;
    // DE-6: a message that carries an expiry is not tried again after it (read once, on its
    // first retry: mail delivered at once never pays for this).
    if (e.expires_ms < 0) e.expires_ms = MessageExpiry(PathOf(e), *e.msg);
    if (e.expires_ms > 0 && now >= e.expires_ms) {
      for (size_t i = 0; i < e.rcpt.size(); ++i) {
        if (e.rcpt[i] != kPending) continue;
        e.rcpt[i] = kFailed;
        e.failures[i] = {"5.4.7", StrCat("X-Mailseal; the message expired at ", Rfc5322Date(e.expires_ms),
                                         " (its Expires: header) before it could be delivered; last error: ", e.last_temp),
                         ""};
      }
      Log(LogLevel::kWarning, "qmgr", "message expired (Expires: header)", {{"qid", id}});
      if (options_.on_event) options_.on_event({"mail.expired", id, "its Expires: header passed before delivery (DE-6)"});
      Finalize(id);
      continue;
    }
    if (e.state == SpoolState::kDeferred) {
      if (Status st = spool_->Move(id, SpoolState::kDeferred, SpoolState::kActive); !st.ok()) {
        Log(LogLevel::kError, "qmgr", "cannot move to active/", {{"qid", id}, {"error", st.message()}});
        e.next_attempt_ms = now + Backoff(1);
        continue;
      }
      e.state = SpoolState::kActive;
    }
    Dispatch(e);
  }
}

std::future<Result<std::vector<std::string>>> QueueManager::Recall(const std::string& id, const std::string& reason) {
  auto rq = std::make_unique<RecallRequest>();
  rq->id = id;
  rq->reason = reason;
  std::future<Result<std::vector<std::string>>> f = rq->done.get_future();
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stop_.load(std::memory_order_acquire)) {
      rq->done.set_value(UnavailableError("the queue manager is stopping"));
      return f;
    }
    recalls_.push_back(std::move(rq));
    wake_ = true;
  }
  manager_cv_.notify_one();
  return f;
}

Result<std::vector<std::string>> QueueManager::DoRecall(const std::string& id, const std::string& reason) {
  auto it = entries_.find(id);
  if (it == entries_.end()) return NotFoundError(StrCat(id, " is not queued (delivered already, or not in active/ or deferred/)"));
  Entry& e = it->second;
  if (!e.sealed) {
    // Waiting for a crypto worker is fine (taken out of the line); being sealed now is not.
    auto q = std::find(to_crypto_.begin(), to_crypto_.end(), id);
    if (q == to_crypto_.end()) return FailedPreconditionError(StrCat(id, " is being sealed or opened right now: try again"));
    to_crypto_.erase(q);
    e.sealed = true;
  }
  if (e.outstanding > 0) {
    // Jobs no agent has taken yet are withdrawn; one an agent is delivering is not.
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [dest, jobs] : ready_) {
      size_t before = jobs.size();
      jobs.erase(std::remove_if(jobs.begin(), jobs.end(), [&](const DeliveryJob& j) { return j.msg->id == id; }),
                 jobs.end());
      e.outstanding -= static_cast<int>(before - jobs.size());
    }
  }
  if (e.outstanding > 0) return FailedPreconditionError(StrCat(id, " is being delivered right now: try again"));
  std::vector<std::string> withdrawn;
  for (size_t i = 0; i < e.rcpt.size(); ++i) {
    if (e.rcpt[i] != kPending) continue;
    e.rcpt[i] = kFailed;
    e.failures[i] = {"5.0.0", StrCat("X-Mailseal; recalled: ", reason), ""};
    withdrawn.push_back(e.msg->envelope.recipients(static_cast<int>(i)).address());
  }
  e.recalled = true;
  Log(LogLevel::kInfo, "qmgr", "recalled", {{"qid", id}, {"recipients", std::to_string(withdrawn.size())}, {"reason", reason}});
  if (options_.on_event) options_.on_event({"mail.recalled", id, StrCat("rcpts=", withdrawn.size(), " reason=", reason)});
  Finalize(id);
  return withdrawn;
}

// QueueOwn writes a message of the gateway's own (a notice, a DSN, a receipt) from the null
// sender, marked as a notification (nothing is ever sent about it), and admits it.
Result<std::string> QueueManager::QueueOwn(const std::string& to, const std::string& text, int64_t now) {
  mailseal::v1::SpoolEnvelope env;
  env.set_mail_from("");
  env.add_recipients()->set_address(to);
  env.set_arrival_unix_ms(now);
  env.set_is_dsn(true);
  env.set_body_type("8BITMIME");
  Result<std::string> qid = WriteWholeMessage(spool_, env, text);
  if (!qid.ok()) return qid;
  Result<SpoolMessage> m = ReadSpoolFile(spool_->PathOf(SpoolState::kActive, *qid));
  if (m.ok()) Admit(std::move(m.value()), SpoolState::kActive, now, 0);
  return qid;
}

// SendNotices queues the notices about held mail that are due (from the null sender, marked
// as notifications: nothing is ever sent about them).
void QueueManager::SendNotices(int64_t now) {
  if (!options_.notifications) return;
  notifier_.SetOptions(options_.notifications());
  for (const Notice& n : notifier_.Due(now)) {
    Result<std::string> qid = QueueOwn(n.to, n.message, now);
    if (!qid.ok()) {
      Log(LogLevel::kError, "qmgr", "cannot queue a notice about held mail", {{"to", n.to}, {"error", qid.status().message()}});
      continue;
    }
    Log(LogLevel::kInfo, "qmgr", "notice about held mail queued",
        {{"qid", *qid}, {"to", n.to}, {"held_messages", std::to_string(n.items)}});
    if (options_.on_event) options_.on_event({"mail.notified", *qid, StrCat("to=<", n.to, "> held=", n.items)});
  }
}

// ExpireHeld returns held mail older than the policy's hold_expiry_s to its senders (SEE-2.8c):
// a failure DSN is made durable first, then the held copy is removed.
void QueueManager::ExpireHeld(int64_t now) {
  int64_t lifetime = options_.hold_expiry_ms ? options_.hold_expiry_ms() : 0;
  if (now < next_hold_scan_ms_ && lifetime == hold_lifetime_seen_) return;   // a policy change rescans at once
  hold_lifetime_seen_ = lifetime;
  // hold/ is read at most every minute (more often only for lifetimes under four minutes).
  next_hold_scan_ms_ = now + (lifetime > 0 ? std::clamp<int64_t>(lifetime / 4, 1000, 60000) : 60000);
  Result<std::vector<std::string>> ids = spool_->List(SpoolState::kHold);
  if (!ids.ok()) return;
  for (const std::string& id : *ids) {
    std::string path = spool_->PathOf(SpoolState::kHold, id);
    Result<SpoolMessage> m = ReadSpoolFile(path);
    if (!m.ok()) continue;
    bool too_old = lifetime > 0 && now - m->envelope.arrival_unix_ms() >= lifetime;
    int64_t expires = too_old ? 0 : MessageExpiry(path, *m);
    if (!too_old && !(expires > 0 && now >= expires)) continue;
    std::string why = too_old ? StrCat("held by policy and not released within ", lifetime / 1000, " s: ",
                                       m->envelope.hold_reason())
                              : StrCat("held by policy (", m->envelope.hold_reason(), ") until its Expires: time ",
                                       Rfc5322Date(expires), " passed");
    std::vector<FailedRecipient> failed;
    for (uint32_t i = 0; i < static_cast<uint32_t>(m->envelope.recipients_size()); ++i)
      if (WantsFailureDsn(m->envelope, i)) failed.push_back({i, too_old ? "5.7.1" : "5.4.7", StrCat("X-Mailseal; ", why), ""});
    if (!failed.empty()) {
      Result<std::string> text = BuildFailureDsn(
          options_.hostname, *m, failed,
          [&](const std::function<Status(std::string_view)>& sink) { return ReadBody(path, *m, sink); }, now);
      Result<std::string> qid = text.ok() ? QueueOwn(m->envelope.mail_from(), *text, now) : Result<std::string>(text.status());
      if (!qid.ok()) {
        Log(LogLevel::kError, "qmgr", "cannot queue the DSN for expired held mail; kept", {{"qid", id}, {"error", qid.status().message()}});
        continue;
      }
    }
    if (Status st = spool_->Remove(id, SpoolState::kHold); !st.ok()) {
      Log(LogLevel::kError, "qmgr", "cannot remove expired held mail", {{"qid", id}, {"error", st.message()}});
      continue;
    }
    Log(LogLevel::kWarning, "qmgr", "held mail expired: returned to sender", {{"qid", id}, {"from", m->envelope.mail_from()}});
    if (options_.on_event)
      options_.on_event({"mail.expired", id, StrCat("held ", (now - m->envelope.arrival_unix_ms()) / 1000, " s; returned to <",
                                                   m->envelope.mail_from(), ">")});
  }
}

void QueueManager::Run() {
  const auto scan = std::chrono::milliseconds(options_.delivery.queue_scan_interval_ms());
  int64_t last_scan = 0;
  // Recovered deferred messages have passed the crypto stage in an earlier life.
  for (auto& [id, e] : entries_)
    if (e.state == SpoolState::kDeferred) e.sealed = true;
  std::vector<crypto::Completion> done;
  while (true) {
    std::deque<SpoolMessage> submitted;
    std::deque<DeliveryResult> results;
    std::deque<std::unique_ptr<RecallRequest>> recalls;
    std::vector<std::string> released;
    {
      std::unique_lock<std::mutex> l(mu_);
      manager_cv_.wait_for(l, scan, [&] { return wake_; });
      wake_ = false;
      submitted.swap(submitted_);
      released.swap(released_);
      results.swap(results_);
      recalls.swap(recalls_);
    }
    if (stop_.load(std::memory_order_acquire)) return;
    for (const std::string& id : released) notifier_.Forget(id);
    int64_t now = NowMs();
    if (base::ClockStep step = base::TakeClockStep(); step.step_ms != 0) {
      Log(LogLevel::kWarning, "qmgr", "system clock stepped: retry times and message ages keep counting from before the step "
          "(until a restart)", {{"step_s", std::to_string(step.step_ms / 1000)}, {"absorbed_s", std::to_string(step.absorbed_ms / 1000)}});
      if (options_.on_event)
        options_.on_event({"system.clock_stepped", "", StrCat("the system clock moved ", step.step_ms / 1000,
                          " s at once; the queue keeps its own time (", step.absorbed_ms / 1000, " s behind the system clock)")});
    }
    for (SpoolMessage& m : submitted) {
      if (options_.on_event && !m.envelope.crypto_done())
        options_.on_event({"mail.accepted", m.id,
                          StrCat("from=<", m.envelope.mail_from(), "> rcpts=", m.envelope.recipients_size(),
                                 " size=", m.body_size, m.envelope.is_dsn() ? " dsn" : "",
                                 m.envelope.client_address().empty() ? ""
                                 : StrCat(" client=", m.envelope.client_address(),
                                          " tls=", m.envelope.tls().empty() ? "none" : m.envelope.tls(),
                                          m.envelope.spf_result().empty() ? ""
                                          : StrCat(" spf=", m.envelope.spf_result(), "(", m.envelope.spf_domain(), ")")))});
      Admit(std::move(m), SpoolState::kActive, now, 0);
    }
    done.clear();
    crypto_->DrainCompletions(&done);
    SyncCopies(done);
    for (const crypto::Completion& c : done) ApplyCompletion(c, now);
    PumpCrypto();
    for (const DeliveryResult& r : results) Apply(r);
    for (auto& rq : recalls) rq->done.set_value(DoRecall(rq->id, rq->reason));
    if (now - last_scan >= scan.count()) {
      last_scan = now;
      RetryDue(now);
      SendNotices(now);
      ExpireHeld(now);
      if (tls_reporter_) {
        Result<size_t> n = tls_reporter_->WriteDue(now / 1000);
        if (!n.ok()) Log(LogLevel::kError, "qmgr", "TLS reports not written", {{"error", n.status().message()}});
        else if (*n) Log(LogLevel::kInfo, "qmgr", "TLS reports written (RFC 8460)", {{"files", std::to_string(*n)}});
      }
      std::lock_guard<std::mutex> l(mu_);
      stats_.in_queue = entries_.size();
      stats_.deferred = static_cast<size_t>(std::count_if(
          entries_.begin(), entries_.end(), [](const auto& p) { return p.second.state == SpoolState::kDeferred; }));
    }
  }
}

}  // namespace mailseal::queue
