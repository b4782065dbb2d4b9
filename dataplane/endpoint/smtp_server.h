// smtp_server.h — the SMTP server endpoint: one per net thread, on the loop its network back
// end gives it (io/transport.h: kernel, memory, DPDK), accepting SMTP clients and driving one
// sans-I/O ServerSession (and TLS core) per connection. Nothing here calls a socket function.
//
// SECURITY: clients are untrusted. Relay control: only trusted_networks may send to any
// domain; others only to local_domains. Connections are limited in all (trusted networks keep
// 1/8) and per client address (io::ClientLimiter). Memory per connection is bounded (session
// limits, output buffer cap: a client that does not read its replies is not read from either).
// A message is acknowledged (250) only after the Committer reports it durable.
// STARTTLS (RFC 3207, SM-5) runs the TLS core (tls/session.h) inside the same event loop: TLS
// 1.2+ with ECDHE and AEAD only (SM-6.1); nothing pipelined behind STARTTLS is kept. SPF (RFC
// 7208, SM-5b) is checked at MAIL by the SpfChecker threads while the session waits; the verdict
// and the TLS parameters go into the spool envelope for the inbound authentication mark (SM-8.2).
//
// STANDARDS: RFC 5321 (through smtp::ServerSession), RFC 3207, RFC 3848 (Received "with").
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "dataplane/directory/recipients.h"
#include "dataplane/io/client_limiter.h"
#include "dataplane/io/spf_checker.h"
#include "dataplane/io/transport.h"
#include "dataplane/pki/validator.h"
#include "dataplane/policy/snapshot.h"
#include "dataplane/queue/committer.h"
#include "dataplane/queue/queue_manager.h"
#include "dataplane/queue/spool.h"

struct ssl_ctx_st;   // OpenSSL's SSL_CTX

namespace mailseal::endpoint {

struct ServerContext {
  policy::SnapshotStore* policy = nullptr;
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
  // client_trust, when set, judges the client certificates tls_ctx asks for (tls.client_ca_file).
  const pki::TrustList* client_trust = nullptr;
  // spf, when set, checks clients outside trusted_networks (SM-5b) unless the policy says off.
  io::SpfChecker* spf = nullptr;
  // limiter, when set, applies the per-client connection limits (issue #13); shared by all
  // net threads.
  io::ClientLimiter* limiter = nullptr;
  // directory, when set, checks local recipients at RCPT (DE-11, issue #19): those of
  // `directory_domains` (lower case), or of every local domain when that is empty.
  directory::RecipientDirectory* directory = nullptr;
  std::vector<std::string> directory_domains;
};

class SmtpServer {
 public:
  // index: the net thread's number (its listener in the back end).
  SmtpServer(int index, ServerContext ctx, io::Backend* backend);
  ~SmtpServer();
  Status Start();
  // BeginDrain (any thread): stop accepting, answer 421 to idle sessions, let transactions
  // finish until deadline_ms (monotonic, base::SteadyMs), then close the rest and end the thread.
  void BeginDrain(int64_t deadline_ms);
  void Join();

 private:
  class Conn;
  void Tick();
  void AfterBatch();
  void Accept(std::unique_ptr<io::Stream> stream);
  // Refuse: answer `reply` on a connection we will not serve and close it.
  static void Refuse(std::unique_ptr<io::Stream> stream, const char* reply);
  void CloseConn(Conn* c);
  void LogRefusal(const std::string& what, const std::string& client);

  int index_;
  ServerContext ctx_;
  io::Backend* backend_;
  std::unique_ptr<io::Loop> loop_;
  std::unique_ptr<io::Listener> listener_;
  std::thread thread_;
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::vector<std::unique_ptr<Conn>> dead_;
  uint64_t next_conn_id_ = 1;
  bool draining_ = false;
  int64_t drain_deadline_ms_ = 0;
  // Per-client accounting: the limiter key of each limited connection (released on close).
  std::unordered_map<uint64_t, std::string> limited_;
  // Refusals are logged at most every 10 s with the count since.
  int64_t last_refusal_log_ms_ = 0;
  uint64_t refusals_since_log_ = 0;
  // Free bytes on the spool's file system, refreshed every tick (MAIL checks it, issue #13).
  uint64_t spool_free_bytes_ = UINT64_MAX;
  void UpdateSpoolFree();
};

}  // namespace mailseal::endpoint
