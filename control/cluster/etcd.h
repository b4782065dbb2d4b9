// etcd.h — a client of etcd's v3 API over gRPC (issue #20), generated from etcd's own .proto
// files (Debian's golang-etcd-server-dev): KV with revisions, transactions (compare-and-swap),
// leases with keep-alive, and watches that resume from the last revision seen after a
// disconnect, so no event is missed (or, when etcd has compacted past it, the caller is told to
// read the state again).
//
// Endpoints are IP literals ("127.0.0.1:2379", "[::1]:2379"); one gRPC channel holds them all
// and fails over between them (pick_first). TLS to etcd with a CA (and a client certificate for
// etcd's --client-cert-auth); plaintext is for loopback only (checked by the configuration).
//
// SECURITY: etcd is shared with the other appliances and is not trusted more than they are:
// every value read is parsed with bounds by its user (cluster.h); replies here are size-bounded
// by the channel (4 MiB).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dataplane/base/status.h"

namespace grpc {
class Channel;
class ClientContext;
}  // namespace grpc

namespace mailseal::cluster {

struct EtcdOptions {
  std::vector<std::string> endpoints;   // "host:port", IP literals
  std::string ca_file;                  // empty: plaintext
  std::string cert_file, key_file;      // client certificate for etcd (optional)
  std::string server_name;              // name etcd's certificate must carry (empty: the endpoint)
  int request_timeout_ms = 2000;
};

struct KeyValue {
  std::string key, value;
  int64_t create_revision = 0, mod_revision = 0, version = 0, lease = 0;
};

struct RangeResult {
  std::vector<KeyValue> kvs;
  int64_t revision = 0;   // the store's revision when read
};

// Compare: one condition of a transaction (equality only: what compare-and-swap needs).
struct Compare {
  enum Target { kModRevision, kCreateRevision, kVersion, kValue };
  std::string key;
  Target target = kModRevision;
  int64_t number = 0;   // for the revisions and version (0 create_revision: the key is absent)
  std::string value;    // for kValue
};

struct Op {
  enum Kind { kPut, kDelete, kDeletePrefix };
  Kind kind = kPut;
  std::string key, value;
  int64_t lease = 0;
};

struct TxnResult {
  bool succeeded = false;
  int64_t revision = 0;
};

struct WatchEvent {
  enum Kind { kPut, kDelete };
  Kind kind = kPut;
  KeyValue kv;   // for kDelete: key and mod_revision only
};

class EtcdClient;

// Watch: events under a prefix from a revision, delivered in order on the watch's own thread.
// After a disconnect it reconnects (backing off to 1 s) and resumes from the revision after the
// last event delivered; `on_state` is told when the stream is up or down. When etcd has
// compacted the revision it needs, `on_compacted` is called: the caller reads the state again
// and returns the revision to go on from.
class Watch {
 public:
  using OnEvents = std::function<void(const std::vector<WatchEvent>& events, int64_t revision)>;
  using OnState = std::function<void(bool up, const std::string& why)>;
  using OnCompacted = std::function<int64_t()>;
  ~Watch();
  void Stop();
  int64_t next_revision() const { return next_rev_.load(); }

 private:
  friend class EtcdClient;
  Watch() = default;
  void Run();
  EtcdClient* client_ = nullptr;
  std::string prefix_;
  OnEvents on_events_;
  OnState on_state_;
  OnCompacted on_compacted_;
  std::atomic<int64_t> next_rev_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  grpc::ClientContext* ctx_ = nullptr;   // the stream's, for Stop (under mu_)
  std::thread thread_;
};

class EtcdClient {
 public:
  static Result<std::unique_ptr<EtcdClient>> Connect(const EtcdOptions& options);
  ~EtcdClient();

  Result<RangeResult> Get(const std::string& key);
  Result<RangeResult> GetPrefix(const std::string& prefix);
  // GetRange: the keys in [from, end).
  Result<RangeResult> GetRange(const std::string& from, const std::string& end) { return Range(from, end); }
  // Put returns the store's revision after the write.
  Result<int64_t> Put(const std::string& key, const std::string& value, int64_t lease = 0);
  Result<int64_t> Delete(const std::string& key);
  // Txn: if every compare holds, the success ops run, else the failure ops; atomically.
  Result<TxnResult> Txn(const std::vector<Compare>& compares, const std::vector<Op>& success,
                        const std::vector<Op>& failure = {});

  // Leases: Grant returns the id; KeepAlive renews once and returns the TTL left (NotFound when
  // the lease has expired); Revoke ends it (its keys go).
  Result<int64_t> LeaseGrant(int64_t ttl_s);
  Result<int64_t> LeaseKeepAlive(int64_t id);
  Status LeaseRevoke(int64_t id);

  std::unique_ptr<Watch> WatchPrefix(const std::string& prefix, int64_t start_revision, Watch::OnEvents on_events,
                                     Watch::OnState on_state, Watch::OnCompacted on_compacted);

  // PrefixEnd: the range_end that makes [prefix, end) every key under prefix.
  static std::string PrefixEnd(const std::string& prefix);

 private:
  friend class Watch;
  EtcdClient() = default;
  void SetDeadline(grpc::ClientContext* ctx) const;
  Result<int64_t> LeaseKeepAliveOnce(int64_t id);
  Result<RangeResult> Range(const std::string& key, const std::string& end);
  EtcdOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  struct Stubs;
  std::unique_ptr<Stubs> stubs_;
};

}  // namespace mailseal::cluster
