// snapshot.h — the read-only policy snapshot the fast path reads (ARCHITECTURE.md).
//
// The control thread builds a new immutable snapshot and publishes it with an atomic
// shared_ptr swap; net threads load it once per connection/transaction, never under a lock.
// Today it holds relay control and SMTP limits; classification rules join with issue #6.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "dataplane/policy/cidr.h"
#include "dataplane/smtp/server_session.h"
#include "mailseal/v1/config.pb.h"

namespace mailseal::policy {

struct PolicySnapshot {
  uint64_t version = 0;
  smtp::ServerOptions smtp;
  std::vector<Cidr> trusted_networks;
  std::vector<std::string> local_domains;   // lower case; ".x" matches sub-domains
  uint32_t idle_timeout_ms = 300000;
  uint32_t max_connections = 4096;
  uint32_t max_connections_per_client = 50;
  uint32_t max_connection_rate_per_client = 600;   // per minute
  uint64_t min_free_spool_bytes = 100ull << 20;     // MAIL gets 452 below (plus the message twice)
  // SPF (SM-5b) for clients outside trusted_networks; securemail: SM-6.1's rules.
  enum class Spf { kEnforce, kMark, kOff };
  Spf spf = Spf::kEnforce;
  bool spf_accept_temperror = false;
  bool securemail = false;

  bool IsTrusted(const sockaddr* peer) const;
  // IsLocalDomain: mail to this domain is accepted from anyone.
  bool IsLocalDomain(const std::string& domain) const;
};

std::shared_ptr<const PolicySnapshot> BuildSnapshot(const mailseal::v1::Config& cfg, uint64_t version);

// SnapshotStore: where the current snapshot is published (control thread) and loaded (net
// threads). Not the policy document store (control::PolicyStore keeps the versioned documents).
class SnapshotStore {
 public:
  std::shared_ptr<const PolicySnapshot> Load() const { return current_.load(std::memory_order_acquire); }
  void Publish(std::shared_ptr<const PolicySnapshot> s) { current_.store(std::move(s), std::memory_order_release); }

 private:
  std::atomic<std::shared_ptr<const PolicySnapshot>> current_;
};

}  // namespace mailseal::policy
