// at_rest_keys.cc — see at_rest_keys.h.
#include "dataplane/sealing/at_rest_keys.h"

#include <dirent.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <sstream>

#include "dataplane/base/file.h"
#include "dataplane/base/log.h"
#include "dataplane/base/strings.h"
#include "hsm/keys.h"

namespace mailseal::sealing {
namespace {
using base::Log;
using base::LogLevel;

constexpr char kHeader[] = "mailseal data key v1";

int64_t NowS() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

bool ValidId(std::string_view id) {
  if (id.size() != 16) return false;
  for (char c : id)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

std::shared_ptr<const queue::DataKey> MakeKey(std::string id, const hsm::Secret& k) {
  auto key = std::make_shared<queue::DataKey>();
  key->id = std::move(id);
  std::memcpy(key->key.data(), k.Reveal().data(), key->key.size());
  return key;
}

// The token's KEK for the spool, made when it is missing.
Result<CK_OBJECT_HANDLE> Kek(hsm::Session& s, const std::string& label, bool* created) {
  Result<CK_OBJECT_HANDLE> kek = hsm::FindSecretKey(s, label);
  if (kek.ok() || kek.status().code() != StatusCode::kNotFound || !created) return kek;
  kek = hsm::GenerateAesBlockKek(s, label, hsm::Purpose::kSpool);
  if (kek.ok()) *created = true;
  return kek;
}
}  // namespace

Result<std::shared_ptr<TokenAtRestKeys>> TokenAtRestKeys::Open(hsm::TokenManager* token, AtRestOptions options,
                                                               bool* created_kek) {
  if (!token) return FailedPreconditionError("encryption at rest needs a security module (hsm section)");
  if (::mkdir(options.dir.c_str(), 0700) != 0 && errno != EEXIST)
    return InternalError(StrCat("mkdir ", options.dir, ": ", std::strerror(errno)));
  std::shared_ptr<TokenAtRestKeys> ring(new TokenAtRestKeys(token, std::move(options)));
  {
    std::shared_ptr<hsm::TokenHandle> h = token->Handle();
    if (!h) return UnavailableError(StrCat("security module unavailable: ", token->last_error()));
    hsm::SessionPool::Lease lease = h->pool->Acquire();
    bool made = false;
    Result<CK_OBJECT_HANDLE> kek = Kek(*lease, ring->options_.kek_label, ring->options_.read_only ? nullptr : &made);
    if (!kek.ok()) return Status(kek.status().code(), StrCat("at_rest.kek_label '", ring->options_.kek_label, "': ", kek.status().message()));
    if (created_kek) *created_kek = made;
  }
  if (Status st = ring->LoadAll(); !st.ok()) return st;
  if (ring->options_.read_only) return ring;
  if (Status st = ring->MakeCurrent(); !st.ok()) return st;
  return ring;
}

Status TokenAtRestKeys::LoadAll() {
  DIR* dir = ::opendir(options_.dir.c_str());
  if (!dir) return InternalError(StrCat("opendir ", options_.dir, ": ", std::strerror(errno)));
  std::vector<std::string> names;
  while (dirent* e = ::readdir(dir)) {
    std::string n = e->d_name;
    if (n.size() == 20 && n.ends_with(".key") && ValidId(n.substr(0, 16))) names.push_back(n);
  }
  ::closedir(dir);
  std::shared_ptr<hsm::TokenHandle> h = token_->Handle();
  if (!h) return UnavailableError(StrCat("security module unavailable: ", token_->last_error()));
  hsm::SessionPool::Lease lease = h->pool->Acquire();
  std::map<std::string, CK_OBJECT_HANDLE> keks;
  for (const std::string& n : names) {
    std::string path = StrCat(options_.dir, "/", n);
    Result<std::string> text = base::ReadFile(path, 4096);
    if (!text.ok()) return text.status();
    std::istringstream in(*text);
    std::string header, kek_line, wrapped_line, wrapped;
    std::getline(in, header);
    std::getline(in, kek_line);
    std::getline(in, wrapped_line);
    if (header != kHeader || !kek_line.starts_with("kek ") || !wrapped_line.starts_with("wrapped ") ||
        !base::FromHexLower(wrapped_line.substr(8), &wrapped))
      return DataLossError(StrCat(path, ": not a wrapped data key"));
    std::string label = kek_line.substr(4);
    auto it = keks.find(label);
    if (it == keks.end()) {
      Result<CK_OBJECT_HANDLE> kek = hsm::FindSecretKey(*lease, label);
      if (!kek.ok()) return Status(kek.status().code(), StrCat(path, ": its KEK '", label, "': ", kek.status().message()));
      it = keks.emplace(label, *kek).first;
    }
    Result<hsm::Secret> k = hsm::KwUnwrapDataKey(*lease, it->second, wrapped);
    if (!k.ok()) return Status(k.status().code(), StrCat(path, ": ", k.status().message()));
    if (k->Reveal().size() != 32) return DataLossError(StrCat(path, ": not a 256-bit key"));
    std::string id = n.substr(0, 16);
    std::lock_guard<std::mutex> l(mu_);
    keys_[id] = MakeKey(id, *k);
  }
  return OkStatus();
}

Status TokenAtRestKeys::MakeCurrent() {
  std::shared_ptr<hsm::TokenHandle> h = token_->Handle();
  if (!h) return UnavailableError(StrCat("security module unavailable: ", token_->last_error()));
  Result<hsm::Secret> k = hsm::NewDataKey();
  if (!k.ok()) return k.status();
  std::string wrapped;
  {
    hsm::SessionPool::Lease lease = h->pool->Acquire();
    Result<CK_OBJECT_HANDLE> kek = hsm::FindSecretKey(*lease, options_.kek_label);
    if (!kek.ok()) return kek.status();
    Result<std::string> w = hsm::KwWrapDataKey(*lease, *kek, *k);
    if (!w.ok()) return w.status();
    wrapped = std::move(w.value());
  }
  unsigned char rnd[8];
  if (RAND_bytes(rnd, sizeof rnd) != 1) return InternalError("no randomness");
  std::string id = base::HexLower(std::string_view(reinterpret_cast<char*>(rnd), sizeof rnd));
  // Durable before any record is sealed under it: a file must never name a key that is lost.
  if (Status st = base::WriteFileDurably(StrCat(options_.dir, "/", id, ".key"),
                                         StrCat(kHeader, "\nkek ", options_.kek_label, "\nwrapped ", base::HexLower(wrapped), "\n"));
      !st.ok())
    return st;
  std::shared_ptr<const queue::DataKey> key = MakeKey(id, *k);
  std::lock_guard<std::mutex> l(mu_);
  keys_[id] = key;
  current_ = std::move(key);
  current_since_s_ = NowS();
  return OkStatus();
}

std::shared_ptr<const queue::DataKey> TokenAtRestKeys::Current() {
  std::lock_guard<std::mutex> l(mu_);
  return current_;
}

Result<std::shared_ptr<const queue::DataKey>> TokenAtRestKeys::Find(std::string_view id) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = keys_.find(id);
  if (it == keys_.end())
    return UnavailableError(StrCat("data key ", id, " is not in the key ring (its wrapped file in ", options_.dir, " is missing)"));
  return it->second;
}

Result<bool> TokenAtRestKeys::Rotate(bool force) {
  {
    std::lock_guard<std::mutex> l(mu_);
    bool due = !current_ || NowS() - current_since_s_ >= options_.rotate_s ||
               current_->sealed.load(std::memory_order_relaxed) >= queue::kMaxRecordsPerKey;
    if (!force && !due) return false;
  }
  if (Status st = MakeCurrent(); !st.ok()) return st;
  Log(LogLevel::kInfo, "at-rest", "spool data key rotated", {{"key", current_id()}});
  return true;
}

size_t TokenAtRestKeys::size() const {
  std::lock_guard<std::mutex> l(mu_);
  return keys_.size();
}

std::string TokenAtRestKeys::current_id() const {
  std::lock_guard<std::mutex> l(mu_);
  return current_ ? current_->id : "";
}

}  // namespace mailseal::sealing
