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

// TokenHandle: one opening of the token. Holders (crypto workers, for the length of a job or
// while their session lease lives) keep module and sessions alive across a re-open; the
// generation tells them their keys' object handles belong to an older opening.
struct TokenHandle {
  std::shared_ptr<Module> module;
  std::unique_ptr<SessionPool> pool;   // destroyed before the module
  uint64_t generation = 0;
  ~TokenHandle() { pool.reset(); }
};

class TokenManager {
 public:
  explicit TokenManager(TokenConfig cfg) : cfg_(std::move(cfg)) {}
  ~TokenManager();

  // Tick probes or re-opens; returns whether the token is available afterwards.
  bool Tick();
  bool available() const { return available_.load(std::memory_order_acquire); }
  // Handle: the current opening (sessions for crypto workers); null while unavailable. Callers
  // must treat any failing operation as "token maybe gone" (the next Tick confirms it).
  std::shared_ptr<TokenHandle> Handle() const;
  const std::string& last_error() const { return last_error_; }
  uint64_t outages() const { return outages_; }

 private:
  Status Open();
  void Close();

  TokenConfig cfg_;
  mutable std::mutex mu_;
  std::shared_ptr<TokenHandle> handle_;   // under mu_
  std::weak_ptr<TokenHandle> previous_;   // a closed opening, until its last holder lets go
  uint64_t generation_ = 0;
  CK_SLOT_ID slot_ = 0;
  std::atomic<bool> available_{false};
  bool ever_opened_ = false;
  std::string last_error_;
  uint64_t outages_ = 0;
};

}  // namespace mailseal::hsm
