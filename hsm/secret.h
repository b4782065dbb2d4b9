// secret.h — PINs and other secrets in memory: wiped on destruction, never printed.
//
// SECURITY: a PIN comes from a file readable only by its owner (or from a ceremony), never
// from argv or the environment. Secret has no operator<< and no implicit conversion, so it
// cannot end up in a log line by accident.
#pragma once

#include <optional>
#include <string>
#include <sys/types.h>
#include <string_view>

#include "dataplane/base/status.h"

namespace mailseal::hsm {

class Secret {
 public:
  Secret() = default;
  explicit Secret(std::string value) : value_(std::move(value)) {}
  Secret(const Secret&) = delete;
  Secret& operator=(const Secret&) = delete;
  Secret(Secret&& o) noexcept : value_(std::move(o.value_)) { o.Wipe(); }
  Secret& operator=(Secret&& o) noexcept;
  ~Secret() { Wipe(); }

  // Reveal: the bytes, for the one call that needs them (C_Login, a KDF).
  std::string_view Reveal() const { return value_; }
  bool empty() const { return value_.empty(); }
  void Wipe();

 private:
  std::string value_;
};

// ReadSecretFile reads a PIN or passphrase: a regular file, owned by us, mode 0600 or 0400,
// at most 256 bytes; one trailing newline is dropped. Refuses anything looser.
// `owner`: the uid that must own it (mailseald says which: its own, or, started as root, the
// user it drops to). Unset: the reader's — or anyone's when the reader is root (a tool run by
// root on the daemon user's file); the mode rule holds either way.
Result<Secret> ReadSecretFile(const std::string& path, std::optional<uid_t> owner = std::nullopt);

}  // namespace mailseal::hsm
