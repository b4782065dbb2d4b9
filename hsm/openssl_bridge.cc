// openssl_bridge.cc — see openssl_bridge.h.
#define OPENSSL_SUPPRESS_DEPRECATED  // ENGINE API: see openssl_bridge.h
#include "hsm/openssl_bridge.h"

#include "dataplane/base/openssl_error.h"

#include "dataplane/base/strings.h"

#include <cctype>

#include <openssl/engine.h>
#include <openssl/err.h>

namespace mailseal::hsm {
namespace {
}  // namespace

std::string Pkcs11Uri(const std::string& token_label, const std::string& key_label) {
  return StrCat("pkcs11:token=", base::PercentEncode(token_label), ";object=", base::PercentEncode(key_label), ";type=private");
}

Result<std::unique_ptr<OpenSslBridge>> OpenSslBridge::Open(const std::string& module_path, const Secret& pin) {
  std::unique_ptr<OpenSslBridge> b(new OpenSslBridge());
  ENGINE_load_builtin_engines();
  b->engine_ = ENGINE_by_id("pkcs11");
  if (!b->engine_) return FailedPreconditionError(StrCat("OpenSSL pkcs11 engine (libp11) not available: ", base::OpenSslError("")));
  if (!ENGINE_ctrl_cmd_string(b->engine_, "MODULE_PATH", module_path.c_str(), 0))
    return FailedPreconditionError(StrCat("pkcs11 engine MODULE_PATH: ", base::OpenSslError("")));
  if (!ENGINE_init(b->engine_)) {
    ENGINE_free(b->engine_);
    b->engine_ = nullptr;
    return UnavailableError(StrCat("pkcs11 engine init: ", base::OpenSslError("")));
  }
  std::string p(pin.Reveal());
  int ok = ENGINE_ctrl_cmd_string(b->engine_, "PIN", p.c_str(), 0);
  OPENSSL_cleanse(p.data(), p.size());
  if (!ok) return UnavailableError(StrCat("pkcs11 engine PIN: ", base::OpenSslError("")));
  return b;
}

OpenSslBridge::~OpenSslBridge() {
  if (engine_) {
    ENGINE_finish(engine_);
    ENGINE_free(engine_);
  }
}

Result<EVP_PKEY*> OpenSslBridge::LoadPrivateKey(const std::string& token_label, const std::string& key_label) {
  std::string uri = Pkcs11Uri(token_label, key_label);
  EVP_PKEY* k = ENGINE_load_private_key(engine_, uri.c_str(), nullptr, nullptr);
  if (!k) return NotFoundError(StrCat("cannot load ", uri, " through the pkcs11 engine: ", base::OpenSslError("")));
  return k;
}

}  // namespace mailseal::hsm
