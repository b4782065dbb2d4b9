// sha256_sign.h — SHA-256 signatures over a byte string with an EVP_PKEY (RSA PKCS#1 v1.5 or
// ECDSA, whatever the key is; a token key through the OpenSSL bridge too): tree heads,
// ceremony approvals, restored-key proofs. Header-only: every user links libcrypto already,
// mailseal_base does not.
#pragma once

#include <openssl/err.h>
#include <openssl/evp.h>

#include <string>
#include <string_view>

#include "dataplane/base/status.h"

namespace mailseal::base {

// Sha256Sign: the signature of `data` under `key`, or why not (OpenSSL's error queue is
// cleared either way).
inline Result<std::string> Sha256Sign(EVP_PKEY* key, std::string_view data) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  const auto* in = reinterpret_cast<const unsigned char*>(data.data());
  size_t len = 0;
  std::string sig;
  bool ok = ctx && EVP_DigestSignInit(ctx, nullptr, EVP_sha256(), nullptr, key) == 1 &&
            EVP_DigestSign(ctx, nullptr, &len, in, data.size()) == 1;
  if (ok) {
    sig.resize(len);
    ok = EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len, in, data.size()) == 1;
    sig.resize(len);
  }
  EVP_MD_CTX_free(ctx);
  unsigned long e = ERR_peek_last_error();
  std::string why = e && ERR_reason_error_string(e) ? ERR_reason_error_string(e) : "the key refused";
  ERR_clear_error();
  if (!ok) return UnavailableError(StrCat("SHA-256 signature failed: ", why));
  return sig;
}

// Sha256Verify: whether `sig` is `key`'s signature of `data`.
inline bool Sha256Verify(EVP_PKEY* key, std::string_view data, std::string_view sig) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  bool ok = ctx && EVP_DigestVerifyInit(ctx, nullptr, EVP_sha256(), nullptr, key) == 1 &&
            EVP_DigestVerify(ctx, reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                             reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1;
  EVP_MD_CTX_free(ctx);
  ERR_clear_error();
  return ok;
}

}  // namespace mailseal::base
