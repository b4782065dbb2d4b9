// log.h — the tamper-evident audit log (issue #5; REQUIREMENTS.md §7).
//
// Files: the log (magic "MSAUDIT1\n", then per record: u32le length, u32le CRC-32 of the
// payload, payload = AuditRecord protobuf) and the tree-head file (same framing, payload =
// TreeHead). Rotation: when the log file reaches `rotate_bytes` it is renamed to
// "<log_path>.<seq of its first record, 12 digits>" and a new one is begun; the segments and
// the current file together are one log — one Merkle tree, one sequence, one heads file — so
// proofs and `mailseal-audit verify` span them all (segments must stay next to the log). Record i is leaf i of an RFC 9162 Merkle tree (leaf = the record's bytes); a tree
// head signed by the audit key is appended every `head_every` records and on SignHead().
//
// Durability and fail-closed: Append returns only after the record is fdatasync'ed; when the
// file cannot be written every later Append fails too (the caller refuses the action it was
// about to audit, and reports itself unhealthy).
// Detection (VerifyLog): a changed byte is found by the record's CRC, or — if the CRC was
// recomputed — by the Merkle root no longer matching a signed head; a truncated or rewritten
// log by a head (or an exported head) covering more records than the log holds, or with
// another root.
//
// SECURITY: the files are read back as untrusted (a disk someone else could write): every frame's
// length is bounded by the file and checked with its CRC before the payload is parsed; the last
// signed head's root and signature are checked against the records before the log is extended;
// a log that fails is opened read-only and reported as damaged, never re-signed.
//
// STANDARDS: RFC 9162 §2.1 (the Merkle tree and its proofs).
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <cstdint>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <memory>
#include <string>
#include <vector>

#include "control/audit/merkle.h"
#include "dataplane/base/status.h"
#include "mailseal/v1/audit.pb.h"

namespace mailseal::audit {

// Signer: signs TreeHeadSigningInput bytes (with the HSM audit key in production).
using Signer = std::function<Result<std::string>(const std::string& input)>;
// SignerFor: DigestSign with SHA-256 over `key` (RSA PKCS#1 v1.5 or ECDSA); `key` must live on.
Signer SignerFor(EVP_PKEY* key);

// TreeHeadSigningInput: the bytes a head's signature covers (domain-separated).
std::string TreeHeadSigningInput(const mailseal::v1::TreeHead& head);
bool VerifyHeadSignature(const mailseal::v1::TreeHead& head, EVP_PKEY* pub);

// HeadVerifier: whether a stored head's signature verifies with the audit key; an error when
// it cannot be checked now (the token is away). Unset: signatures are not checked at Open.
using HeadVerifier = std::function<Result<bool>(const mailseal::v1::TreeHead& head)>;

struct LogOptions {
  std::string log_path;
  std::string heads_path;
  uint64_t head_every = 1000;   // sign a tree head after this many records (0: only on demand)
  Signer signer;
  uint64_t rotate_bytes = 64ull << 20;   // begin a new segment at this size (0: never)
  HeadVerifier verify_head = nullptr;
};

// OpenReport: what Open found, for the operator's log.
struct OpenReport {
  uint64_t torn_bytes = 0;        // a torn tail cut off the log (no acknowledged record is in it)
  uint64_t torn_head_bytes = 0;   // and off the heads file
  uint64_t heads_checked = 0;     // stored heads read and in order (the last: root and signature checked)
  uint64_t heads_unverified = 0;  // 1 when the last head's signature could not be checked now
  uint64_t uncovered = 0;         // records after the last signed head
  std::string damage;             // non-empty: the log is damaged or tampered with (see healthy())
};

class AuditLog {
 public:
  // Open creates the files or continues them; existing records are read and checked: CRC and
  // framing, the stored tree heads in order and within the log, and the last head's root (and
  // signature, with verify_head) against the records — it commits to every record it covers
  // (issue #13). A torn tail of the current file or of the heads file is cut back and
  // reported. A damaged or tampered log is opened *unhealthy*: its records can be read up to
  // the damage, nothing is appended (Append fails, the caller refuses what it was to audit),
  // and report()->damage says why — so the daemon starts and raises the alarm instead of
  // refusing to run. Missing files or an unreadable directory are errors.
  static Result<std::unique_ptr<AuditLog>> Open(LogOptions options);
  const OpenReport& report() const { return report_; }
  // damage: why the log is not extended ("" while healthy).
  std::string damage() const;
  ~AuditLog();

  // Append assigns seq and (if unset) time, writes and syncs the record. Thread safe.
  Result<uint64_t> Append(mailseal::v1::AuditRecord record);
  // AppendBatch appends several records with one sync (group commit for mail events).
  Status AppendBatch(std::vector<mailseal::v1::AuditRecord> records);
  // SignHead signs and stores a head over every record so far.
  Result<mailseal::v1::TreeHead> SignHead();
  // SignHeadIfStale signs a head when records were added since the last head and that head is
  // older than `max_age_ms` (heads "every N records or T seconds"); true when it signed.
  Result<bool> SignHeadIfStale(int64_t max_age_ms);
  uint64_t size() const;
  Hash root() const;
  Result<std::vector<Hash>> InclusionProofFor(uint64_t index, uint64_t tree_size) const;
  Result<std::vector<Hash>> ConsistencyProofFor(uint64_t old_size, uint64_t new_size) const;
  // healthy: the log is not damaged and its last write succeeded.
  bool healthy() const;
  // ReadRecords: up to `limit` records from `start` (each read at its indexed offset).
  Result<std::vector<mailseal::v1::AuditRecord>> ReadRecords(uint64_t start, size_t limit) const;
  // RecordBytes: record `seq` exactly as stored (its leaf is SHA-256(0x00 || these bytes)).
  Result<std::string> RecordBytes(uint64_t seq) const;
  // segments: how many files the log spans (rotated segments + the current file).
  size_t segments() const;

 private:
  AuditLog() = default;
  Status WriteRecords(const std::string& frames, const std::vector<uint32_t>& lengths);
  Status RotateLocked();
  Result<mailseal::v1::TreeHead> SignHeadLocked();
  Result<std::string> ReadAt(size_t seq) const;

  // Where record i is: file index into files_, offset of its payload, length.
  struct Location {
    uint32_t file;
    uint32_t length;
    uint64_t offset;
  };
  LogOptions options_;
  mutable std::mutex mu_;
  int log_fd_ = -1, heads_fd_ = -1;
  uint64_t log_bytes_ = 0;           // size of the current file
  std::vector<std::string> files_;   // rotated segments in order, then the current file
  std::vector<Hash> leaves_;         // 32 bytes a record
  std::vector<Location> index_;      // 16 bytes a record
  uint64_t last_head_size_ = 0;
  int64_t last_head_ms_ = 0;
  bool failed_ = false;
  std::string damage_;   // why failed_ (open-time damage, or the write that failed)
  bool write_failing_ = false;   // the last write failed (and was cut back): unhealthy until one succeeds
  OpenReport report_;
};

// LogSegments: the files of the log at `log_path`, oldest first: the rotated segments
// ("<log_path>.<first seq>"), then `log_path` itself (if it exists).
std::vector<std::string> LogSegments(const std::string& log_path);

// Recorder: mail events (accepted, sealed, opened, held, delivered, bounced) go to the audit
// log from a background thread in batches, one sync per batch, so auditing every message does
// not cap mail at the disk's sync rate. Record() never blocks mail unless `max_pending` events
// wait (then it waits: nothing is dropped). A failing log is reported once per outage
// (on_failure: new mail is refused, issue #12) and the events wait and are retried every
// second; on_recovery says when the trail records again (issue #13). Events still unwritten
// when the recorder stops are kept in `late_path` (on another disk than the trail: the spool's)
// for WriteLateRecords at the next start — a dead audit disk loses no event silently.
class Recorder {
 public:
  Recorder(AuditLog* log, std::function<void(const Status&)> on_failure, size_t max_pending = 100000,
           std::function<void()> on_recovery = nullptr, std::string late_path = "");
  ~Recorder();
  void Record(mailseal::v1::AuditRecord r);   // stamped with the time it happened
  void Flush();   // waits until everything recorded so far is written (tests, shutdown)

 private:
  void Run();
  AuditLog* log_;
  std::string late_path_;
  std::function<void(const Status&)> on_failure_;
  std::function<void()> on_recovery_;
  size_t max_pending_;
  std::mutex mu_;
  std::condition_variable cv_, space_cv_, flushed_cv_;
  std::vector<mailseal::v1::AuditRecord> pending_;
  uint64_t enqueued_ = 0, written_ = 0;
  bool stop_ = false, failed_ = false;
  std::thread thread_;
};

// SaveLateRecords appends `records` to the late file at `path` (framed, synced); the file is
// created if needed.
Status SaveLateRecords(const std::string& path, const std::vector<mailseal::v1::AuditRecord>& records);

// LateRecords is what WriteLateRecords did: how many kept events reached the trail, and what
// could not be read back (a torn tail of the late file: the events of a write that never ended).
struct LateRecords {
  uint64_t written = 0;
  std::string problem;
};
// WriteLateRecords appends the events kept in the late file at `path` to `log`, after one
// record "audit.late_records" that says how many follow and why they are late (their own times
// are when they happened), then removes the file. No file: nothing to do. The file stays when
// the log refuses them (tried again at the next start).
Result<LateRecords> WriteLateRecords(AuditLog* log, const std::string& path);

// ReadFramed reads a file of framed payloads; on damage it stops and says at which entry.
// A frame cut short by the end of the file (a crash or a full disk during a write that never
// returned) is a torn tail, not damage: `torn_tail` is set, `error` stays empty, and
// `valid_bytes` is where the last whole frame ends (issue #13). A whole frame whose checksum
// fails, or a length that does not fit, before the end is damage (`error`).
struct Framed {
  std::vector<std::string> payloads;
  std::vector<uint64_t> offsets;   // of each payload in the file
  std::string error;   // empty: the whole file was read
  size_t bad_index = 0;
  bool torn_tail = false;
  uint64_t valid_bytes = 0;   // file offset just past the last whole frame
};
Framed ReadFramed(const std::string& path, const char* magic);

struct VerifyReport {
  uint64_t records = 0;
  uint64_t heads_checked = 0;
  uint64_t covered = 0;        // records [0, covered) are under a verified signed head
  uint64_t torn_bytes = 0;     // a torn tail at the end of the current file (not tampering)
  std::string error;           // empty: everything verified
  int64_t first_bad_record = -1;
};
// VerifyLog checks a log and its heads (and optionally exported heads kept elsewhere) against
// the audit certificate's key. Offline; used by `mailseal-audit verify`.
VerifyReport VerifyLog(const std::string& log_path, const std::string& heads_path, EVP_PKEY* audit_pub,
                       const std::vector<mailseal::v1::TreeHead>& exported = {});

}  // namespace mailseal::audit
