// smtp_server.h — the kernel back end's net threads: epoll loops that accept SMTP clients
// and drive one sans-I/O ServerSession per connection.
//
// SECURITY: clients are untrusted. Relay control: only trusted_networks may send to any
// domain; others only to local_domains. Memory per connection is bounded (session limits,
// output buffer cap: a client that does not read its replies is not read from either).
// A message is acknowledged (250) only after the Committer reports it durable.
// STARTTLS (RFC 3207, SM-5) runs the TLS core (tls/session.h) inside the same event loop: TLS
// 1.2+ with ECDHE and AEAD only (SM-6.1); nothing pipelined behind STARTTLS is kept. SPF (RFC 7208,
// SM-5b) is checked at MAIL by the SpfChecker threads while the session waits; the verdict and
// the TLS parameters go into the spool envelope for the inbound authentication mark (SM-8.2).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "dataplane/io/client_limiter.h"
#include "dataplane/io/event_loop.h"
#include "dataplane/io/spf_checker.h"
#include "dataplane/policy/snapshot.h"
#include "dataplane/queue/committer.h"
#include "dataplane/queue/queue_manager.h"
#include "dataplane/queue/spool.h"

struct ssl_ctx_st;   // OpenSSL's SSL_CTX

namespace mailseal::io {

struct ServerContext {
  policy::PolicyStore* policy = nullptr;
  queue::Spool* spool = nullptr;
  queue::Committer* committer = nullptr;
  queue::QueueManager* qmgr = nullptr;
  // hsm_available, when set, is false while the security module is unreachable: every new
  // transaction is then answered 451 (fail safe, SEE-AG-4).
  const std::atomic<bool>* hsm_available = nullptr;
  // audit_available, when set, is false once mail events can no longer be recorded: every new
  // transaction is then answered 451 (fail closed, issue #12).
  const std::atomic<bool>* audit_available = nullptr;
  // tls_ctx, when set, serves STARTTLS (owned by the caller; see tls::MakeServerContext).
  ssl_ctx_st* tls_ctx = nullptr;
  // spf, when set, checks clients outside trusted_networks (SM-5b) unless the policy says off.
  SpfChecker* spf = nullptr;
  // limiter, when set, applies the per-client connection limits (issue #13); shared by all
  // net threads.
  ClientLimiter* limiter = nullptr;
};

// OpenListener: a non-blocking listening socket with SO_REUSEPORT. `port` 0 picks one;
// the chosen port is written back.
Result<int> OpenListener(const std::string& ip, uint16_t* port);

class NetThread {
 public:
  NetThread(int index, ServerContext ctx, std::vector<int> listen_fds);
  ~NetThread();
  void Start();
  // BeginDrain (any thread): stop accepting, answer 421 to idle sessions, let transactions
  // finish until deadline_ms (monotonic), then close the rest and end the thread.
  void BeginDrain(int64_t deadline_ms);
  void Join();

 private:
  class Listener;
  class Conn;
  void Tick();
  void AfterBatch();
  void Accept(int listen_fd);
  // Refuse: answer 421 on a connection we will not serve and close it.
  static void Refuse(int fd, const char* reply);
  // OutOfDescriptors: accept failed with EMFILE/ENFILE — drain one waiting client politely with
  // the reserve descriptor, and pause accepting for a second if even that fails.
  void OutOfDescriptors(int listen_fd);
  void CloseConn(Conn* c);

  int index_;
  ServerContext ctx_;
  std::vector<int> listen_fds_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  EventLoop loop_;
  std::thread thread_;
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::vector<std::unique_ptr<Conn>> dead_;
  uint64_t next_conn_id_ = 1;
  bool draining_ = false;
  int64_t drain_deadline_ms_ = 0;
  // Per-client accounting: the limiter key of each limited connection (released on close).
  std::unordered_map<uint64_t, std::string> limited_;
  // At the descriptor limit: a descriptor kept in reserve to refuse politely, accepting paused
  // until paused_until_ms_, and a log line at most every 10 s with the count since.
  int reserve_fd_ = -1;
  int64_t paused_until_ms_ = 0;
  int64_t last_refusal_log_ms_ = 0;
  uint64_t refusals_since_log_ = 0;
  void LogRefusal(const std::string& what, const std::string& client);
  // Free bytes on the spool's file system, refreshed every tick (MAIL checks it, issue #13).
  uint64_t spool_free_bytes_ = UINT64_MAX;
  void UpdateSpoolFree();
};

}  // namespace mailseal::io
