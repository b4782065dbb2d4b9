// at_rest_keys.h — the spool's data keys, made and wrapped by the security module (DE-22).
//
// The key-encrypting key is an AES-256 key on the token (label `at_rest.kek_label`, purpose
// spool; made there on first use, never extractable). A data key is 256 random bits drawn in
// this process, wrapped by the token (RFC 3394, from the token's AES block operations: hsm::KwWrapDataKey) and written as `<dir>/<id>.key` — durably,
// before the first record is sealed under it. At start every wrapped key in the directory is
// unwrapped (so files written under older keys stay readable without being rewritten) and a
// fresh key becomes the current one; the ring rotates to a new key after `rotate_s` or when a
// key's nonce budget is used up.
//
// SECURITY: the KEK never leaves the token; only wrapped keys reach the disk. The unwrapped
// data keys live in mailseald's memory for as long as it runs (what makes software AES
// possible) and are wiped when the ring goes. A stolen disk holds wrapped keys only.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "dataplane/base/status.h"
#include "dataplane/queue/at_rest.h"
#include "hsm/token_manager.h"

namespace mailseal::sealing {

struct AtRestOptions {
  std::string dir;              // where the wrapped data keys live (<spool>/keys)
  std::string kek_label = "spool-kek";
  int64_t rotate_s = 86400;     // a new data key this often (and at every start)
  // read_only: the keys on disk only — no KEK made, no new current key (tools that read).
  bool read_only = false;
};

class TokenAtRestKeys : public queue::AtRestKeys {
 public:
  // Open: the KEK (made on the token when missing; `created_kek` says so), every wrapped key
  // in the directory unwrapped, a new current key stored. Unavailable while the token is.
  static Result<std::shared_ptr<TokenAtRestKeys>> Open(hsm::TokenManager* token, AtRestOptions options,
                                                       bool* created_kek = nullptr);

  std::shared_ptr<const queue::DataKey> Current() override;
  Result<std::shared_ptr<const queue::DataKey>> Find(std::string_view id) override;

  // Rotate makes a new current key when the current one is older than rotate_s (or has used
  // its nonce budget), or at once with `force`. On failure (token away) the current key stays
  // and the error is returned; the caller tries again later. Returns whether it rotated.
  Result<bool> Rotate(bool force = false);
  size_t size() const;
  std::string current_id() const;

 private:
  TokenAtRestKeys(hsm::TokenManager* token, AtRestOptions options) : token_(token), options_(std::move(options)) {}
  Status LoadAll();
  Status MakeCurrent();

  hsm::TokenManager* token_;
  AtRestOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<const queue::DataKey>, std::less<>> keys_;   // under mu_
  std::shared_ptr<const queue::DataKey> current_;                                   // under mu_
  int64_t current_since_s_ = 0;                                                      // under mu_
};

}  // namespace mailseal::sealing
