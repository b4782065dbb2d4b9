// session.h — the sans-I/O TLS core: OpenSSL over memory BIOs, one for both directions.
//
// A Session never touches a socket: the caller feeds it the ciphertext that arrived
// (FeedCiphertext), takes the ciphertext to send (TakeCiphertext), writes plaintext in and
// reads plaintext out. The SMTP server endpoint (STARTTLS, RFC 3207, inbound) and the SMTP
// client endpoint (STARTTLS outbound) both use it, whatever transport carries the bytes —
// kernel sockets, the in-memory back end, or the DPDK back end's own TCP.
//
// SECURITY: the peer is untrusted. What one call can take in is bounded by the caller's reads
// (FeedCiphertext copies into a memory BIO; ReadPlain returns at most `max` bytes a call, so
// plaintext waits in OpenSSL until the session can take it). Contexts made here allow TLS 1.2
// or later with ECDHE key exchange and AEAD ciphers only, no renegotiation, no compression
// (SM-6.1). Peer verification is the context's business (MakeClientContext leaves it off:
// opportunistic TLS, RFC 7435; authenticated delivery comes with issue #16).
//
// STANDARDS: RFC 8446 (TLS 1.3), RFC 5246 (TLS 1.2), RFC 6066 §3 (SNI), RFC 7435.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "dataplane/base/status.h"

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct bio_st BIO;
typedef struct x509_st X509;
typedef struct evp_pkey_st EVP_PKEY;

namespace mailseal::tls {

// MakeServerContext loads a certificate chain and key (PEM) for STARTTLS. The key file must
// not be readable by group or others. An empty key_file leaves the key to UseServerKey (a key
// in the token, issue #16); the context serves nobody before it is set.
// `client_ca_file` (optional): a client certificate is requested (not required) from clients,
// naming these CAs; the handshake never fails over it — the caller judges PeerChain().
Result<SSL_CTX*> MakeServerContext(const std::string& cert_file, const std::string& key_file,
                                   const std::string& client_ca_file = "");
// CertificateKey: the public key of the context's certificate (borrowed).
EVP_PKEY* CertificateKey(SSL_CTX* ctx);
// UseServerKey sets the private key (e.g. hsm::SharedTokenKey::pkey()), which must be the
// certificate's.
Status UseServerKey(SSL_CTX* ctx, EVP_PKEY* key);
// MakeClientContext: SM-6.1 ciphers, the peer's certificate not verified (see above).
Result<SSL_CTX*> MakeClientContext();
void FreeContext(SSL_CTX* ctx);

class Session {
 public:
  enum class Role { kServer, kClient };
  enum class Read { kData, kWouldBlock, kClosed, kFailed };

  // Start a session on `ctx` (owned by the caller, alive as long as the session). `sni` is the
  // server name a client asks for (empty or an address literal: none).
  static Result<std::unique_ptr<Session>> Start(SSL_CTX* ctx, Role role, const std::string& sni = "");
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // FeedCiphertext: bytes that came from the peer.
  void FeedCiphertext(std::string_view bytes);
  // Handshake advances the handshake with what was fed; true once established. After a
  // failure failed() is true and error() says why (the alert, if any, is in TakeCiphertext).
  bool Handshake();
  // ReadPlain appends at most `max` decrypted bytes to *out.
  Read ReadPlain(std::string* out, size_t max);
  // WritePlain encrypts all of `bytes` (into the memory BIO: it never waits). False on failure.
  bool WritePlain(std::string_view bytes);
  // Close sends close_notify (after the last reply).
  void Close();
  // TakeCiphertext: what must go to the peer now (handshake messages, records, alerts).
  std::string TakeCiphertext();
  bool HasCiphertext() const;

  bool established() const { return established_; }
  bool failed() const { return failed_; }
  bool closed() const { return closed_; }
  const std::string& error() const { return error_; }
  // Description: "TLSv1.3 TLS_AES_256_GCM_SHA384" once established.
  const std::string& description() const { return description_; }
  // PeerChain: the certificates the peer sent, leaf first (owned by the session), once
  // established; empty when it sent none.
  std::vector<x509_st*> PeerChain() const;

 private:
  Session() = default;
  void Fail(const char* what);
  SSL* ssl_ = nullptr;
  BIO* rbio_ = nullptr;   // owned by ssl_
  BIO* wbio_ = nullptr;   // owned by ssl_
  bool established_ = false, failed_ = false, closed_ = false;
  std::string error_, description_;
};

}  // namespace mailseal::tls
