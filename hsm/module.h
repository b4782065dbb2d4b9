// module.h — a loaded PKCS#11 module, its tokens, and sessions on them.
//
// SECURITY: the module path comes from the operator's config. Every PKCS#11 failure becomes a
// Status naming the call and the CKR_ code ("C_Sign(CKM_RSA_PKCS) failed: CKR_PIN_EXPIRED").
// Token-gone errors map to UNAVAILABLE so callers answer 4xx and hold mail (fail safe,
// SEE-AG-4). PINs are passed only as Secret and only to C_Login/C_InitToken/C_InitPIN.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dataplane/base/status.h"
#include "hsm/pkcs11.h"
#include "hsm/secret.h"

namespace mailseal::hsm {

// Check maps a return value: OK, or an error "<op> failed: CKR_NAME" with a fitting code.
Status Check(CK_RV rv, std::string_view op);

struct SlotInfo {
  CK_SLOT_ID slot = 0;
  bool token_present = false;
  bool initialized = false;
  std::string label;     // token label, trailing blanks removed
  std::string serial;
  std::string model;
};

class Module {
 public:
  // Load dlopens the module and calls C_Initialize (OS locking: we are multi-threaded).
  static Result<std::unique_ptr<Module>> Load(const std::string& path);
  ~Module();
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  CK_FUNCTION_LIST* fn() const { return fn_; }
  const std::string& path() const { return path_; }
  Result<std::vector<SlotInfo>> Slots() const;
  // FindToken: the slot holding the initialised token with this label (or serial, if given).
  Result<CK_SLOT_ID> FindToken(const std::string& label, const std::string& serial = "") const;
  // InitializeToken: C_InitToken with the SO PIN, then the user PIN (the "initialise the
  // appliance" ceremony step). Refuses a slot whose token is already initialised unless
  // `reinitialize` (which destroys every object on it).
  Status InitializeToken(CK_SLOT_ID slot, const std::string& label, const Secret& so_pin,
                         const Secret& user_pin, bool reinitialize = false) const;

 private:
  Module() = default;
  std::string path_;
  void* handle_ = nullptr;
  CK_FUNCTION_LIST* fn_ = nullptr;
  bool initialized_by_us_ = false;
};

// Session is one PKCS#11 session; closed on destruction.
class Session {
 public:
  static Result<std::unique_ptr<Session>> Open(const Module* m, CK_SLOT_ID slot);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  CK_FUNCTION_LIST* fn() const { return m_->fn(); }
  CK_SESSION_HANDLE handle() const { return h_; }
  const Module* module() const { return m_; }
  // Login as the normal user. Already logged in (another session of ours did it) is fine.
  Status Login(const Secret& pin);

 private:
  Session(const Module* m, CK_SESSION_HANDLE h) : m_(m), h_(h) {}
  const Module* m_;
  CK_SESSION_HANDLE h_;
};

// SessionPool: one session per crypto worker, logged in once, leased out one at a time.
class SessionPool {
 public:
  static Result<std::unique_ptr<SessionPool>> Open(const Module* m, CK_SLOT_ID slot, size_t n,
                                                   const Secret& pin);
  class Lease {
   public:
    Lease(SessionPool* p, std::unique_ptr<Session> s) : p_(p), s_(std::move(s)) {}
    Lease(Lease&&) = default;
    ~Lease() {
      if (s_) p_->Release(std::move(s_));
    }
    Session& operator*() { return *s_; }
    Session* operator->() { return s_.get(); }

   private:
    SessionPool* p_;
    std::unique_ptr<Session> s_;
  };
  // Acquire blocks until a session is free.
  Lease Acquire();
  size_t size() const { return n_; }

 private:
  void Release(std::unique_ptr<Session> s);
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Session>> free_;
  size_t n_ = 0;
};

}  // namespace mailseal::hsm
