// delivery_agent.h — one outbound SMTP delivery thread (the kernel back end's smtp client).
//
// Takes a job from the queue manager, finds the next hop (relay_host, or MX then addresses),
// drives a sans-I/O ClientSession and the TLS core over a stream of the network back end
// (io/transport.h; no socket call here) with deadlines on every wait on its own loop, and
// reports one reply per recipient. A connection is kept for up to 2 s for the next job to
// the same destination (connection cache).
//
// SECURITY: the next hop is untrusted: replies are bounded by ClientSession, every wait has a
// deadline. STARTTLS (RFC 3207) is used whenever offered (delivery.tls: opportunistic, SM-5)
// and is required for recipients whose policy rule says require_tls (no TLS: 4.7.5, retried);
// TLS 1.2 or later with ECDHE and AEAD ciphers only (SM-6.1). The next hop's certificate is
// not verified (opportunistic, RFC 7435): TLS here protects against passive listeners;
// content confidentiality against active ones is what S/MIME sealing is for.
#pragma once

#include <atomic>
#include <mutex>
#include <memory>
#include <string>
#include <thread>

#include "dataplane/io/dns.h"
#include "dataplane/io/transport.h"
#include "dataplane/queue/queue_manager.h"
#include "dataplane/smtp/client_session.h"
#include "dataplane/tls/session.h"
#include "dataplane/tls/dane.h"
#include "dataplane/tls/mta_sts.h"
#include "dataplane/tls/verify.h"


namespace mailseal::queue {

class DeliveryAgent {
 public:
  DeliveryAgent(QueueManager* qmgr, int index, io::Backend* network);
  ~DeliveryAgent();
  void Start();
  void Join();
  // Abort (any thread): break off the connection in use, for a prompt shutdown.
  void Abort();

 private:
  struct Connection {
    std::unique_ptr<io::Stream> stream;
    std::string destination;
    std::string remote;      // "host [ip]:port"
    std::unique_ptr<smtp::ClientSession> session;
    std::unique_ptr<tls::Session> tls_session;   // after STARTTLS
    std::string tls;         // "TLSv1.3 TLS_AES_256_GCM_SHA384", for logs
    tls::Level level = tls::Level::kNone;   // the security level this connection reached
    tls::Level asked = tls::Level::kNone;   // the level the job it was made for asked
  };
  // The TLS security level a job's destination asks for (issue #16), and the names its next
  // hop's certificate may carry besides the hop's own.
  struct TlsNeed {
    tls::Level level = tls::Level::kMay;
    std::vector<std::string> match;
    bool has_sts = false;      // the destination's MTA-STS policy applies (enforce or testing)
    tls::StsPolicy sts;
  };
  TlsNeed LevelFor(const DeliveryJob& job) const;
  // Trust for the verify level (delivery.tls_ca_file), loaded on first use.
  Result<const pki::TrustList*> VerifyTrust();
  std::unique_ptr<pki::TrustList> verify_trust_;
  // The transport, step by step with deadlines on this agent's own loop.
  Status Wait(bool read, int timeout_ms);
  Status RawWrite(std::string_view data, int timeout_ms);
  Result<size_t> RawRead(char* buf, size_t cap, int timeout_ms);
  Result<std::unique_ptr<io::Stream>> Open(const sockaddr_storage& to, int timeout_ms);
  // Through TLS once it is up.
  Status Write(std::string_view data, int timeout_ms);
  Result<size_t> Read(char* buf, size_t cap, int timeout_ms);
  Status StartTls(const std::string& host, int timeout_ms);
  SSL_CTX* tls_ctx_ = nullptr;
  void Run();
  DeliveryResult Deliver(const DeliveryJob& job);
  // Opens a session to the job's destination; on failure returns the reply for all rcpts.
  smtp::Reply Connect(const DeliveryJob& job, const TlsNeed& need);
  // Runs one transaction on conn_. Returns false when the connection broke.
  // `stale`: broken before the next hop answered anything (safe to retry on a new connection).
  bool Transact(const DeliveryJob& job, DeliveryResult* result, bool* stale);
  Status Pump(int timeout_ms);   // send pending output, read one batch of replies
  void CloseConnection(bool quit);

  QueueManager* qmgr_;
  int index_;
  std::thread thread_;
  std::unique_ptr<io::Resolver> resolver_;
  Connection conn_;
  io::Backend* network_;
  std::mutex loop_mu_;                 // guards loop_'s creation against Abort()
  std::unique_ptr<io::Loop> loop_;     // this agent's, made on its thread
  std::atomic<bool> aborted_{false};
};

}  // namespace mailseal::queue
