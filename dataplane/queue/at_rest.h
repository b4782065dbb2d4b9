// at_rest.h — encryption at rest for the spool (DE-22): the record cipher and the key ring
// interface the spool reads and writes through.
//
// Every record of a spool file (envelope, body, end, status) is sealed with AES-256-GCM under
// a data key; the file's first record names the key (its id) and carries a random per-file
// salt that every record's additional data includes, so a record cannot be moved from one
// file to another unnoticed. Nonces are 96 random bits per record (RAND_bytes); a data key
// seals at most kMaxRecordsPerKey records before the ring is asked for a new one (NIST SP
// 800-38D §8.3 allows 2^32 random nonces per key).
//
// The data keys are made and wrapped by the security module (sealing/at_rest_keys.h: the KEK
// never leaves the token); only their wrapped forms are on disk. The unwrapped data keys are
// in this process's memory — AES in software is what makes the spool fast — and are wiped
// when the ring goes.
//
// SECURITY: a record that fails authentication is damage (DataLoss: corrupt before END, a torn
// tail after), never plaintext; a file whose key the ring does not hold is Unavailable, which
// the queue keeps aside (corrupt/, never deleted) rather than guessing.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "dataplane/base/status.h"

namespace mailseal::queue {

// DataKey: an unwrapped AES-256 data key and its id (16 hex digits, the wrapped file's name).
struct DataKey {
  DataKey() = default;
  DataKey(const DataKey&) = delete;
  DataKey& operator=(const DataKey&) = delete;
  ~DataKey();
  std::string id;
  std::array<unsigned char, 32> key{};
  mutable std::atomic<uint64_t> sealed{0};   // records sealed under it (the nonce budget)
};

inline constexpr uint64_t kMaxRecordsPerKey = uint64_t{1} << 30;
inline constexpr size_t kRecordOverhead = 12 + 16;   // nonce + tag
inline constexpr size_t kFileSaltBytes = 16;

// AtRestKeys: the ring of data keys. Thread safe.
class AtRestKeys {
 public:
  virtual ~AtRestKeys() = default;
  // Current: the key new files are written under (never null once the ring is installed).
  virtual std::shared_ptr<const DataKey> Current() = 0;
  // Find: the key named in a file; Unavailable when the ring does not hold it.
  virtual Result<std::shared_ptr<const DataKey>> Find(std::string_view id) = 0;
};

// The spool's ring, installed once at start before any spool file is read or written (one
// spool per process). Without one, files are written in the plain format (version 1) — for a
// gateway without a security module — and an encrypted file cannot be read (Unavailable).
void InstallAtRestKeys(std::shared_ptr<AtRestKeys> keys);
std::shared_ptr<AtRestKeys> InstalledAtRestKeys();

// SealRecord: nonce || ciphertext || tag over `plain`, with (type, salt) as additional data.
std::string SealRecord(const DataKey& key, uint8_t type, std::string_view salt, std::string_view plain);
// OpenRecord: the plaintext, or DataLoss when the record fails authentication.
Result<std::string> OpenRecord(const DataKey& key, uint8_t type, std::string_view salt, std::string_view sealed);

// Small files other than the spool's (the certificate store, issue #19): SealBlob gives the
// file's bytes — "MSSEAL1\n", the key id and a salt, one sealed record — under the installed
// ring's current key, or `plain` as it is without a ring. OpenBlob gives the plaintext of
// either form (a plain file — written before encryption was on, or by an operator — is
// returned as it is); DataLoss when a sealed one fails authentication, Unavailable when its
// key is not in the ring.
std::string SealBlob(std::string_view plain);
Result<std::string> OpenBlob(std::string data);

}  // namespace mailseal::queue
