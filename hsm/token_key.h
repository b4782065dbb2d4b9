// token_key.h — a token private key as an OpenSSL EVP_PKEY bound to one PKCS#11 session.
//
// Why not the libp11 engine (openssl_bridge.h) on the data plane: a crypto worker owns one
// session (ARCHITECTURE.md), and the engine keeps its own session pool and slot state that go
// stale when the TokenManager re-opens a module that came back. Here the EVP_PKEY carries an
// RSA_METHOD / EC_KEY_METHOD whose private operations call C_Sign / C_Decrypt on the worker's
// own session and object handle; the public half is read from the token. OpenSSL treats such
// keys as "foreign" and keeps them on its legacy (method) path, so CMS signing and decryption
// use them unchanged. Padding that the token lacks (OAEP with SHA-256 in SoftHSM 2.6, PSS
// with CMS's parameters) is done by OpenSSL around a raw CKM_RSA_X_509 operation; the key
// itself never leaves the token.
//
// Thread safety: a key is used by the thread that owns its Session, never concurrently.
// SECURITY: no private key material exists outside the token; the EVP_PKEY holds a handle.
#pragma once

#include <openssl/evp.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "dataplane/base/status.h"
#include "hsm/keys.h"
#include "hsm/module.h"
#include "hsm/token_manager.h"

namespace mailseal::hsm {

// TokenPrivateKey: an EVP_PKEY (caller frees) for `key` whose private operations run on
// `session`, which must outlive it. RSA and EC (P-256/P-384) keys.
Result<EVP_PKEY*> TokenPrivateKey(Session* session, const KeyPair& key);

// TokenFailuresOnThisThread counts the private-key operations through such keys that the token
// refused on this thread. OpenSSL reports them only as "operation fail"; comparing the count
// before and after a seal or open tells a token failure (defer the mail) from bad input
// (hold it).
uint64_t TokenFailuresOnThisThread();

// SharedTokenKey: a token key for the TLS servers — STARTTLS on every net thread and the
// management API's front (issue #16, SEE-2.4b: no private key of the appliance is a file).
// Handshakes sign on several threads at once and must survive the token being re-opened, so
// unlike TokenPrivateKey the key is not tied to one session: each private operation leases a
// session from the TokenManager's current opening (the pool has one spare per shared key), and
// the key object is found by label on the first use of each opening and checked to be the
// certificate's key. The EVP_PKEY's public half is the certificate's, so a context can be set
// up while the token is away; operations then fail (the handshake fails; nothing falls back to
// another key) until it is back.
class SharedTokenKey {
 public:
  // certificate_key: the public key of the certificate served with this key (copied).
  static Result<std::unique_ptr<SharedTokenKey>> Create(TokenManager* token, std::string label,
                                                        EVP_PKEY* certificate_key);
  ~SharedTokenKey();
  SharedTokenKey(const SharedTokenKey&) = delete;
  SharedTokenKey& operator=(const SharedTokenKey&) = delete;

  // pkey: for SSL_CTX_use_PrivateKey (borrowed; lives as long as this object).
  EVP_PKEY* pkey() const { return pkey_; }
  const std::string& label() const { return label_; }
  // Check: the key can be used now (found, the certificate's). For start-up.
  Status Check();
  // WithKey runs fn on a leased session with the key's object handle.
  Status WithKey(const std::function<void(Session*, CK_OBJECT_HANDLE)>& fn);

 private:
  SharedTokenKey() = default;
  TokenManager* token_ = nullptr;
  std::string label_;
  EVP_PKEY* public_ = nullptr;   // the certificate's
  EVP_PKEY* pkey_ = nullptr;     // public_ bound to this object's private operations
  std::mutex mu_;
  uint64_t generation_ = 0;      // the token opening priv_ belongs to (under mu_)
  CK_OBJECT_HANDLE priv_ = CK_INVALID_HANDLE;
};

}  // namespace mailseal::hsm
