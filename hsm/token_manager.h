// token_manager.h — keeps the gateway's token open, watches it, and re-opens it when it
// comes back (REQUIREMENTS.md SEE-AG-4: fail safe).
//
// Tick() is called by the control thread every health interval. Healthy: one cheap probe
// (C_GetTokenInfo). On a failed probe the manager marks the token unavailable at once (the
// data plane then answers 4xx and holds mail), closes every session, and on each later tick
// tries to re-open it from scratch — C_Finalize, C_Initialize, find the token, open the
// session pool, log in — until that works. State changes are logged with the PKCS#11 reason.
//
// SECURITY: the PIN is read from its file at every (re)open and wiped after login; it is
// never kept in memory between attempts.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "dataplane/base/status.h"
#include "hsm/module.h"

namespace mailseal::hsm {

struct TokenConfig {
  std::string module_path;
  std::string token_label;
  std::string token_serial;
  std::string pin_file;
  size_t sessions = 2;
};

class TokenManager {
 public:
  explicit TokenManager(TokenConfig cfg) : cfg_(std::move(cfg)) {}
  ~TokenManager();

  // Tick probes or re-opens; returns whether the token is available afterwards.
  bool Tick();
  bool available() const { return available_.load(std::memory_order_acquire); }
  // Pool: sessions for crypto workers; nullptr while unavailable. Callers must treat any
  // UNAVAILABLE error from an operation as "token gone" (the next Tick confirms it).
  SessionPool* pool() { return pool_.get(); }
  const std::string& last_error() const { return last_error_; }
  uint64_t outages() const { return outages_; }

 private:
  Status Open();
  void Close();

  TokenConfig cfg_;
  std::unique_ptr<Module> module_;
  std::unique_ptr<SessionPool> pool_;
  CK_SLOT_ID slot_ = 0;
  std::atomic<bool> available_{false};
  bool ever_opened_ = false;
  std::string last_error_;
  uint64_t outages_ = 0;
};

}  // namespace mailseal::hsm
