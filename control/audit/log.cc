// log.cc — see log.h.
#include "control/audit/log.h"
#include "dataplane/base/sha256_sign.h"

#include "dataplane/base/log.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <cstring>
#include <fstream>
#include <sstream>

namespace mailseal::audit {
namespace {
using mailseal::v1::AuditRecord;
using mailseal::v1::TreeHead;

constexpr char kLogMagic[] = "MSAUDIT1\n";
constexpr char kHeadsMagic[] = "MSAHEAD1\n";
constexpr char kLateMagic[] = "MSALATE1\n";
constexpr uint32_t kMaxRecord = 1 << 20;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

uint32_t Crc(std::string_view s) {
  return static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(s.data()), static_cast<uInt>(s.size())));
}

void PutU32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
uint32_t GetU32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

Result<int> OpenForAppend(const std::string& path, const char* magic) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return FailedPreconditionError(StrCat("audit file ", path, ": ", std::strerror(errno)));
  struct stat st{};
  if (::fstat(fd, &st) == 0 && st.st_size == 0) {
    size_t n = std::strlen(magic);
    if (::write(fd, magic, n) != static_cast<ssize_t>(n) || ::fsync(fd) != 0) {
      ::close(fd);
      return FailedPreconditionError(StrCat("audit file ", path, ": cannot be written"));
    }
  }
  return fd;
}

std::string Serialize(const google::protobuf::MessageLite& m) {
  std::string out;
  m.SerializeToString(&out);
  return out;
}

}  // namespace

Signer SignerFor(EVP_PKEY* key) {
  return [key](const std::string& input) -> Result<std::string> {
    Result<std::string> sig = base::Sha256Sign(key, input);
    if (!sig.ok()) return UnavailableError(StrCat("the audit key could not sign the tree head (", sig.status().message(), ")"));
    return sig;
  };
}

std::string TreeHeadSigningInput(const TreeHead& head) {
  std::string in("mailseal audit tree head v1", 28);  // includes the terminating NUL
  for (int i = 0; i < 8; ++i) in.push_back(static_cast<char>((head.tree_size() >> (8 * i)) & 0xFF));
  for (int i = 0; i < 8; ++i) in.push_back(static_cast<char>((static_cast<uint64_t>(head.time_unix_ms()) >> (8 * i)) & 0xFF));
  in += head.root_hash();
  return in;
}

bool VerifyHeadSignature(const TreeHead& head, EVP_PKEY* pub) {
  return base::Sha256Verify(pub, TreeHeadSigningInput(head), head.signature());
}

Framed ReadFramed(const std::string& path, const char* magic) {
  Framed f;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    f.error = StrCat(path, ": cannot be read");
    return f;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string data = ss.str();
  size_t m = std::strlen(magic);
  if (data.compare(0, m, magic) != 0) {
    f.error = StrCat(path, ": not an audit file (bad magic)");
    return f;
  }
  size_t pos = m;
  while (pos < data.size()) {
    size_t i = f.payloads.size();
    f.valid_bytes = pos;
    if (data.size() - pos < 8) {   // cut short by the end of the file: a torn tail
      f.torn_tail = true;
      return f;
    }
    uint32_t len = GetU32(data.data() + pos), crc = GetU32(data.data() + pos + 4);
    if (len > kMaxRecord) {
      f.error = StrCat("entry ", i, ": bad length (", len, ")");
      f.bad_index = i;
      return f;
    }
    if (data.size() - pos - 8 < len) {   // the frame runs past the end: a torn tail
      f.torn_tail = true;
      return f;
    }
    std::string payload = data.substr(pos + 8, len);
    if (Crc(payload) != crc) {
      f.error = StrCat("entry ", i, ": checksum mismatch (changed bytes)");
      f.bad_index = i;
      return f;
    }
    f.payloads.push_back(std::move(payload));
    f.offsets.push_back(pos + 8);
    pos += 8 + len;
  }
  f.valid_bytes = pos;
  return f;
}

std::vector<std::string> LogSegments(const std::string& log_path) {
  namespace fs = std::filesystem;
  fs::path p(log_path);
  fs::path dir = p.parent_path().empty() ? fs::path(".") : p.parent_path();
  std::string prefix = p.filename().string() + ".";
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    if (name.size() == prefix.size() + 12 && name.compare(0, prefix.size(), prefix) == 0 &&
        std::all_of(name.begin() + static_cast<std::ptrdiff_t>(prefix.size()), name.end(),
                    [](char c) { return c >= '0' && c <= '9'; }))
      out.push_back((dir / name).string());
  }
  std::sort(out.begin(), out.end());   // fixed-width numbers: name order is sequence order
  if (fs::exists(p, ec)) out.push_back(log_path);
  return out;
}

namespace {
// CutBack truncates `path` to `size` and syncs it.
Status CutBack(const std::string& path, uint64_t size) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return FailedPreconditionError(StrCat("audit file ", path, ": ", std::strerror(errno)));
  bool ok = ::ftruncate(fd, static_cast<off_t>(size)) == 0 && ::fsync(fd) == 0;
  int err = errno;
  ::close(fd);
  return ok ? OkStatus() : FailedPreconditionError(StrCat("audit file ", path, ": cannot cut a torn tail: ", std::strerror(err)));
}
}  // namespace

Result<std::unique_ptr<AuditLog>> AuditLog::Open(LogOptions options) {
  std::unique_ptr<AuditLog> log(new AuditLog());
  log->options_ = std::move(options);
  OpenReport& rep = log->report_;
  // Torn tails (a write that never returned) are cut back before the files are opened for
  // appending, so that nothing is ever appended behind half a frame.
  for (auto [path, magic, torn] : {std::tuple{log->options_.log_path, kLogMagic, &rep.torn_bytes},
                                   std::tuple{log->options_.heads_path, kHeadsMagic, &rep.torn_head_bytes}}) {
    struct stat st{};
    if (::stat(path.c_str(), &st) != 0 || st.st_size == 0) continue;
    Framed f = ReadFramed(path, magic);
    if (f.error.empty() && f.torn_tail) {
      *torn = static_cast<uint64_t>(st.st_size) - f.valid_bytes;
      if (Status cut = CutBack(path, f.valid_bytes); !cut.ok()) return cut;
    }
  }
  Result<int> fd = OpenForAppend(log->options_.log_path, kLogMagic);
  if (!fd.ok()) return fd.status();
  log->log_fd_ = *fd;
  Result<int> hfd = OpenForAppend(log->options_.heads_path, kHeadsMagic);
  if (!hfd.ok()) return hfd.status();
  log->heads_fd_ = *hfd;
  log->files_ = LogSegments(log->options_.log_path);
  auto damaged = [&](std::string why) {
    log->failed_ = true;
    log->damage_ = rep.damage = StrCat(why, "; the audit trail is not extended (run mailseal-audit verify)");
    return std::move(log);
  };
  for (uint32_t f = 0; f < log->files_.size(); ++f) {
    const std::string& path = log->files_[f];
    Framed existing = ReadFramed(path, kLogMagic);
    for (size_t i = 0; i < existing.payloads.size(); ++i) {
      AuditRecord r;
      uint64_t seq = log->leaves_.size();
      if (!r.ParseFromString(existing.payloads[i]) || r.seq() != seq)
        return damaged(StrCat("audit log record ", seq, " (", path, ") is out of sequence"));
      log->leaves_.push_back(LeafHash(existing.payloads[i]));
      log->index_.push_back({f, static_cast<uint32_t>(existing.payloads[i].size()), existing.offsets[i]});
    }
    if (!existing.error.empty()) return damaged(StrCat("audit log ", path, " is damaged: ", existing.error));
    if (existing.torn_tail) return damaged(StrCat("audit log segment ", path, " ends in the middle of a record"));
    if (f + 1 == log->files_.size()) {
      struct stat st{};
      log->log_bytes_ = ::fstat(log->log_fd_, &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
    }
  }
  // The stored heads against the records: a log that no longer matches a head it signed is
  // not extended — a new head over it would launder the change. Heads only grow, so the last
  // one commits (its Merkle root) to every record it covers: its root and its signature are
  // checked (one pass over the leaves, one signature, however long the log); the earlier
  // heads must be readable, in order, and within the log. mailseal-audit verify checks each.
  Framed heads = ReadFramed(log->options_.heads_path, kHeadsMagic);
  if (!heads.error.empty()) return damaged(StrCat("tree heads ", log->options_.heads_path, ": ", heads.error));
  TreeHead last;
  for (size_t k = 0; k < heads.payloads.size(); ++k) {
    TreeHead h;
    if (!h.ParseFromString(heads.payloads[k])) return damaged(StrCat("tree head ", k, " is unreadable"));
    if (h.tree_size() > log->leaves_.size())
      return damaged(StrCat("the log is truncated: signed tree head ", k, " covers ", h.tree_size(), " records, the log has ",
                            log->leaves_.size()));
    if (h.tree_size() < last.tree_size())
      return damaged(StrCat("tree head ", k, " covers fewer records than the one before it (tampering)"));
    last = h;
    ++rep.heads_checked;
  }
  if (!heads.payloads.empty()) {
    size_t k = heads.payloads.size() - 1;
    if (Root(log->leaves_, 0, last.tree_size()) != last.root_hash())
      return damaged(StrCat("records do not match signed tree head ", k, " (size ", last.tree_size(),
                            "): a record was changed, removed or inserted (tampering)"));
    if (log->options_.verify_head) {
      Result<bool> good = log->options_.verify_head(last);
      if (good.ok() && !*good)
        return damaged(StrCat("tree head ", k, " (size ", last.tree_size(), ") is not signed by the audit key (tampering)"));
      if (!good.ok()) rep.heads_unverified = 1;   // the key is not reachable now: its root only
    }
    log->last_head_size_ = last.tree_size();
    log->last_head_ms_ = last.time_unix_ms();
  }
  rep.uncovered = log->leaves_.size() - log->last_head_size_;
  return log;
}

std::string AuditLog::damage() const {
  std::lock_guard<std::mutex> l(mu_);
  return damage_;
}

size_t AuditLog::segments() const {
  std::lock_guard<std::mutex> l(mu_);
  return files_.size();
}

AuditLog::~AuditLog() {
  if (log_fd_ >= 0) ::close(log_fd_);
  if (heads_fd_ >= 0) ::close(heads_fd_);
}

namespace {
// AppendFrame adds one framed payload (length, CRC, bytes) to `out`.
void AppendFrame(std::string* out, const std::string& payload) {
  PutU32(out, static_cast<uint32_t>(payload.size()));
  PutU32(out, Crc(payload));
  *out += payload;
}

// WriteAndSync writes all of `data` at the end of `fd` (whose size is `size`) and fdatasyncs
// it, all or nothing: a write that fails (ENOSPC, EFBIG, EIO) is cut back to `size`, and the
// file is as before — the next append may succeed once there is room. A failed sync, or a cut
// that fails, leaves the file's state unknown: `*sticky` is set (LevelDB's rule: stop, and
// recover at the next start).
Status WriteAndSync(int fd, uint64_t size, const std::string& data, bool* sticky) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = n < 0 ? errno : ENOSPC;
      if (::ftruncate(fd, static_cast<off_t>(size)) != 0 || ::fdatasync(fd) != 0) {
        *sticky = true;
        return FailedPreconditionError(StrCat("audit log write failed: ", std::strerror(err),
                                              "; and the partial record could not be cut back: ", std::strerror(errno)));
      }
      return FailedPreconditionError(StrCat("audit log write failed: ", std::strerror(err), " (nothing was written)"));
    }
    done += static_cast<size_t>(n);
  }
  if (::fdatasync(fd) != 0) {
    *sticky = true;
    return FailedPreconditionError(StrCat("audit log sync failed: ", std::strerror(errno)));
  }
  return OkStatus();
}

uint64_t FileSize(int fd) {
  struct stat st{};
  return ::fstat(fd, &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}
}  // namespace

// RotateLocked closes the current file as a segment named after its first record and begins
// a new one. Order: sync, rename, sync the directory, then the new file — a crash in between
// leaves a complete segment and (at the next Open) a fresh current file.
Status AuditLog::RotateLocked() {
  uint64_t first = 0;
  uint32_t cur = static_cast<uint32_t>(files_.size() - 1);
  while (first < index_.size() && index_[first].file != cur) ++first;
  if (first == index_.size()) return OkStatus();   // the current file has no record yet
  char name[32];
  std::snprintf(name, sizeof(name), ".%012llu", static_cast<unsigned long long>(first));
  std::string segment = options_.log_path + name;
  namespace fs = std::filesystem;
  fs::path dir = fs::path(options_.log_path).parent_path();
  if (dir.empty()) dir = ".";
  if (::fsync(log_fd_) != 0 || ::rename(options_.log_path.c_str(), segment.c_str()) != 0)
    return FailedPreconditionError(StrCat("audit log rotation failed: ", std::strerror(errno)));
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  bool dir_synced = dfd >= 0 && ::fsync(dfd) == 0;
  if (dfd >= 0) ::close(dfd);
  if (!dir_synced) return FailedPreconditionError("audit log rotation: directory sync failed");
  Result<int> fd = OpenForAppend(options_.log_path, kLogMagic);
  if (!fd.ok()) return fd.status();
  ::close(log_fd_);
  log_fd_ = *fd;
  files_.back() = segment;
  files_.push_back(options_.log_path);
  log_bytes_ = std::strlen(kLogMagic);
  return OkStatus();
}

// WriteRecords appends framed records (rotating first when the file is full), syncs them and
// indexes them; `lengths` are the payload sizes in order.
Status AuditLog::WriteRecords(const std::string& frames, const std::vector<uint32_t>& lengths) {
  if (options_.rotate_bytes && log_bytes_ >= options_.rotate_bytes)
    if (Status st = RotateLocked(); !st.ok()) return st;
  bool sticky = false;
  if (Status st = WriteAndSync(log_fd_, log_bytes_, frames, &sticky); !st.ok()) {
    write_failing_ = true;
    if (sticky) {
      failed_ = true;
      damage_ = st.message();
    }
    return st;
  }
  write_failing_ = false;
  uint32_t file = static_cast<uint32_t>(files_.size() - 1);
  uint64_t pos = log_bytes_;
  for (uint32_t len : lengths) {
    index_.push_back({file, len, pos + 8});
    pos += 8 + len;
  }
  log_bytes_ = pos;
  return OkStatus();
}

Result<uint64_t> AuditLog::Append(AuditRecord record) {
  std::lock_guard<std::mutex> l(mu_);
  if (failed_) return FailedPreconditionError(StrCat("the audit log cannot be written (", damage_, "): action refused (fail closed)"));
  record.set_seq(leaves_.size());
  if (record.time_unix_ms() == 0) record.set_time_unix_ms(NowMs());
  std::string bytes = Serialize(record);
  std::string frame;
  AppendFrame(&frame, bytes);
  if (Status st = WriteRecords(frame, {static_cast<uint32_t>(bytes.size())}); !st.ok()) return st;
  leaves_.push_back(LeafHash(bytes));
  // The record is durable; a head that cannot be signed now (token away) is signed later by
  // SignHeadIfStale, it does not undo the append.
  if (options_.head_every && leaves_.size() % options_.head_every == 0) (void)SignHeadLocked();
  return record.seq();
}

Status AuditLog::AppendBatch(std::vector<AuditRecord> records) {
  std::lock_guard<std::mutex> l(mu_);
  if (failed_) return FailedPreconditionError(StrCat("the audit log cannot be written: ", damage_));
  std::string frames;
  std::vector<Hash> hashes;
  std::vector<uint32_t> lengths;
  uint64_t seq = leaves_.size();
  for (AuditRecord& r : records) {
    r.set_seq(seq++);
    if (r.time_unix_ms() == 0) r.set_time_unix_ms(NowMs());
    std::string bytes = Serialize(r);
    AppendFrame(&frames, bytes);
    hashes.push_back(LeafHash(bytes));
    lengths.push_back(static_cast<uint32_t>(bytes.size()));
  }
  if (Status st = WriteRecords(frames, lengths); !st.ok()) return st;
  for (Hash& h : hashes) {
    leaves_.push_back(std::move(h));
    // A head exactly at each multiple of head_every, as with single appends (one that cannot
    // be signed now is signed later by SignHeadIfStale).
    if (options_.head_every && leaves_.size() % options_.head_every == 0) (void)SignHeadLocked();
  }
  return OkStatus();
}

Recorder::Recorder(AuditLog* log, std::function<void(const Status&)> on_failure, size_t max_pending,
                   std::function<void()> on_recovery, std::string late_path)
    : log_(log), late_path_(std::move(late_path)), on_failure_(std::move(on_failure)), on_recovery_(std::move(on_recovery)), max_pending_(max_pending) {
  thread_ = std::thread([this] { Run(); });
}

Recorder::~Recorder() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Recorder::Record(AuditRecord r) {
  if (r.time_unix_ms() == 0) r.set_time_unix_ms(NowMs());   // when it happened, not when written
  std::unique_lock<std::mutex> l(mu_);
  space_cv_.wait(l, [&] { return pending_.size() < max_pending_ || stop_; });
  pending_.push_back(std::move(r));
  ++enqueued_;
  cv_.notify_one();
}

void Recorder::Flush() {
  std::unique_lock<std::mutex> l(mu_);
  uint64_t target = enqueued_;
  flushed_cv_.wait(l, [&] { return written_ >= target || failed_; });
}

void Recorder::Run() {
  std::unique_lock<std::mutex> l(mu_);
  while (true) {
    cv_.wait(l, [&] { return stop_ || !pending_.empty(); });
    if (pending_.empty() && stop_) return;
    std::vector<AuditRecord> batch;
    batch.swap(pending_);
    space_cv_.notify_all();
    l.unlock();
    size_t n = batch.size();
    Status st = log_->AppendBatch(batch);   // a copy stays here: a failed batch is tried again
    l.lock();
    if (!st.ok()) {
      // Nothing is dropped: the batch goes back in front and is tried again every second
      // (producers wait once max_pending events are queued). on_failure tells the owner once
      // per outage (new mail is then refused), on_recovery when the trail records again.
      if (!failed_) {
        failed_ = true;
        if (on_failure_) on_failure_(st);
      }
      pending_.insert(pending_.begin(), std::make_move_iterator(batch.begin()), std::make_move_iterator(batch.end()));
      flushed_cv_.notify_all();
      if (stop_) {   // shutting down with the trail unwritable: keep the events for the next start
        Status kept = late_path_.empty() ? FailedPreconditionError("no place to keep them")
                                         : SaveLateRecords(late_path_, pending_);
        base::Log(base::LogLevel::kError, "audit",
                  kept.ok() ? "audit records could not be written: kept for the trail at the next start"
                            : "audit records could not be written and could not be kept: LOST",
                  {{"events", std::to_string(pending_.size())}, {"error", st.message()},
                   {"kept_in", kept.ok() ? late_path_ : kept.message()}});
        return;
      }
      cv_.wait_for(l, std::chrono::seconds(1), [&] { return stop_; });
      continue;
    }
    if (failed_) {
      failed_ = false;
      if (on_recovery_) on_recovery_();
    }
    written_ += n;
    flushed_cv_.notify_all();
  }
}

Status SaveLateRecords(const std::string& path, const std::vector<AuditRecord>& records) {
  Result<int> fd = OpenForAppend(path, kLateMagic);
  if (!fd.ok()) return fd.status();
  std::string frames;
  for (const AuditRecord& r : records) AppendFrame(&frames, Serialize(r));
  bool sticky = false;
  Status st = WriteAndSync(*fd, FileSize(*fd), frames, &sticky);
  ::close(*fd);
  return st;
}

Result<LateRecords> WriteLateRecords(AuditLog* log, const std::string& path) {
  LateRecords out;
  struct stat sb{};
  if (::stat(path.c_str(), &sb) != 0) return out;
  Framed f = ReadFramed(path, kLateMagic);
  std::vector<AuditRecord> records;
  for (const std::string& p : f.payloads) {
    AuditRecord r;
    if (!r.ParseFromString(p)) {
      out.problem = "an unreadable event in the late file";
      break;
    }
    records.push_back(std::move(r));
  }
  if (!f.error.empty()) out.problem = f.error;
  else if (f.torn_tail) out.problem = "the late file ends in a torn write (the events of that write are lost)";
  AuditRecord head;
  head.set_actor("mailseald");
  head.set_action("audit.late_records");
  head.set_outcome(AuditRecord::OUTCOME_ALLOWED);
  head.set_detail(StrCat(records.size(), " events follow late: the audit log could not be written when they happened "
                         "(they carry the time they happened)", out.problem.empty() ? "" : StrCat("; ", out.problem)));
  records.insert(records.begin(), std::move(head));
  if (Status st = log->AppendBatch(std::move(records)); !st.ok()) return st;
  out.written = f.payloads.size();
  if (::unlink(path.c_str()) != 0) return FailedPreconditionError(StrCat("late audit file ", path, ": ", std::strerror(errno)));
  return out;
}

Result<TreeHead> AuditLog::SignHeadLocked() {
  if (!options_.signer) return FailedPreconditionError("no audit signer configured");
  TreeHead h;
  h.set_tree_size(leaves_.size());
  h.set_root_hash(Root(leaves_));
  h.set_time_unix_ms(NowMs());
  Result<std::string> sig = options_.signer(TreeHeadSigningInput(h));
  if (!sig.ok()) return sig.status();
  h.set_signature(*sig);
  std::string frame;
  AppendFrame(&frame, Serialize(h));
  bool sticky = false;
  if (Status st = WriteAndSync(heads_fd_, FileSize(heads_fd_), frame, &sticky); !st.ok()) {
    if (sticky) {
      failed_ = true;
      damage_ = st.message();
    }
    return st;
  }
  last_head_size_ = h.tree_size();
  last_head_ms_ = h.time_unix_ms();
  return h;
}

Result<bool> AuditLog::SignHeadIfStale(int64_t max_age_ms) {
  std::lock_guard<std::mutex> l(mu_);
  if (failed_) return FailedPreconditionError(StrCat("the audit log cannot be written: ", damage_));
  if (leaves_.size() == last_head_size_ || NowMs() - last_head_ms_ < max_age_ms) return false;
  Result<TreeHead> h = SignHeadLocked();   // a failure (token away) is tried again next time
  if (!h.ok()) return h.status();
  return true;
}

Result<TreeHead> AuditLog::SignHead() {
  std::lock_guard<std::mutex> l(mu_);
  if (failed_) return FailedPreconditionError(StrCat("the audit log cannot be written: ", damage_));
  return SignHeadLocked();
}

uint64_t AuditLog::size() const {
  std::lock_guard<std::mutex> l(mu_);
  return leaves_.size();
}

Hash AuditLog::root() const {
  std::lock_guard<std::mutex> l(mu_);
  return Root(leaves_);
}

bool AuditLog::healthy() const {
  std::lock_guard<std::mutex> l(mu_);
  return !failed_ && !write_failing_;
}

Result<std::vector<Hash>> AuditLog::InclusionProofFor(uint64_t index, uint64_t tree_size) const {
  std::lock_guard<std::mutex> l(mu_);
  if (index >= tree_size || tree_size > leaves_.size()) return InvalidArgumentError("index or tree size out of range");
  return InclusionProof(leaves_, index, tree_size);
}

Result<std::vector<Hash>> AuditLog::ConsistencyProofFor(uint64_t old_size, uint64_t new_size) const {
  std::lock_guard<std::mutex> l(mu_);
  if (old_size == 0 || old_size > new_size || new_size > leaves_.size())
    return InvalidArgumentError("tree sizes out of range");
  return ConsistencyProof(leaves_, old_size, new_size);
}

// ReadAt reads record `seq` at its indexed place and checks it against its leaf hash (the
// file may have been changed under the running daemon).
Result<std::string> AuditLog::ReadAt(size_t seq) const {
  const Location& loc = index_[seq];
  int fd = ::open(files_[loc.file].c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return DataLossError(StrCat("audit log ", files_[loc.file], ": ", std::strerror(errno)));
  std::string bytes(loc.length, '\0');
  ssize_t n = ::pread(fd, bytes.data(), loc.length, static_cast<off_t>(loc.offset));
  ::close(fd);
  if (n != static_cast<ssize_t>(loc.length) || LeafHash(bytes) != leaves_[seq])
    return DataLossError(StrCat("audit record ", seq, " no longer matches what was written (run mailseal-audit verify)"));
  return bytes;
}

Result<std::vector<AuditRecord>> AuditLog::ReadRecords(uint64_t start, size_t limit) const {
  std::lock_guard<std::mutex> l(mu_);
  std::vector<AuditRecord> out;
  for (size_t i = start; i < index_.size() && out.size() < limit; ++i) {
    Result<std::string> bytes = ReadAt(i);
    if (!bytes.ok()) return bytes.status();
    out.emplace_back();
    out.back().ParseFromString(*bytes);
  }
  return out;
}

Result<std::string> AuditLog::RecordBytes(uint64_t seq) const {
  std::lock_guard<std::mutex> l(mu_);
  if (seq >= index_.size()) return NotFoundError(StrCat("no audit record ", seq, " (the log has ", index_.size(), ")"));
  return ReadAt(seq);
}

VerifyReport VerifyLog(const std::string& log_path, const std::string& heads_path, EVP_PKEY* audit_pub,
                       const std::vector<TreeHead>& exported) {
  VerifyReport rep;
  std::vector<Hash> leaves;
  std::vector<std::string> files = LogSegments(log_path);
  if (files.empty() || files.back() != log_path) files.push_back(log_path);   // reported unreadable below
  for (const std::string& file : files) {
    Framed log = ReadFramed(file, kLogMagic);
    size_t base = leaves.size();
    for (size_t i = 0; i < log.payloads.size(); ++i) {
      AuditRecord r;
      if (!r.ParseFromString(log.payloads[i]) || r.seq() != base + i) {
        rep.error = StrCat("record ", base + i, " (", file, "): unreadable or out of sequence");
        rep.first_bad_record = static_cast<int64_t>(base + i);
        return rep;
      }
      leaves.push_back(LeafHash(log.payloads[i]));
    }
    rep.records = leaves.size();
    if (log.error.empty() && log.torn_tail) {
      if (file != files.back()) {
        rep.error = StrCat(file, ": a rotated segment ends in the middle of a record");
        rep.first_bad_record = static_cast<int64_t>(leaves.size());
        return rep;
      }
      // A torn tail: a write that never returned (crash, full disk). Not tampering: no whole
      // record is in it, so nothing acknowledged was lost. mailseald cuts it off at start.
      struct stat st{};
      rep.torn_bytes = ::stat(file.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) - log.valid_bytes : 0;
    }
    if (!log.error.empty()) {
      if (log.error.find("entry ") == 0) {
        rep.error = StrCat("record ", base + log.bad_index, " (", file, "): ", log.error.substr(log.error.find(':') + 2));
        rep.first_bad_record = static_cast<int64_t>(base + log.bad_index);
      } else {
        rep.error = log.error;
        rep.first_bad_record = static_cast<int64_t>(base);
      }
      return rep;
    }
  }
  Framed heads = ReadFramed(heads_path, kHeadsMagic);
  if (!heads.error.empty()) {
    rep.error = StrCat("tree heads: ", heads.error);
    return rep;
  }
  std::vector<TreeHead> all;
  for (const std::string& p : heads.payloads) {
    TreeHead h;
    if (!h.ParseFromString(p)) {
      rep.error = "tree heads: unreadable head";
      return rep;
    }
    all.push_back(h);
  }
  all.insert(all.end(), exported.begin(), exported.end());
  uint64_t good_until = 0;   // records [0, good_until) are covered by a verified head
  for (size_t k = 0; k < all.size(); ++k) {
    const TreeHead& h = all[k];
    const char* which = k < heads.payloads.size() ? "tree head" : "exported tree head";
    if (!VerifyHeadSignature(h, audit_pub)) {
      rep.error = StrCat(which, " ", k, " (size ", h.tree_size(), "): signature does not verify with the audit key");
      return rep;
    }
    if (h.tree_size() > leaves.size()) {
      rep.error = StrCat("the log is truncated: ", which, " ", k, " covers ", h.tree_size(), " records, the log has ",
                         leaves.size());
      rep.first_bad_record = static_cast<int64_t>(leaves.size());
      return rep;
    }
    if (Root(leaves, 0, h.tree_size()) != h.root_hash()) {
      rep.error = StrCat("records do not match ", which, " ", k, " (size ", h.tree_size(),
                         "): a record in [", good_until, ", ", h.tree_size(), ") was changed or replaced");
      rep.first_bad_record = static_cast<int64_t>(good_until);
      return rep;
    }
    good_until = std::max<uint64_t>(good_until, h.tree_size());
    ++rep.heads_checked;
  }
  rep.covered = good_until;
  if (all.empty() && !leaves.empty()) {
    rep.error = StrCat("no signed tree head: none of the ", leaves.size(), " records is covered by a signature");
    rep.first_bad_record = 0;
  }
  return rep;
}

}  // namespace mailseal::audit
