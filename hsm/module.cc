// module.cc — see module.h. STANDARDS: PKCS#11 v2.40 (OASIS), C_Initialize with
// CKF_OS_LOCKING_OK, CKF_SERIAL_SESSION | CKF_RW_SESSION sessions.
#include "hsm/module.h"

#include <dlfcn.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>

#include "hsm/ckr.h"

namespace mailseal::hsm {
namespace {
std::string Trim(const unsigned char* p, size_t n) {
  std::string s(reinterpret_cast<const char*>(p), n);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}
}  // namespace

Status Check(CK_RV rv, std::string_view op) {
  if (rv == CKR_OK) return OkStatus();
  StatusCode code = StatusCode::kInternal;
  switch (rv) {
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
    case CKR_USER_NOT_LOGGED_IN:
      code = StatusCode::kUnauthenticated;
      break;
    case CKR_PIN_LOCKED:
    case CKR_PIN_EXPIRED:
    case CKR_DEVICE_REMOVED:
    case CKR_DEVICE_ERROR:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
    case CKR_DEVICE_MEMORY:
      code = StatusCode::kUnavailable;
      break;
    case CKR_ATTRIBUTE_SENSITIVE:
    case CKR_ATTRIBUTE_READ_ONLY:
    case CKR_KEY_UNEXTRACTABLE:
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
      code = StatusCode::kPermissionDenied;
      break;
    case CKR_MECHANISM_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_KEY_TYPE_INCONSISTENT:
    case CKR_KEY_SIZE_RANGE:
    case CKR_ENCRYPTED_DATA_INVALID:
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
    case CKR_DATA_LEN_RANGE:
    case CKR_WRAPPED_KEY_INVALID:
    case CKR_SIGNATURE_INVALID:
    case CKR_ARGUMENTS_BAD:
      code = StatusCode::kInvalidArgument;
      break;
    default:
      break;
  }
  return Status(code, StrCat(op, " failed: ", CkrName(rv)));
}

Result<std::unique_ptr<Module>> Module::Load(const std::string& path) {
  std::unique_ptr<Module> m(new Module());
  m->path_ = path;
  m->handle_ = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!m->handle_) {
    const char* e = ::dlerror();
    return FailedPreconditionError(StrCat("PKCS#11 module ", path, ": ", e ? e : "dlopen failed"));
  }
  auto get = reinterpret_cast<CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR)>(::dlsym(m->handle_, "C_GetFunctionList"));
  if (!get) return FailedPreconditionError(StrCat("PKCS#11 module ", path, ": no C_GetFunctionList"));
  if (Status s = Check(get(&m->fn_), "C_GetFunctionList"); !s.ok()) return s;
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  CK_RV rv = m->fn_->C_Initialize(&args);
  if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    // Someone else in this process (libp11's engine) initialised it: share, never finalize.
    rv = CKR_OK;
  } else if (rv == CKR_OK) {
    m->initialized_by_us_ = true;
  }
  if (Status s = Check(rv, "C_Initialize"); !s.ok()) return s;
  return m;
}

Module::~Module() {
  if (fn_ && initialized_by_us_) fn_->C_Finalize(nullptr);
  // The module stays mapped: libraries that registered atexit handlers or threads (and the
  // OpenSSL engine, which may hold the same module) must not see it vanish.
}

Result<std::vector<SlotInfo>> Module::Slots() const {
  CK_ULONG n = 0;
  if (Status s = Check(fn_->C_GetSlotList(CK_FALSE, nullptr, &n), "C_GetSlotList"); !s.ok()) return s;
  std::vector<CK_SLOT_ID> ids(n);
  if (Status s = Check(fn_->C_GetSlotList(CK_FALSE, ids.data(), &n), "C_GetSlotList"); !s.ok()) return s;
  ids.resize(n);
  std::vector<SlotInfo> out;
  for (CK_SLOT_ID id : ids) {
    SlotInfo si;
    si.slot = id;
    CK_SLOT_INFO info{};
    if (fn_->C_GetSlotInfo(id, &info) != CKR_OK) continue;
    si.token_present = info.flags & CKF_TOKEN_PRESENT;
    if (si.token_present) {
      CK_TOKEN_INFO ti{};
      if (fn_->C_GetTokenInfo(id, &ti) == CKR_OK) {
        si.initialized = ti.flags & CKF_TOKEN_INITIALIZED;
        si.label = Trim(ti.label, sizeof ti.label);
        si.serial = Trim(ti.serialNumber, sizeof ti.serialNumber);
        si.model = Trim(ti.model, sizeof ti.model);
      }
    }
    out.push_back(si);
  }
  return out;
}

Result<CK_SLOT_ID> Module::FindToken(const std::string& label, const std::string& serial) const {
  Result<std::vector<SlotInfo>> slots = Slots();
  if (!slots.ok()) return slots.status();
  for (const SlotInfo& s : *slots) {
    if (!s.token_present || !s.initialized) continue;
    if (!serial.empty() ? s.serial == serial : s.label == label) return s.slot;
  }
  return NotFoundError(StrCat("no initialised token with ", serial.empty() ? "label '" : "serial '",
                              serial.empty() ? label : serial, "' in ", path_));
}

Status Module::InitializeToken(CK_SLOT_ID slot, const std::string& label, const Secret& so_pin,
                               const Secret& user_pin, bool reinitialize) const {
  if (label.empty() || label.size() > 32) return InvalidArgumentError("token label must be 1..32 characters");
  CK_TOKEN_INFO ti{};
  if (Status s = Check(fn_->C_GetTokenInfo(slot, &ti), "C_GetTokenInfo"); !s.ok()) return s;
  if ((ti.flags & CKF_TOKEN_INITIALIZED) && !reinitialize)
    return FailedPreconditionError(StrCat("token in slot ", slot, " is already initialised"));
  unsigned char padded[32];
  std::memset(padded, ' ', sizeof padded);
  std::memcpy(padded, label.data(), label.size());
  std::string_view so = so_pin.Reveal();
  if (Status s = Check(fn_->C_InitToken(slot, reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(so.data())),
                                        so.size(), padded),
                       "C_InitToken");
      !s.ok())
    return s;
  Result<std::unique_ptr<Session>> sess = Session::Open(this, slot);
  if (!sess.ok()) return sess.status();
  CK_SESSION_HANDLE h = (*sess)->handle();
  if (Status s = Check(fn_->C_Login(h, CKU_SO, reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(so.data())),
                                    so.size()),
                       "C_Login(CKU_SO)");
      !s.ok())
    return s;
  std::string_view up = user_pin.Reveal();
  Status st = Check(fn_->C_InitPIN(h, reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(up.data())), up.size()),
                    "C_InitPIN");
  fn_->C_Logout(h);
  return st;
}

Result<std::unique_ptr<Session>> Session::Open(const Module* m, CK_SLOT_ID slot) {
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  if (Status s = Check(m->fn()->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &h),
                       "C_OpenSession");
      !s.ok())
    return s;
  return std::unique_ptr<Session>(new Session(m, h));
}

Session::~Session() { m_->fn()->C_CloseSession(h_); }

Status Session::Login(const Secret& pin) {
  std::string_view p = pin.Reveal();
  CK_RV rv = fn()->C_Login(h_, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(p.data())), p.size());
  if (rv == CKR_USER_ALREADY_LOGGED_IN) rv = CKR_OK;
  return Check(rv, "C_Login(CKU_USER)");
}

Result<std::unique_ptr<SessionPool>> SessionPool::Open(const Module* m, CK_SLOT_ID slot, size_t n,
                                                       const Secret& pin) {
  auto pool = std::unique_ptr<SessionPool>(new SessionPool());
  for (size_t i = 0; i < n; ++i) {
    Result<std::unique_ptr<Session>> s = Session::Open(m, slot);
    if (!s.ok()) return s.status();
    if (i == 0) {
      if (Status st = (*s)->Login(pin); !st.ok()) return st;
    }
    pool->free_.push_back(std::move(s.value()));
  }
  pool->n_ = n;
  return pool;
}

SessionPool::Lease SessionPool::Acquire() {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return !free_.empty(); });
  std::unique_ptr<Session> s = std::move(free_.back());
  free_.pop_back();
  return Lease(this, std::move(s));
}

void SessionPool::Release(std::unique_ptr<Session> s) {
  {
    std::lock_guard<std::mutex> l(mu_);
    free_.push_back(std::move(s));
  }
  cv_.notify_one();
}

}  // namespace mailseal::hsm
