// tls_front.h — the management API's TLS, terminated by mailseal instead of gRPC (issue #13).
//
// Why: gRPC 1.51 reports a refused TLS handshake (no client certificate, another CA's, an
// expired one, TLS 1.2, not TLS at all) only as a log line without the client's address, and
// has no public setting for TLS 1.3 only. Here the handshake is OpenSSL's, under our own
// rules (TLS 1.3 only, a client certificate that chains to the management CA required, ALPN
// h2), so every refusal is known with the client's address and the reason; and the server's
// key is ours to place (the token, issue #16).
//
// How: a listening TCP socket; each accepted connection gets its own thread (management
// connections are few: at most `max_connections`, `max_per_address` from one address, more are
// refused and reported) that does
// the handshake, then connects to the gRPC server's private Unix socket from a socket bound to
// a random abstract name, and copies bytes both ways. gRPC sees that name as the peer
// ("unix-abstract:…"); Caller() maps it back to the certificate's name and the client's
// address while the connection lasts (the entry is removed before the socket closes, so a
// late lookup finds nothing and is refused, never another client's identity). The private
// socket lives in a directory only mailseald's user can enter.
//
// SECURITY: the peer is untrusted until its certificate verifies against the management CA
// (purpose sslclient, TLS 1.3 only, ALPN h2); the handshake has a deadline; connections are
// bounded; what a connection sends is copied in 16 KiB pieces, never accumulated.
//
// STANDARDS: RFC 8446 (TLS 1.3), RFC 7301 (ALPN), RFC 9113 (HTTP/2, carried, not parsed).
#pragma once

#include <openssl/ssl.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "dataplane/base/status.h"

namespace mailseal::control {

// Caller: who is on a management connection that passed the handshake.
struct Caller {
  std::string common_name;      // of the verified client certificate
  std::string client_address;   // "ip:port" as seen on the TCP connection
};

struct TlsFrontOptions {
  std::string listen;                          // "host:port" (port 0: any)
  std::string cert_pem, key_pem, client_ca_pem;
  EVP_PKEY* key = nullptr;                     // instead of key_pem: a token key (issue #16), borrowed
  std::string backend_path;                    // the gRPC server's Unix socket
  size_t max_connections = 64;
  int max_per_address = 8;   // one address cannot take every slot (a slow handshake holds one 10 s)
  int handshake_timeout_ms = 10000;
  // on_refused(client address, reason): a connection that did not become a management
  // session (handshake refused, too many connections). Called from connection threads.
  std::function<void(const std::string&, const std::string&)> on_refused;
};

class TlsFront {
 public:
  static Result<std::unique_ptr<TlsFront>> Start(TlsFrontOptions options);
  ~TlsFront();
  void Stop();
  int port() const { return port_; }
  // Caller of a gRPC peer string ("unix-abstract:<name>"); nothing if the connection is not
  // (or no longer) one of ours.
  std::optional<Caller> Lookup(const std::string& grpc_peer) const;

 private:
  TlsFront() = default;
  void AcceptLoop();
  void Serve(int fd, std::string address);
  TlsFrontOptions options_;
  SSL_CTX* ctx_ = nullptr;
  int listen_fd_ = -1, wake_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  mutable std::mutex mu_;
  std::map<std::string, Caller> callers_;   // by gRPC peer string
  std::map<int, std::thread> threads_;      // by client socket
  std::map<std::string, int> per_ip_;        // open connections by client address
  std::vector<std::thread> finished_;       // joined by the acceptor
};

}  // namespace mailseal::control
