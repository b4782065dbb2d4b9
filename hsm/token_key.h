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

#include "dataplane/base/status.h"
#include "hsm/keys.h"
#include "hsm/module.h"

namespace mailseal::hsm {

// TokenPrivateKey: an EVP_PKEY (caller frees) for `key` whose private operations run on
// `session`, which must outlive it. RSA and EC (P-256/P-384) keys.
Result<EVP_PKEY*> TokenPrivateKey(Session* session, const KeyPair& key);

// TokenFailuresOnThisThread counts the private-key operations through such keys that the token
// refused on this thread. OpenSSL reports them only as "operation fail"; comparing the count
// before and after a seal or open tells a token failure (defer the mail) from bad input
// (hold it).
uint64_t TokenFailuresOnThisThread();

}  // namespace mailseal::hsm
