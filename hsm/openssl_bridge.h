// openssl_bridge.h — token keys as OpenSSL EVP_PKEYs, for CMS and TLS code.
//
// Choice: libp11's "pkcs11" ENGINE (Debian libengine-pkcs11-openssl), which the design card
// names. OpenSSL 3's provider route would be cleaner, but pkcs11-provider is not in Debian 12
// and a provider of our own is a project of its own. The ENGINE API is deprecated in OpenSSL
// 3.0; the deprecation is silenced in this one file. The engine loads the same PKCS#11 module
// into the process; Module (module.h) shares its initialisation and never finalizes it under
// the engine.
//
// Lifetime: open the bridge once per process, after the Module, and keep both to the end.
// libp11 keeps its slot and session state in the engine across ENGINE_finish/ENGINE_init, so
// finalising and re-initialising the module under a live engine leaves it with dead session
// handles (CKR_SESSION_HANDLE_INVALID). Tests therefore run one test per process (ctest).
//
// SECURITY: the PIN reaches the engine through ENGINE_ctrl_cmd_string, never argv/env. The
// EVP_PKEY holds a handle to the token key, never the key itself.
#pragma once

#include <openssl/evp.h>

#include <memory>
#include <string>

#include "dataplane/base/status.h"
#include "hsm/secret.h"

typedef struct engine_st ENGINE;

namespace mailseal::hsm {

class OpenSslBridge {
 public:
  static Result<std::unique_ptr<OpenSslBridge>> Open(const std::string& module_path, const Secret& pin);
  ~OpenSslBridge();
  OpenSslBridge(const OpenSslBridge&) = delete;
  OpenSslBridge& operator=(const OpenSslBridge&) = delete;

  // LoadPrivateKey: the key labelled `key_label` on the token `token_label` (caller frees).
  Result<EVP_PKEY*> LoadPrivateKey(const std::string& token_label, const std::string& key_label);

 private:
  OpenSslBridge() = default;
  ENGINE* engine_ = nullptr;
};

// Pkcs11Uri: RFC 7512 URI for a private key, with path-attribute escaping.
std::string Pkcs11Uri(const std::string& token_label, const std::string& key_label);

}  // namespace mailseal::hsm
