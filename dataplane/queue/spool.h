// spool.h — durable one-file-per-message queue storage (see FORMAT.md beside this file).
//
// SECURITY: spool files are written 0600 by the daemon user and are trusted only after the
// reader has checked framing and CRCs; a damaged file is moved to corrupt/, never delivered
// and never silently deleted. With a key ring installed (at_rest.h) every record is
// encrypted and authenticated (AES-256-GCM, DE-22): the disk holds no message in clear.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dataplane/base/status.h"
#include "dataplane/queue/at_rest.h"
#include "mailseal/v1/spool.pb.h"

namespace mailseal::queue {


enum class SpoolState { kIncoming, kActive, kDeferred, kHold, kCorrupt };
const char* StateDir(SpoolState s);

// Spool owns the directory tree. Thread safe (no mutable state beyond the id counter).
// BodyBudget bounds the bytes of received bodies kept in memory for the crypto workers (a
// job then carries its message instead of a path to read again). Thread safe; a body that
// would pass the bound is not kept (its job reads the spool file).
class BodyBudget {
 public:
  explicit BodyBudget(uint64_t max_bytes) : max_(max_bytes) {}
  bool Reserve(uint64_t n) {
    uint64_t cur = used_.load(std::memory_order_relaxed);
    do {
      if (n > max_ || cur > max_ - n) return false;
    } while (!used_.compare_exchange_weak(cur, cur + n, std::memory_order_relaxed));
    return true;
  }
  void Release(uint64_t n) { used_.fetch_sub(n, std::memory_order_relaxed); }
  uint64_t used() const { return used_.load(std::memory_order_relaxed); }
  uint64_t max() const { return max_; }

 private:
  const uint64_t max_;
  std::atomic<uint64_t> used_{0};
};

class Spool {
 public:
  explicit Spool(std::string root) : root_(std::move(root)) {}
  ~Spool();
  Spool(const Spool&) = delete;
  Spool& operator=(const Spool&) = delete;
  // Init creates the directories (0700), checks they are writable and opens the root for
  // SyncAll (its descriptor samples the file system's write-back error state from here on).
  [[nodiscard]] Status Init();
  const std::string& root() const { return root_; }
  std::string PathOf(SpoolState s, std::string_view id) const;
  // NewQueueId: a unique, sortable id (time + counter + random), safe as a file name.
  std::string NewQueueId();
  // Move renames a file between states and fsyncs the target directory.
  [[nodiscard]] Status Move(std::string_view id, SpoolState from, SpoolState to) const;
  [[nodiscard]] Status Remove(std::string_view id, SpoolState s) const;
  // List returns the ids in a state directory.
  [[nodiscard]] Result<std::vector<std::string>> List(SpoolState s) const;
  // FsyncDir makes renames into `s` durable.
  [[nodiscard]] Status FsyncDir(SpoolState s) const;
  // SyncAll makes every file and directory entry written on the spool's file system durable
  // with one journal commit (syncfs(2)): the group commit for files written with
  // Durability::kGroup. It fails (EIO) when any write-back on the file system failed since the
  // last call; after that nothing written may be relied on (the caller exits, recovery reads
  // the disk).
  [[nodiscard]] Status SyncAll() const;
  // SetBodyBudget (before the first writer opens): writers keep the bodies they write within
  // it (SpoolWriter::TakeMessage hands them on). Unset: none is kept.
  void SetBodyBudget(std::shared_ptr<BodyBudget> b) { body_budget_ = std::move(b); }
  const std::shared_ptr<BodyBudget>& body_budget() const { return body_budget_; }

 private:
  std::string root_;
  int root_fd_ = -1;
  std::shared_ptr<BodyBudget> body_budget_;
};

// Durability of a file written whole: kSynced — the data is fdatasync'ed and the directory
// entry fsync'ed before the call returns; kGroup — neither: the caller makes a group of such
// files durable at once with Spool::SyncAll() before anything relies on them (crypto-stage
// copies: the queue manager, once per batch of completions, before an original is retired).
enum class Durability { kSynced, kGroup };

struct BodyExtent {
  uint64_t offset;   // of the payload in the file
  uint32_t length;   // as stored (encrypted: the plaintext's length + kRecordOverhead)
  uint32_t crc;      // record CRC (over type + payload)
};

// SpoolMessage is what a reader learns from a complete file.
struct SpoolMessage {
  std::string id;
  mailseal::v1::SpoolEnvelope envelope;
  std::vector<mailseal::v1::SpoolStatus> statuses;
  std::vector<BodyExtent> body;
  uint64_t body_size = 0;
  uint64_t file_size = 0;   // bytes up to the last whole record
  // torn_tail: something after END could not be read (a torn or failed append, or damage):
  // the message is whole and is kept; STATUS records from there on are lost (a recipient may
  // be delivered twice, never lost). CutTornTail removes the tail. tail_problem says what.
  bool torn_tail = false;
  std::string tail_problem;
  // retained_body: the body bytes as the writer wrote them, when it kept them (the spool's
  // BodyBudget); their reservation is released when the last reference goes. Never set by a
  // reader.
  std::shared_ptr<const std::string> retained_body;
  // An encrypted file's (version 2) data key and salt; null for a plain one.
  std::shared_ptr<const DataKey> key;
  std::string salt;
};

// SpoolWriter writes one new message into incoming/. Not thread safe; one per message.
class SpoolWriter {
 public:
  SpoolWriter() = default;
  ~SpoolWriter();
  SpoolWriter(const SpoolWriter&) = delete;
  SpoolWriter& operator=(const SpoolWriter&) = delete;

  [[nodiscard]] Status Open(Spool* spool, const mailseal::v1::SpoolEnvelope& env);
  // Append buffers body bytes; errors surface here or in Finish().
  [[nodiscard]] Status Append(std::string_view body);
  // Finish writes END and fdatasyncs (unless `sync` is false: the caller syncs a group, see
  // Durability::kGroup); the file is complete but still in incoming/.
  [[nodiscard]] Status Finish(bool sync = true);
  // Publish renames incoming/ -> active/ (the caller fsyncs active/, possibly for a batch);
  // copies made by the crypto stage may go to hold/ instead.
  [[nodiscard]] Status Publish(SpoolState to = SpoolState::kActive);
  // Abandon deletes the incoming file (message refused or connection lost before END).
  void Abandon();

  const std::string& id() const { return id_; }
  uint64_t body_size() const { return body_size_; }
  // KeepNoBody (after Open): this message's body is not kept in memory (a copy or DSN written
  // whole: no crypto job will carry it, and it must not take the budget from received mail).
  void KeepNoBody() { StopRetaining(); }
  // TakeMessage: after Publish(), what a reader would load from the file (no second read).
  SpoolMessage TakeMessage();

 private:
  void AddBodyRecord();
  void StopRetaining();
  [[nodiscard]] Status FlushBuffer();
  Spool* spool_ = nullptr;
  int fd_ = -1;
  std::string id_;
  std::string buf_;
  std::string pending_body_;
  uint64_t body_size_ = 0;
  uint32_t body_crc_ = 0;
  std::string retained_;         // the body, while the budget allows (retain_ stays true)
  bool retain_ = false;
  uint64_t reserved_ = 0;        // of the spool's BodyBudget, for retained_
  bool failed_ = false;   // after a failed write or fsync, every later call fails (LevelDB)
  uint64_t file_offset_ = 0;                 // bytes framed so far (flushed or buffered)
  mailseal::v1::SpoolEnvelope envelope_;
  std::vector<BodyExtent> extents_;
  std::shared_ptr<const DataKey> key_;   // with a key ring: the data key and salt of this file
  std::string salt_;
};

// ReadSpoolFile validates and loads a file. A corrupt file gives DataLossError with the reason.
[[nodiscard]] Result<SpoolMessage> ReadSpoolFile(const std::string& path);

// ReadBody streams the body of a loaded message, checking each record's CRC again.
[[nodiscard]] Status ReadBody(const std::string& path, const SpoolMessage& msg,
                                    const std::function<Status(std::string_view)>& sink);

// CutTornTail truncates a file whose reader found a torn tail back to its last whole record.
[[nodiscard]] Status CutTornTail(const std::string& path, const SpoolMessage& msg);

// AppendStatus appends a STATUS record and fdatasyncs it, all or nothing: on a failed write or
// sync the file is cut back to its length before the append.
[[nodiscard]] Status AppendStatus(const std::string& path,
                                        const mailseal::v1::SpoolStatus& status);

// WriteWholeMessage writes a complete message (DSNs, crypto-stage copies) straight to active/
// (or `to`), durably or for a group commit (see Durability). A non-empty env.queue_id is used
// as the id; ALREADY_EXISTS if it is taken.
[[nodiscard]] Result<std::string> WriteWholeMessage(
    Spool* spool, mailseal::v1::SpoolEnvelope env, std::string_view body,
    SpoolState to = SpoolState::kActive, Durability durability = Durability::kSynced);

// RequeueHeld takes message `id` out of hold/ as a fresh message in active/ (returned, loaded,
// for QueueManager::Submit): policy and the crypto stage decide anew — a held copy is never
// sent on as it is, since it may be for a partner that must only get sealed mail. The new
// file is durable before the held one is removed (a crash in between leaves both: the held
// copy is released again, never lost). NotFound: no such held message.
[[nodiscard]] Result<SpoolMessage> RequeueHeld(Spool* spool, const std::string& id);

}  // namespace mailseal::queue
