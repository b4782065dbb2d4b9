// token_manager.cc — see token_manager.h.
#include "hsm/token_manager.h"

#include <unistd.h>

#include "dataplane/base/log.h"
#include "hsm/ckr.h"

namespace mailseal::hsm {
using base::Log;
using base::LogLevel;

TokenManager::~TokenManager() { Close(); }

void TokenManager::Close() {
  // The last holder's release closes the sessions and calls C_Finalize (a fresh C_Initialize
  // is what brings a vanished token back).
  std::lock_guard<std::mutex> l(mu_);
  if (handle_) previous_ = handle_;
  handle_.reset();
}

std::shared_ptr<TokenHandle> TokenManager::Handle() const {
  std::lock_guard<std::mutex> l(mu_);
  return handle_;
}

Status TokenManager::Open() {
  Result<std::unique_ptr<Module>> m = Module::Load(cfg_.module_path);
  if (!m.ok()) return m.status();
  Result<CK_SLOT_ID> slot = (*m)->FindToken(cfg_.token_label, cfg_.token_serial);
  if (!slot.ok()) return slot.status();
  Result<Secret> pin = ReadSecretFile(cfg_.pin_file, ::geteuid());   // the daemon's own file, even as root
  if (!pin.ok()) return pin.status();
  Result<std::unique_ptr<SessionPool>> pool = SessionPool::Open(m->get(), *slot, cfg_.sessions, *pin);
  if (!pool.ok()) return pool.status();
  auto h = std::make_shared<TokenHandle>();
  h->module = std::move(m.value());
  h->pool = std::move(pool.value());
  h->generation = ++generation_;
  slot_ = *slot;
  std::lock_guard<std::mutex> l(mu_);
  handle_ = std::move(h);
  return OkStatus();
}

bool TokenManager::Tick() {
  if (available()) {
    CK_TOKEN_INFO ti{};
    std::shared_ptr<TokenHandle> h = Handle();
    CK_RV rv = h ? h->module->fn()->C_GetTokenInfo(slot_, &ti) : CKR_DEVICE_REMOVED;
    if (rv == CKR_OK && (ti.flags & CKF_USER_PIN_LOCKED) == 0) return true;
    last_error_ = rv == CKR_OK ? "user PIN locked" : StrCat("C_GetTokenInfo failed: ", CkrName(rv));
    available_.store(false, std::memory_order_release);
    ++outages_;
    Log(LogLevel::kError, "hsm", "security module unavailable: mail suspended (4xx) until it is back",
        {{"token", cfg_.token_label}, {"reason", last_error_}});
    Close();
    return false;
  }
  // Re-open only once every holder of the closed opening let go (crypto workers do within a
  // second): C_Initialize must not meet a module a worker still uses.
  if (!previous_.expired()) {
    last_error_ = "waiting for crypto workers to release the previous sessions";
    return false;
  }
  Status st = Open();
  if (!st.ok()) {
    if (st.message() != last_error_ || !ever_opened_) {
      Log(LogLevel::kError, "hsm", "security module cannot be opened: mail suspended (4xx)",
          {{"token", cfg_.token_label}, {"reason", st.message()}});
    }
    last_error_ = st.message();
    ever_opened_ = true;
    Close();
    return false;
  }
  ever_opened_ = true;
  available_.store(true, std::memory_order_release);
  Log(LogLevel::kInfo, "hsm", outages_ ? "security module back: mail resumes" : "security module ready",
      {{"token", cfg_.token_label}, {"module", cfg_.module_path}, {"sessions", std::to_string(cfg_.sessions)}});
  return true;
}

}  // namespace mailseal::hsm
