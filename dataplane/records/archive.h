// archive.h — the e-records archive (DE-21): a copy of every message, encrypted to an archive
// key whose private half exists only as M-of-N shares held by the ceremony custodians.
//
// The archive key (RSA-3072) is made once, in memory: its private half is sealed (AES-256-GCM,
// `archive-key.sealed`) under a random 256-bit secret, the secret is split with Shamir's
// scheme (hsm/shamir.h; threshold = the ceremony's), each share encrypted to one custodian's
// certificate (CMS EnvelopedData, so `openssl cms -decrypt` or `mailsealctl ceremony approve
// --archive-share` opens it on the custodian's own machine) and the private key is wiped.
// Only the public half stays on the appliance: nobody on it — root, a compromised mailseald,
// a thief of the disk or the token — can read the archive; an export needs M custodians to
// bring their shares to an "open-archive" ceremony, which rebuilds the key in memory for that
// one export and wipes it.
//
// Archive files: `<dir>/<YYYY-MM-DD>/<run>-<writer>.arc` (UTC day of writing), each with its
// own AES-256 data key wrapped to the archive key (RSA-OAEP, SHA-256), then records sealed
// with AES-256-GCM (random nonce; the file's salt as additional data), each appended and
// fdatasync'ed before the message goes on. A torn last record (a crash in the append) is
// skipped by the reader and reported. Retention: whole days older than the period are removed
// (audited by the caller).
//
// SECURITY: nothing in an archive file is in clear but the day (the directory name) and the
// sizes; addresses, subjects and bodies are inside the sealed records.
#pragma once

#include <openssl/evp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dataplane/base/status.h"
#include "hsm/shamir.h"
#include "mailseal/v1/spool.pb.h"

namespace mailseal::records {

struct Custodian {
  std::string name;
  std::string cert_pem;
};

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

// EnsureArchiveKey: the archive's public key from `<dir>/archive-key.pem`; when there is none,
// a new key is made, its shares written to `<dir>/shares/<custodian>.pem` (one per custodian,
// `threshold` of them rebuild it) and `created` set. The public key file is written last, so
// a crash part way makes a fresh key at the next start (the shares written then replace these).
Result<Pkey> EnsureArchiveKey(const std::string& dir, const std::vector<Custodian>& custodians, unsigned threshold,
                              bool* created = nullptr);

// ParseShare: a share as the custodian decrypted it (the text in the CMS envelope).
Result<hsm::Share> ParseShare(std::string_view text);
// DecryptShare: what a custodian's tool does: the CMS envelope opened with their key.
Result<std::string> DecryptShare(std::string_view pem, EVP_PKEY* custodian_key, std::string_view custodian_cert_pem);

// RebuildArchiveKey: the private key from `threshold` shares, checked against the archive's
// public key (a wrong or foreign share gives another key, which is refused).
Result<Pkey> RebuildArchiveKey(const std::string& dir, const std::vector<hsm::Share>& shares, unsigned threshold);

// ArchiveWriter appends records to this run's file of the day. One per thread (not thread safe).
class ArchiveWriter {
 public:
  // `run`: unique per process start; `writer`: this writer's number.
  ArchiveWriter(std::string dir, EVP_PKEY* public_key, std::string run, int writer);
  ~ArchiveWriter();
  ArchiveWriter(const ArchiveWriter&) = delete;
  ArchiveWriter& operator=(const ArchiveWriter&) = delete;
  // Append seals one record and makes it durable (fdatasync) before returning.
  Status Append(const mailseal::v1::ArchiveRecord& record);

 private:
  Status OpenFile(const std::string& day);
  std::string dir_, run_;
  int writer_;
  Pkey pub_;
  int fd_ = -1;
  std::string day_;
  std::string salt_;
  std::string key_;   // the file's data key (wiped on close)
  bool failed_ = false;
};

struct Query {
  int64_t since_unix_ms = 0;   // inclusive; 0: from the start
  int64_t until_unix_ms = 0;   // exclusive; 0: no end
  std::string sender;          // exact address, any case; empty: any
  std::string recipient;       // exact address among the recipients, any case; empty: any
};

struct ExportFile {
  std::string name;
  std::string content;
};

struct Export {
  std::vector<mailseal::v1::ArchiveRecord> records;   // in time order
  size_t files_read = 0;
  size_t torn = 0;   // torn last records skipped
};

// Read: every record matching `query`, decrypted with the rebuilt private key. At most
// `max_bytes` of messages (more: ResourceExhausted, narrow the query).
Result<Export> Read(const std::string& dir, EVP_PKEY* private_key, const Query& query, uint64_t max_bytes);

// Mbox (mboxrd: "From " lines quoted with '>', reversible; lines kept as stored, CRLF) and
// Maildir (one file per message under cur/, its bytes exactly as archived).
std::string ToMbox(const Export& e);
std::vector<ExportFile> ToMaildir(const Export& e);

// Expire removes the day directories older than `retention_days` (UTC days before today);
// returns the days removed and how many files they held.
struct Expired {
  std::string day;
  size_t files = 0;
};
Result<std::vector<Expired>> Expire(const std::string& dir, uint32_t retention_days, int64_t now_unix_ms);

}  // namespace mailseal::records
