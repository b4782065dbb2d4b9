// token_manager.cc — see token_manager.h.
#include "hsm/token_manager.h"

#include "dataplane/base/log.h"
#include "hsm/ckr.h"

namespace mailseal::hsm {
using base::Log;
using base::LogLevel;

TokenManager::~TokenManager() { Close(); }

void TokenManager::Close() {
  pool_.reset();
  module_.reset();  // C_Finalize (a fresh C_Initialize is what brings a vanished token back)
}

Status TokenManager::Open() {
  Result<std::unique_ptr<Module>> m = Module::Load(cfg_.module_path);
  if (!m.ok()) return m.status();
  Result<CK_SLOT_ID> slot = (*m)->FindToken(cfg_.token_label, cfg_.token_serial);
  if (!slot.ok()) return slot.status();
  Result<Secret> pin = ReadSecretFile(cfg_.pin_file);
  if (!pin.ok()) return pin.status();
  Result<std::unique_ptr<SessionPool>> pool = SessionPool::Open(m->get(), *slot, cfg_.sessions, *pin);
  if (!pool.ok()) return pool.status();
  module_ = std::move(m.value());
  pool_ = std::move(pool.value());
  slot_ = *slot;
  return OkStatus();
}

bool TokenManager::Tick() {
  if (available()) {
    CK_TOKEN_INFO ti{};
    CK_RV rv = module_->fn()->C_GetTokenInfo(slot_, &ti);
    if (rv == CKR_OK && (ti.flags & CKF_USER_PIN_LOCKED) == 0) return true;
    last_error_ = rv == CKR_OK ? "user PIN locked" : StrCat("C_GetTokenInfo failed: ", CkrName(rv));
    available_.store(false, std::memory_order_release);
    ++outages_;
    Log(LogLevel::kError, "hsm", "security module unavailable: mail suspended (4xx) until it is back",
        {{"token", cfg_.token_label}, {"reason", last_error_}});
    Close();
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
      {{"token", cfg_.token_label}, {"sessions", std::to_string(cfg_.sessions)}});
  return true;
}

}  // namespace mailseal::hsm
