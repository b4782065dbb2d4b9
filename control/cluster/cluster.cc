// cluster.cc — see cluster.h.
#include "control/cluster/cluster.h"

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <chrono>
#include <cstdio>

#include "control/audit/log.h"
#include "control/audit/merkle.h"
#include "dataplane/base/log.h"
#include "dataplane/base/strings.h"

namespace mailseal::cluster {
namespace {
using base::Log;
using base::LogLevel;
using mailseal::v1::AuditAlarm;
using mailseal::v1::AuditAnchor;
using mailseal::v1::NodeRecord;
using mailseal::v1::PolicyVersionRecord;
using mailseal::v1::TreeHead;

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool StartsWith(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

bool SameHead(const TreeHead& a, const TreeHead& b) {
  return a.tree_size() == b.tree_size() && a.root_hash() == b.root_hash();
}

bool HeadSignedBy(const TreeHead& head, const std::string& der) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  EVP_PKEY* key = d2i_PUBKEY(nullptr, &p, static_cast<long>(der.size()));
  if (!key) return false;
  bool ok = audit::VerifyHeadSignature(head, key);
  EVP_PKEY_free(key);
  return ok;
}

std::string Describe(const TreeHead& h) { return StrCat(h.tree_size(), " records"); }
}  // namespace

std::string PolicyVersionKey(const std::string& prefix, uint64_t version) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "policy/v/%012llu", static_cast<unsigned long long>(version));
  return prefix + buf;
}

Result<std::unique_ptr<ClusterNode>> ClusterNode::Start(ClusterOptions options, ClusterHooks hooks) {
  std::unique_ptr<ClusterNode> n(new ClusterNode());
  Result<std::unique_ptr<EtcdClient>> c = EtcdClient::Connect(options.etcd);
  if (!c.ok()) return c.status();
  n->etcd_ = std::move(c.value());
  n->prefix_ = StrCat("/mailseal/", options.name, "/");
  n->options_ = std::move(options);
  n->hooks_ = std::move(hooks);
  n->degraded_ = "not yet in contact with etcd";
  for (const std::string& job : n->options_.jobs) n->leaders_[job] = {};
  n->thread_ = std::thread([p = n.get()] { p->Loop(); });
  return n;
}

ClusterNode::~ClusterNode() { Stop(); }

void ClusterNode::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stop_) return;
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (watch_) watch_->Stop();
  int64_t lease;
  {
    std::lock_guard<std::mutex> l(mu_);
    lease = lease_;
    lease_ = 0;
  }
  // Leaving on purpose: the record and the elections go now, not after the TTL.
  if (lease) (void)etcd_->LeaseRevoke(lease);
}

void ClusterNode::SetOnChange(std::function<void()> f) {
  std::lock_guard<std::mutex> l(mu_);
  on_change_ = std::move(f);
}

void ClusterNode::Changed() {
  std::function<void()> f;
  {
    std::lock_guard<std::mutex> l(mu_);
    f = on_change_;
  }
  if (f) f();
}

void ClusterNode::SetDegraded(const std::string& why) {
  bool changed;
  {
    std::lock_guard<std::mutex> l(mu_);
    changed = degraded_ != why;
    degraded_ = why;
  }
  if (!changed) return;
  if (why.empty())
    Log(LogLevel::kInfo, "cluster", "in contact with the cluster", {{"cluster", options_.name}});
  else
    Log(LogLevel::kWarning, "cluster", "degraded: serving with the last good state", {{"reason", why}});
  Changed();
}

bool ClusterNode::degraded() const {
  std::lock_guard<std::mutex> l(mu_);
  return !degraded_.empty();
}

bool ClusterNode::IsLeader(const std::string& job) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = leaders_.find(job);
  return it != leaders_.end() && it->second.first == options_.node_id && lease_ != 0 &&
         it->second.second == lease_ && SteadyMs() - lease_ok_ms_ < options_.lease_ttl_s * 1000;
}

// ---- the loop ----

void ClusterNode::Loop() {
  std::set<std::string> held;
  while (true) {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stop_) return;
    }
    bool synced;
    {
      std::lock_guard<std::mutex> l(mu_);
      synced = synced_;
    }
    std::string trouble;
    if (!synced) {
      if (mailseal::Status st = Sync(); !st.ok()) trouble = StrCat("etcd unreachable: ", st.message());
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      synced = synced_;
    }
    if (synced) {
      if (mailseal::Status st = KeepLease(); !st.ok()) trouble = StrCat("lease not renewed: ", st.message());
      PutRecord(false);
      Campaign();
      Anchor();
      std::lock_guard<std::mutex> l(mu_);
      if (trouble.empty() && !watch_up_) trouble = "watch on etcd down (reconnecting)";
      if (trouble.empty() && SteadyMs() - lease_ok_ms_ >= options_.lease_ttl_s * 1000) trouble = "lease expired";
    }
    SetDegraded(trouble);
    std::set<std::string> now;
    for (const std::string& job : options_.jobs)
      if (IsLeader(job)) now.insert(job);
    if (now != held) {
      for (const std::string& job : options_.jobs) {
        bool was = held.count(job), is = now.count(job);
        if (was == is) continue;
        Log(LogLevel::kInfo, "cluster", is ? "singleton job taken" : "singleton job given up",
            {{"job", job}, {"node", options_.node_id}});
        if (hooks_.audit) hooks_.audit(is ? "cluster.job-taken" : "cluster.job-given-up", job, "");
      }
      held = now;
      Changed();
    }
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait_for(l, std::chrono::milliseconds(std::max(200, options_.lease_ttl_s * 1000 / 3)),
                 [this] { return stop_ || campaign_due_; });
  }
}

mailseal::Status ClusterNode::Sync() {
  Result<RangeResult> all = etcd_->GetPrefix(prefix_);
  if (!all.ok()) return all.status();
  {
    std::lock_guard<std::mutex> l(mu_);
    members_.clear();
    for (auto& [job, holder] : leaders_) holder = {};
    anchors_.clear();
    alarms_.clear();
  }
  std::vector<WatchEvent> events;
  for (KeyValue& kv : all->kvs) events.push_back(WatchEvent{WatchEvent::kPut, std::move(kv)});
  Apply(events, all->revision);
  SyncPolicy();
  if (watch_) watch_->Stop();
  watch_ = etcd_->WatchPrefix(
      prefix_, all->revision + 1, [this](const std::vector<WatchEvent>& ev, int64_t rev) { Apply(ev, rev); },
      [this](bool up, const std::string& why) {
        {
          std::lock_guard<std::mutex> l(mu_);
          watch_up_ = up;
        }
        if (!up) Log(LogLevel::kWarning, "cluster", "watch on etcd interrupted (resuming)", {{"reason", why}});
        cv_.notify_all();
      },
      [this]() -> int64_t {
        // etcd compacted past what we need: read everything again, go on after it.
        Result<RangeResult> again = etcd_->GetPrefix(prefix_);
        if (!again.ok()) return 0;   // 0: from now (the loop's next reads catch up)
        std::vector<WatchEvent> ev;
        {
          std::lock_guard<std::mutex> l(mu_);
          members_.clear();
          for (auto& [job, holder] : leaders_) holder = {};
          anchors_.clear();
        }
        for (KeyValue& kv : again->kvs) ev.push_back(WatchEvent{WatchEvent::kPut, std::move(kv)});
        Apply(ev, again->revision);
        return again->revision + 1;
      });
  std::lock_guard<std::mutex> l(mu_);
  synced_ = true;
  campaign_due_ = true;
  return OkStatus();
}

void ClusterNode::Apply(const std::vector<WatchEvent>& events, int64_t revision) {
  bool policy = false;
  for (const WatchEvent& e : events) {
    if (e.kv.key == Key("policy/current")) policy = true;
    ApplyOne(e);
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    revision_ = std::max(revision_, revision);
  }
  if (policy) SyncPolicy();
}

void ClusterNode::ApplyOne(const WatchEvent& e) {
  const std::string& key = e.kv.key;
  if (!StartsWith(key, prefix_)) return;
  std::string rest = key.substr(prefix_.size());
  bool put = e.kind == WatchEvent::kPut;
  if (StartsWith(rest, "nodes/")) {
    std::string id = rest.substr(6);
    std::lock_guard<std::mutex> l(mu_);
    NodeRecord rec;
    if (!put) {
      if (members_.erase(id)) Log(LogLevel::kInfo, "cluster", "member left", {{"node", id}});
    } else if (rec.ParseFromString(e.kv.value) && rec.node_id() == id) {
      if (!members_.count(id)) Log(LogLevel::kInfo, "cluster", "member joined", {{"node", id}, {"advertise", rec.advertise()}});
      members_[id] = rec;
    }
    return;
  }
  if (StartsWith(rest, "leader/")) {
    std::string job = rest.substr(7);
    {
      std::lock_guard<std::mutex> l(mu_);
      if (put) {
        leaders_[job] = {e.kv.value, e.kv.lease};
      } else {
        leaders_[job] = {};
        campaign_due_ = true;   // the holder left: stand at once
      }
    }
    cv_.notify_all();
    return;
  }
  if (StartsWith(rest, "audit-keys/")) {
    std::string id = rest.substr(11);
    if (!put) return;
    std::lock_guard<std::mutex> l(mu_);
    pinned_keys_.emplace(id, e.kv.value);   // the first one stays
    return;
  }
  if (StartsWith(rest, "audit/")) {
    std::string id = rest.substr(6);
    AuditAnchor a;
    if (!put || !a.ParseFromString(e.kv.value) || a.node_id() != id) return;
    if (id == options_.node_id) {
      std::lock_guard<std::mutex> l(mu_);
      anchors_[id] = a;
      return;
    }
    CheckAnchor(id, a);
    return;
  }
  if (StartsWith(rest, "alarms/audit/")) {
    std::string id = rest.substr(13);
    std::lock_guard<std::mutex> l(mu_);
    AuditAlarm a;
    if (!put) {
      alarms_.erase(id);
    } else if (a.ParseFromString(e.kv.value)) {
      alarms_[id] = a;
    }
    return;
  }
}

// ---- policy ----

void ClusterNode::SyncPolicy() {
  if (!hooks_.policy_version || !hooks_.policy_install) return;
  std::lock_guard<std::mutex> pl(policy_mu_);
  uint64_t local = hooks_.policy_version();
  Result<RangeResult> cur = etcd_->Get(Key("policy/current"));
  if (!cur.ok()) return;   // the watch or the loop tries again
  uint64_t cluster = 0;
  if (!cur->kvs.empty()) {
    PolicyVersionRecord r;
    if (!r.ParseFromString(cur->kvs[0].value)) {
      Log(LogLevel::kError, "cluster", "the cluster's policy record does not parse: not applied", {});
      return;
    }
    cluster = r.info().version();
  }
  if (cluster == 0 && local > 0 && hooks_.policy_get) {
    // A new cluster: this node's history becomes the cluster's (only if nobody else did so).
    std::vector<Op> ops;
    PolicyVersionRecord last;
    for (uint64_t v = 1; v <= local; ++v) {
      Result<PolicyVersionRecord> r = hooks_.policy_get(v);
      if (!r.ok()) {
        Log(LogLevel::kError, "cluster", "local policy version unreadable: cluster not seeded", {{"error", r.status().message()}});
        return;
      }
      ops.push_back(Op{Op::kPut, PolicyVersionKey(prefix_, v), r->SerializeAsString(), 0});
      last = *r;
    }
    ops.push_back(Op{Op::kPut, Key("policy/current"), last.SerializeAsString(), 0});
    Result<TxnResult> t = etcd_->Txn({Compare{Key("policy/current"), Compare::kCreateRevision, 0, ""}}, ops);
    if (t.ok() && t->succeeded)
      Log(LogLevel::kInfo, "cluster", "the cluster's policy seeded from this node's store", {{"version", std::to_string(local)}});
    return;
  }
  if (cluster <= local) {
    if (cluster < local)
      Log(LogLevel::kError, "cluster", "this node's policy store is ahead of the cluster's (kept; not replicated)",
          {{"local", std::to_string(local)}, {"cluster", std::to_string(cluster)}});
    return;
  }
  Result<RangeResult> versions =
      etcd_->GetRange(PolicyVersionKey(prefix_, local + 1), PolicyVersionKey(prefix_, cluster + 1));
  if (!versions.ok()) return;
  for (const KeyValue& kv : versions->kvs) {
    PolicyVersionRecord r;
    if (!r.ParseFromString(kv.value) || r.info().version() != local + 1) {
      Log(LogLevel::kError, "cluster", "policy history in etcd has a gap or a bad record: stopped at this version",
          {{"version", std::to_string(local)}, {"key", kv.key}});
      return;
    }
    if (mailseal::Status st = hooks_.policy_install(r); !st.ok()) {
      Log(LogLevel::kError, "cluster", "policy version from the cluster refused here",
          {{"version", std::to_string(r.info().version())}, {"error", st.message()}});
      return;
    }
    Log(LogLevel::kInfo, "cluster", "policy version from the cluster installed",
        {{"version", std::to_string(r.info().version())}, {"by", r.node_id()}});
    ++local;
  }
}

mailseal::Status ClusterNode::ProposePolicy(const PolicyVersionRecord& record, uint64_t expected) {
  if (record.info().version() != expected + 1) return InternalError("policy record numbered wrongly");
  const std::string cur_key = Key("policy/current");
  Result<RangeResult> cur = etcd_->Get(cur_key);
  if (!cur.ok())
    return UnavailableError(StrCat("the cluster's policy cannot be changed now (", cur.status().message(),
                                   "); nothing changed"));
  uint64_t at = 0;
  int64_t mod = 0;
  PolicyVersionRecord cur_rec;
  if (!cur->kvs.empty()) {
    if (!cur_rec.ParseFromString(cur->kvs[0].value)) return DataLossError("the cluster's policy record does not parse");
    at = cur_rec.info().version();
    mod = cur->kvs[0].mod_revision;
  }
  auto conflict = [&](const PolicyVersionRecord& now, const char* how) {
    return FailedPreconditionError(StrCat("the cluster's policy is at version ", now.info().version(), " (set by ",
                                          now.info().actor(), " on node ", now.node_id(), how, "), not ", expected,
                                          ": get it again and re-apply the change"));
  };
  if (at != expected) return conflict(cur_rec, "");
  std::string value = record.SerializeAsString();
  std::vector<Compare> cmp = {expected == 0 ? Compare{cur_key, Compare::kCreateRevision, 0, ""}
                                            : Compare{cur_key, Compare::kModRevision, mod, ""}};
  std::vector<Op> ops = {Op{Op::kPut, cur_key, value, 0},
                         Op{Op::kPut, PolicyVersionKey(prefix_, record.info().version()), value, 0}};
  Result<TxnResult> t = etcd_->Txn(cmp, ops);
  if (!t.ok() || !t->succeeded) {
    // Lost reply or lost race: what is there now decides.
    Result<RangeResult> again = etcd_->Get(cur_key);
    if (!again.ok()) return UnavailableError(StrCat("etcd: ", again.status().message(), " (the change may or may not be stored)"));
    PolicyVersionRecord now;
    if (again->kvs.empty() || !now.ParseFromString(again->kvs[0].value))
      return UnavailableError(StrCat("etcd: ", t.ok() ? "no policy stored" : t.status().message()));
    if (now.SerializeAsString() != value) return conflict(now, ", concurrently");
  }
  SyncPolicy();
  if (hooks_.policy_version && hooks_.policy_version() < record.info().version())
    return InternalError(StrCat("policy version ", record.info().version(),
                                " is stored in the cluster but not yet installed on this node (see its log)"));
  return OkStatus();
}

// ---- membership and elections ----

mailseal::Status ClusterNode::KeepLease() {
  int64_t lease;
  {
    std::lock_guard<std::mutex> l(mu_);
    lease = lease_;
  }
  if (lease != 0) {
    Result<int64_t> ttl = etcd_->LeaseKeepAlive(lease);
    if (ttl.ok()) {
      std::lock_guard<std::mutex> l(mu_);
      lease_ok_ms_ = SteadyMs();
      return OkStatus();
    }
    if (ttl.status().code() != StatusCode::kNotFound) return ttl.status();
    Log(LogLevel::kWarning, "cluster", "lease expired: joining again", {{"node", options_.node_id}});
  }
  Result<int64_t> id = etcd_->LeaseGrant(options_.lease_ttl_s);
  if (!id.ok()) return id.status();
  {
    std::lock_guard<std::mutex> l(mu_);
    lease_ = *id;
    lease_ok_ms_ = SteadyMs();
    campaign_due_ = true;
  }
  PutRecord(true);
  return OkStatus();
}

void ClusterNode::PutRecord(bool force) {
  NodeRecord rec;
  if (hooks_.describe) hooks_.describe(&rec);
  rec.set_node_id(options_.node_id);
  rec.set_advertise(options_.advertise);
  rec.set_version(options_.version);
  int64_t lease;
  {
    std::lock_guard<std::mutex> l(mu_);
    lease = lease_;
    if (!degraded_.empty()) rec.set_health(StrCat("degraded: ", degraded_));
  }
  if (rec.health().empty()) rec.set_health("SERVING");
  if (lease == 0) return;
  std::string shape = rec.SerializeAsString();
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!force && shape == last_record_) return;
  }
  static const int64_t started = WallMs();
  rec.set_started_unix_ms(started);
  rec.set_updated_unix_ms(WallMs());
  if (Result<int64_t> r = etcd_->Put(Key(StrCat("nodes/", options_.node_id)), rec.SerializeAsString(), lease); r.ok()) {
    std::lock_guard<std::mutex> l(mu_);
    last_record_ = shape;
  }
}

void ClusterNode::Campaign() {
  int64_t lease;
  std::vector<std::string> open;
  {
    std::lock_guard<std::mutex> l(mu_);
    campaign_due_ = false;
    lease = lease_;
    for (const std::string& job : options_.jobs) {
      auto& holder = leaders_[job];
      if (holder.first.empty() || (holder.first == options_.node_id && holder.second != lease_)) open.push_back(job);
    }
  }
  if (lease == 0) return;
  for (const std::string& job : open) {
    const std::string key = Key(StrCat("leader/", job));
    Result<TxnResult> t = etcd_->Txn({Compare{key, Compare::kCreateRevision, 0, ""}},
                                     {Op{Op::kPut, key, options_.node_id, lease}});
    if (!t.ok()) continue;
    if (t->succeeded) {
      std::lock_guard<std::mutex> l(mu_);
      leaders_[job] = {options_.node_id, lease};
      continue;
    }
    if (Result<RangeResult> r = etcd_->Get(key); r.ok() && !r->kvs.empty()) {
      std::lock_guard<std::mutex> l(mu_);
      leaders_[job] = {r->kvs[0].value, r->kvs[0].lease};
    }
  }
}

std::vector<NodeRecord> ClusterNode::Members(bool* from_cache) const {
  std::vector<NodeRecord> out;
  Result<RangeResult> r = etcd_->GetPrefix(Key("nodes/"));
  if (r.ok()) {
    *from_cache = false;
    for (const KeyValue& kv : r->kvs) {
      NodeRecord rec;
      if (rec.ParseFromString(kv.value)) out.push_back(rec);
    }
    return out;
  }
  *from_cache = true;
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& [id, rec] : members_) out.push_back(rec);
  return out;
}

ClusterStatus ClusterNode::GetStatus() const {
  ClusterStatus s;
  s.cluster = options_.name;
  s.node_id = options_.node_id;
  s.policy_version = hooks_.policy_version ? hooks_.policy_version() : 0;
  std::lock_guard<std::mutex> l(mu_);
  s.connected = synced_ && watch_up_ && lease_ != 0 && SteadyMs() - lease_ok_ms_ < options_.lease_ttl_s * 1000;
  s.degraded = degraded_;
  s.revision = revision_;
  for (const auto& [job, holder] : leaders_) s.leaders[job] = holder.first;
  for (const auto& [id, alarm] : alarms_) s.alarms.push_back(alarm);
  s.members = members_.size();
  return s;
}

Result<std::string> ClusterNode::GetShared(const std::string& rest) const {
  Result<RangeResult> r = etcd_->Get(prefix_ + rest);
  if (!r.ok()) return r.status();
  if (r->kvs.empty()) return NotFoundError(StrCat("no ", rest));
  return r->kvs[0].value;
}

mailseal::Status ClusterNode::PutShared(const std::string& rest, const std::string& value) {
  Result<int64_t> r = etcd_->Put(prefix_ + rest, value);
  return r.ok() ? OkStatus() : r.status();
}

// ---- audit anchors ----

void ClusterNode::Anchor() {
  if (!hooks_.audit_head || !hooks_.audit_proof) return;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (lease_ == 0 || SteadyMs() - last_anchor_ms_ < options_.anchor_interval_s * 1000) return;
    last_anchor_ms_ = SteadyMs();
  }
  Result<TreeHead> head = hooks_.audit_head();
  if (!head.ok()) {
    Log(LogLevel::kWarning, "cluster", "audit tree head not anchored (tried again)", {{"error", head.status().message()}});
    return;
  }
  if (head->tree_size() == 0) return;   // nothing to anchor yet
  const std::string key = Key(StrCat("audit/", options_.node_id));
  Result<RangeResult> prev = etcd_->Get(key);
  if (!prev.ok()) return;
  AuditAnchor a;
  a.set_node_id(options_.node_id);
  *a.mutable_head() = *head;
  a.set_public_key(hooks_.audit_public_key);
  std::vector<Compare> cmp;
  if (prev->kvs.empty()) {
    cmp.push_back(Compare{key, Compare::kCreateRevision, 0, ""});
  } else {
    AuditAnchor before;
    if (!before.ParseFromString(prev->kvs[0].value)) return;
    if (SameHead(before.head(), *head)) return;   // nothing new
    cmp.push_back(Compare{key, Compare::kModRevision, prev->kvs[0].mod_revision, ""});
    *a.mutable_previous() = before.head();
    const TreeHead& old = before.head();
    if (old.tree_size() == 0) {
      // Any log extends the empty one: no proof needed.
    } else if (old.tree_size() > head->tree_size()) {
      a.set_proof_error(StrCat("the log holds ", head->tree_size(), " records, fewer than the ", old.tree_size(), " anchored"));
    } else {
      Result<std::vector<std::string>> proof = hooks_.audit_proof(old.tree_size(), head->tree_size());
      if (!proof.ok()) {
        a.set_proof_error(StrCat("no consistency proof: ", proof.status().message()));
      } else if (!audit::VerifyConsistency(old.tree_size(), head->tree_size(), old.root_hash(), head->root_hash(), *proof)) {
        a.set_proof_error(StrCat("the log does not extend the head anchored at ", old.tree_size(), " records"));
      } else {
        for (const std::string& h : *proof) a.add_consistency(h);
      }
    }
  }
  if (!a.proof_error().empty()) {
    Log(LogLevel::kError, "cluster", "this node's audit log does not extend its anchored head (anchored as found)",
        {{"reason", a.proof_error()}});
    if (hooks_.audit) hooks_.audit("cluster.audit-anchor-broken", options_.node_id, a.proof_error());
  }
  // The key is pinned by the first anchor; a later one never replaces it.
  const std::string kkey = Key(StrCat("audit-keys/", options_.node_id));
  (void)etcd_->Txn({Compare{kkey, Compare::kCreateRevision, 0, ""}}, {Op{Op::kPut, kkey, hooks_.audit_public_key, 0}});
  (void)etcd_->Txn(cmp, {Op{Op::kPut, key, a.SerializeAsString(), 0}});
}

void ClusterNode::CheckAnchor(const std::string& node, const AuditAnchor& a) {
  std::string reason;
  TreeHead anchored;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto pin = pinned_keys_.find(node);
    const std::string& key = pin != pinned_keys_.end() ? pin->second : a.public_key();
    auto last = anchors_.find(node);
    if (last != anchors_.end()) anchored = last->second.head();
    else if (a.has_previous()) anchored = a.previous();
    if (a.public_key() != key) {
      reason = "the anchor's audit key is not the key pinned for the node";
    } else if (!HeadSignedBy(a.head(), key)) {
      reason = "the anchored head's signature does not verify";
    } else if (!a.proof_error().empty()) {
      reason = StrCat("the node cannot prove its log extends its anchored head: ", a.proof_error());
    } else if (a.has_previous() && a.previous().tree_size() > 0 &&
               !audit::VerifyConsistency(a.previous().tree_size(), a.head().tree_size(), a.previous().root_hash(),
                                         a.head().root_hash(), {a.consistency().begin(), a.consistency().end()})) {
      reason = StrCat("the consistency proof from the head anchored at ", Describe(a.previous()), " to ",
                      Describe(a.head()), " fails");
    } else if (last != anchors_.end() && !(a.has_previous() && SameHead(a.previous(), last->second.head()))) {
      reason = StrCat("the anchor does not continue from the head last anchored (", Describe(last->second.head()), ")");
    }
    anchors_[node] = a;   // the new baseline; an alarm, once raised, stays in etcd
  }
  if (!reason.empty()) RaiseAlarm(node, reason, anchored, a.head());
}

void ClusterNode::RaiseAlarm(const std::string& node, const std::string& reason, const TreeHead& anchored,
                             const TreeHead& offered) {
  AuditAlarm alarm;
  alarm.set_node_id(node);
  alarm.set_detected_by(options_.node_id);
  alarm.set_reason(reason);
  *alarm.mutable_anchored() = anchored;
  *alarm.mutable_offered() = offered;
  alarm.set_unix_ms(WallMs());
  Log(LogLevel::kError, "cluster", "audit trail of another node does not extend its anchored head",
      {{"node", node}, {"reason", reason}});
  if (hooks_.audit) hooks_.audit("cluster.audit-anchor-mismatch", node, reason);
  const std::string key = Key(StrCat("alarms/audit/", node));
  (void)etcd_->Txn({Compare{key, Compare::kCreateRevision, 0, ""}}, {Op{Op::kPut, key, alarm.SerializeAsString(), 0}});
  {
    std::lock_guard<std::mutex> l(mu_);
    alarms_.emplace(node, alarm);
  }
  Changed();
}

}  // namespace mailseal::cluster
