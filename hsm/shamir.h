// shamir.h — Shamir secret sharing over GF(2^8), through Debian's libgfshare.
//
// SECURITY: libgfshare's default randomness is random(3) ("bad idea", its own words); this
// wrapper installs OpenSSL's RAND_bytes before any split. Shares alone do not detect a wrong
// or foreign share (a wrong share just gives a wrong secret), so callers check the result
// against a commitment (KeyBackup.kek_check).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dataplane/base/status.h"
#include "hsm/secret.h"

namespace mailseal::hsm {

struct Share {
  uint8_t x = 0;        // 1..255
  std::string y;        // same length as the secret
};

// Split makes `n` shares (x = 1..n) of which any `m` rebuild the secret. 2 <= m <= n <= 255.
Result<std::vector<Share>> Split(const Secret& secret, unsigned m, unsigned n);
// Combine rebuilds the secret from at least `m` shares with distinct x.
Result<Secret> Combine(const std::vector<Share>& shares, unsigned m);

}  // namespace mailseal::hsm
