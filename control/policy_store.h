// policy_store.h — the versioned policy document (issue #5): every accepted change is a new
// version, stored durably (temp file, fsync, rename, directory fsync) with who set it and when;
// nothing is overwritten, so history and diffs are always available.
//
// SECURITY: documents come from authenticated administrators but are validated whole before
// storage (field named on refusal); the files read back at start are parsed with bounds
// (base::ReadFile) and a version that does not parse is an error, never skipped silently.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dataplane/base/status.h"
#include "mailseal/v1/policy.pb.h"

namespace mailseal::control {

// ValidatePolicy checks a document and normalises it (domains to lower case). Errors name the
// field: "field 'seemail_list[2].domain': 'a..b' is not a domain name".
Status ValidatePolicy(mailseal::v1::PolicyDocument* doc);

class PolicyStore {
 public:
  static Result<std::unique_ptr<PolicyStore>> Open(const std::string& dir);
  uint64_t current() const;
  // Get: version 0 means the current one; NOT_FOUND when there is none.
  Result<mailseal::v1::PolicyDocument> Get(uint64_t version) const;
  // Set: validates, refuses a stale expected_version (FAILED_PRECONDITION), stores version+1.
  Result<uint64_t> Set(mailseal::v1::PolicyDocument doc, uint64_t expected_version, const std::string& actor);
  Result<std::vector<std::string>> Diff(uint64_t from, uint64_t to) const;
  std::vector<mailseal::v1::PolicyVersionInfo> History() const;   // newest first
  // on_change is called with each newly stored version (and, by Publish, the current one),
  // under the store's lock: it must only publish a compiled snapshot.
  void SetOnChange(std::function<void(const mailseal::v1::PolicyDocument&)> f);

  // In a cluster (issue #20) a change goes to the cluster first (compare-and-swap in etcd, which
  // decides between concurrent changes on any node); the cluster installs every version here,
  // this node's own included, through Install. Set then returns what the replicator said.
  using Replicator = std::function<Status(const mailseal::v1::PolicyVersionRecord& record, uint64_t expected)>;
  void SetReplicator(Replicator r);
  // Install stores a version made elsewhere: it must be current()+1 (one already held is a
  // no-op); it is validated again (etcd is shared with the other nodes).
  Status Install(const mailseal::v1::PolicyVersionRecord& record);
  // Record: a stored version as the cluster keeps it.
  Result<mailseal::v1::PolicyVersionRecord> Record(uint64_t version) const;

 private:
  PolicyStore() = default;
  std::string dir_;
  mutable std::mutex mu_;
  std::vector<mailseal::v1::PolicyVersionInfo> history_;   // oldest first
  std::function<void(const mailseal::v1::PolicyDocument&)> on_change_;
  Replicator replicator_;
  Status WriteLocked(const mailseal::v1::PolicyDocument& doc, const mailseal::v1::PolicyVersionInfo& info);
};

}  // namespace mailseal::control
