// cluster.h — one appliance's part in a cluster (issue #20; ARCHITECTURE.md "State and where it
// lives"): state shared through etcd under /mailseal/<cluster>/, never mail.
//
//   nodes/<id>          NodeRecord under the node's lease (gone within the TTL of its death)
//   policy/current      PolicyVersionRecord of the version in force; policy/v/<%012u> each version
//   leader/<job>        the node running a singleton job, under its lease (an election)
//   audit/<id>          AuditAnchor: the node's latest signed tree head, proven to extend the last
//   audit-keys/<id>     the node's audit public key, pinned by its first anchor
//   alarms/audit/<id>   AuditAlarm: another node found the node's anchors do not extend each other
//
// Threads: a loop (lease keep-alive every TTL/3, node record, elections, anchors, reconnect) and
// the watch's (applies every change in revision order). A node cut off from etcd keeps its last
// good state (the policy stays in force: it is also in the local store), says `degraded` with
// the reason, and catches up from the revision it last saw when etcd is back (from a full read
// if etcd compacted it). Singleton jobs are held only while the lease is known alive.
//
// SECURITY: the other appliances write here too; values are parsed as untrusted (bounded by the
// etcd client's message limit; a record that does not parse is ignored and logged), and an
// audit anchor is believed only with a valid signature by the key pinned for that node and a
// consistency proof from the anchor before it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "control/cluster/etcd.h"
#include "dataplane/base/status.h"
#include "mailseal/v1/audit.pb.h"
#include "mailseal/v1/cluster.pb.h"
#include "mailseal/v1/policy.pb.h"

namespace mailseal::cluster {

struct ClusterOptions {
  EtcdOptions etcd;
  std::string name;        // the cluster's: keys under /mailseal/<name>/
  std::string node_id;
  std::string advertise;   // management API address
  std::string version;     // software version
  int lease_ttl_s = 5;
  int anchor_interval_s = 10;
  std::vector<std::string> jobs;   // singleton jobs this node campaigns for
};

// What the node's other parts give the cluster (wired in mailseald.cc).
struct ClusterHooks {
  // The local policy store: its version, one version, and installing the next version.
  std::function<uint64_t()> policy_version;
  std::function<Result<mailseal::v1::PolicyVersionRecord>(uint64_t version)> policy_get;
  std::function<Status(const mailseal::v1::PolicyVersionRecord&)> policy_install;
  // describe fills the node record's health, keys and sizes.
  std::function<void(mailseal::v1::NodeRecord*)> describe;
  // The audit trail: a signed head over every record so far (signing one when stale), a
  // consistency proof, the audit key (DER SubjectPublicKeyInfo). Unset: no anchoring.
  std::function<Result<mailseal::v1::TreeHead>()> audit_head;
  std::function<Result<std::vector<std::string>>(uint64_t old_size, uint64_t new_size)> audit_proof;
  std::string audit_public_key;
  // audit records what the cluster saw (alarms, elections won and lost); may be unset.
  std::function<void(const std::string& action, const std::string& object, const std::string& detail)> audit;
};

struct ClusterStatus {
  std::string cluster, node_id;
  bool connected = false;   // etcd answered within the lease TTL and the watch is up
  std::string degraded;     // why not fully in the cluster ("" when all is well)
  int64_t revision = 0;     // the last revision applied
  uint64_t policy_version = 0;
  std::map<std::string, std::string> leaders;   // job -> node id ("" while nobody holds it)
  std::vector<mailseal::v1::AuditAlarm> alarms;
  size_t members = 0;
};

// Key names (exposed for tests and the CLI's explanations).
std::string PolicyVersionKey(const std::string& prefix, uint64_t version);

class ClusterNode {
 public:
  // Start returns at once: the first contact with etcd happens on the node's thread, and until
  // then (or without etcd at all) the node runs on its local state, degraded.
  static Result<std::unique_ptr<ClusterNode>> Start(ClusterOptions options, ClusterHooks hooks);
  ~ClusterNode();
  // Stop ends the threads and revokes the lease (the node leaves the member list at once).
  void Stop();

  // ProposePolicy stores `record` (version expected+1) if the cluster's policy is still at
  // `expected` (compare-and-swap); FAILED_PRECONDITION names the version that won; UNAVAILABLE
  // when etcd cannot be reached (nothing changed). On success the version is installed locally
  // before this returns.
  Status ProposePolicy(const mailseal::v1::PolicyVersionRecord& record, uint64_t expected);

  // IsLeader: this node holds the job's election and its lease is known to be alive.
  bool IsLeader(const std::string& job) const;
  // Members: the node records (read from etcd; the last known ones when it cannot be reached).
  std::vector<mailseal::v1::NodeRecord> Members(bool* from_cache) const;
  ClusterStatus GetStatus() const;
  // Shared small values under /mailseal/<cluster>/<rest> (what a singleton job remembers, so the
  // node that takes it over does not repeat it). NotFound for a missing key.
  Result<std::string> GetShared(const std::string& rest) const;
  mailseal::Status PutShared(const std::string& rest, const std::string& value);
  bool degraded() const;
  // changed: called (on a cluster thread) when degraded() or the leadership of a job changes.
  void SetOnChange(std::function<void()> f);

 private:
  ClusterNode() = default;
  void Loop();
  mailseal::Status Sync();   // full read, then the watch from the revision after it
  void Apply(const std::vector<WatchEvent>& events, int64_t revision);
  void ApplyOne(const WatchEvent& e);
  void SyncPolicy();
  mailseal::Status KeepLease();
  void Campaign();
  void PutRecord(bool force);
  void Anchor();
  void CheckAnchor(const std::string& node, const mailseal::v1::AuditAnchor& a);
  void RaiseAlarm(const std::string& node, const std::string& reason, const mailseal::v1::TreeHead& anchored,
                  const mailseal::v1::TreeHead& offered);
  void SetDegraded(const std::string& why);
  void Changed();
  std::string Key(const std::string& rest) const { return prefix_ + rest; }

  ClusterOptions options_;
  ClusterHooks hooks_;
  std::string prefix_;
  std::unique_ptr<EtcdClient> etcd_;
  std::unique_ptr<Watch> watch_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool synced_ = false;          // a full read has been applied
  bool watch_up_ = false;
  bool campaign_due_ = true;
  int64_t lease_ = 0;
  int64_t lease_ok_ms_ = 0;      // steady ms of the last successful keep-alive
  int64_t revision_ = 0;
  std::string degraded_;
  std::string last_record_;      // serialized NodeRecord last written (without its time)
  int64_t last_anchor_ms_ = 0;
  std::map<std::string, mailseal::v1::NodeRecord> members_;
  std::map<std::string, std::pair<std::string, int64_t>> leaders_;   // job -> (node, its lease)
  std::map<std::string, mailseal::v1::AuditAnchor> anchors_;   // the last believed anchor per node
  std::map<std::string, std::string> pinned_keys_;
  std::map<std::string, mailseal::v1::AuditAlarm> alarms_;
  std::function<void()> on_change_;
  std::mutex policy_mu_;         // one policy catch-up at a time
  std::thread thread_;
};

}  // namespace mailseal::cluster
