// spool.cc — see spool.h and FORMAT.md.
#include "dataplane/queue/spool.h"

#include "dataplane/base/log.h"
#include "dataplane/queue/at_rest.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>


namespace mailseal::queue {
using base::Log;
using base::LogLevel;
namespace {

constexpr char kMagic[8] = {'M', 'S', 'P', 'O', 'O', 'L', '1', '\n'};
// Version 2: encrypted at rest (DE-22); a KEY record (salt + data key id) follows the magic.
constexpr char kMagic2[8] = {'M', 'S', 'P', 'O', 'O', 'L', '2', '\n'};
constexpr uint8_t kEnvelope = 1, kBody = 2, kEnd = 3, kStatus = 4, kKey = 5;
constexpr uint32_t kMaxRecord = 16u << 20;
constexpr size_t kMaxBodyRecord = 64 * 1024;
constexpr size_t kMaxStatuses = 10000;
constexpr size_t kHeader = 9;

Status Errno(std::string_view what, std::string_view path) {
  return InternalError(StrCat(what, " ", path, ": ", std::strerror(errno)));
}

uint32_t Crc(uint8_t type, std::string_view payload) {
  uLong c = crc32(0L, Z_NULL, 0);
  c = crc32(c, &type, 1);
  c = crc32(c, reinterpret_cast<const Bytef*>(payload.data()), static_cast<uInt>(payload.size()));
  return static_cast<uint32_t>(c);
}

void PutU32(std::string* s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutU64(std::string* s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint32_t GetU32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
uint64_t GetU64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

std::string Frame(uint8_t type, std::string_view payload) {
  std::string r;
  r.reserve(kHeader + payload.size());
  r.push_back(static_cast<char>(type));
  PutU32(&r, static_cast<uint32_t>(payload.size()));
  PutU32(&r, Crc(type, payload));
  r.append(payload);
  return r;
}

// The payload as stored: sealed under the file's data key, or as it is in a version 1 file.
std::string Stored(const DataKey* key, std::string_view salt, uint8_t type, std::string_view plain) {
  return key ? SealRecord(*key, type, salt, plain) : std::string(plain);
}

Status WriteAll(int fd, std::string_view data, std::string_view path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("write", path);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return OkStatus();
}

Status FsyncPath(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno("open", dir);
  int rc = ::fsync(fd);
  int saved = errno;
  ::close(fd);
  errno = saved;
  if (rc != 0) return Errno("fsync", dir);
  return OkStatus();
}

Status PreadAll(int fd, char* buf, size_t len, uint64_t off, const std::string& path) {
  while (len) {
    ssize_t n = ::pread(fd, buf, len, static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("read", path);
    }
    if (n == 0) return DataLossError(StrCat(path, ": unexpected end of file"));
    buf += n;
    len -= static_cast<size_t>(n);
    off += static_cast<uint64_t>(n);
  }
  return OkStatus();
}

// ReadOnlyFile closes its descriptor when it goes out of scope.
struct ReadOnlyFile {
  explicit ReadOnlyFile(const std::string& path) : fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {}
  ~ReadOnlyFile() {
    if (fd >= 0) ::close(fd);
  }
  ReadOnlyFile(const ReadOnlyFile&) = delete;
  ReadOnlyFile& operator=(const ReadOnlyFile&) = delete;
  int fd;
};

// ReadKeyRecord reads a version 2 file's KEY record (after the magic): the file's salt and its
// data key from the installed ring. Returns the offset after it. Unavailable: the ring does
// not hold that key (or there is no ring); DataLoss: the record is damaged.
Result<uint64_t> ReadKeyRecord(int fd, const std::string& path, uint64_t size, std::shared_ptr<const DataKey>* key,
                               std::string* salt) {
  uint64_t off = sizeof kMagic2;
  if (size - off < kHeader) return DataLossError(StrCat(path, ": truncated KEY record"));
  char hdr[kHeader];
  if (Status s = PreadAll(fd, hdr, kHeader, off, path); !s.ok()) return s;
  uint32_t len = GetU32(hdr + 1), crc = GetU32(hdr + 5);
  if (static_cast<uint8_t>(hdr[0]) != kKey || len <= kFileSaltBytes || len > 256 || size - off - kHeader < len)
    return DataLossError(StrCat(path, ": bad KEY record"));
  std::string payload(len, '\0');
  if (Status s = PreadAll(fd, payload.data(), len, off + kHeader, path); !s.ok()) return s;
  if (Crc(kKey, payload) != crc) return DataLossError(StrCat(path, ": CRC mismatch in the KEY record"));
  *salt = payload.substr(0, kFileSaltBytes);
  std::string id = payload.substr(kFileSaltBytes);
  std::shared_ptr<AtRestKeys> ring = InstalledAtRestKeys();
  if (!ring) return UnavailableError(StrCat(path, ": encrypted under data key ", id, ", and no key ring is loaded"));
  Result<std::shared_ptr<const DataKey>> k = ring->Find(id);
  if (!k.ok()) return UnavailableError(StrCat(path, ": ", k.status().message()));
  *key = std::move(k.value());
  return off + kHeader + len;
}

}  // namespace

const char* StateDir(SpoolState s) {
  switch (s) {
    case SpoolState::kIncoming: return "incoming";
    case SpoolState::kActive: return "active";
    case SpoolState::kDeferred: return "deferred";
    case SpoolState::kHold: return "hold";
    case SpoolState::kCorrupt: return "corrupt";
  }
  return "?";
}

Status Spool::Init() {
  if (::mkdir(root_.c_str(), 0700) != 0 && errno != EEXIST) return Errno("mkdir", root_);
  for (SpoolState s : {SpoolState::kIncoming, SpoolState::kActive, SpoolState::kDeferred,
                       SpoolState::kHold, SpoolState::kCorrupt}) {
    std::string d = StrCat(root_, "/", StateDir(s));
    if (::mkdir(d.c_str(), 0700) != 0 && errno != EEXIST) return Errno("mkdir", d);
    if (::access(d.c_str(), W_OK | X_OK) != 0) return Errno("access", d);
  }
  if (root_fd_ < 0) {
    root_fd_ = ::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root_fd_ < 0) return Errno("open", root_);
  }
  return FsyncPath(root_);
}

Spool::~Spool() {
  if (root_fd_ >= 0) ::close(root_fd_);
}

Status Spool::SyncAll() const {
  if (root_fd_ < 0) return FailedPreconditionError("spool not initialised");
  if (::syncfs(root_fd_) != 0) return Errno("syncfs", root_);
  return OkStatus();
}

std::string Spool::PathOf(SpoolState s, std::string_view id) const {
  return StrCat(root_, "/", StateDir(s), "/", id);
}

std::string Spool::NewQueueId() {
  static std::atomic<uint32_t> counter{0};
  static const uint32_t salt = [] {
    uint32_t v = 0;
    if (getrandom(&v, sizeof v, 0) != sizeof v) v = static_cast<uint32_t>(getpid());
    return v;
  }();
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                std::chrono::system_clock::now().time_since_epoch())
                .count();
  uint32_t c = counter.fetch_add(1, std::memory_order_relaxed);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%013llX%05X%04X", static_cast<unsigned long long>(us),
                (c ^ salt) & 0xFFFFF, (salt >> 16) & 0xFFFF);
  return buf;
}

Status Spool::Move(std::string_view id, SpoolState from, SpoolState to) const {
  std::string a = PathOf(from, id), b = PathOf(to, id);
  if (::rename(a.c_str(), b.c_str()) != 0) return Errno("rename", a);
  return FsyncDir(to);
}

Status Spool::Remove(std::string_view id, SpoolState s) const {
  std::string p = PathOf(s, id);
  if (::unlink(p.c_str()) != 0 && errno != ENOENT) return Errno("unlink", p);
  return OkStatus();
}

Status Spool::FsyncDir(SpoolState s) const {
  return FsyncPath(StrCat(root_, "/", StateDir(s)));
}

Result<std::vector<std::string>> Spool::List(SpoolState s) const {
  std::string d = StrCat(root_, "/", StateDir(s));
  DIR* dir = ::opendir(d.c_str());
  if (!dir) return Errno("opendir", d);
  std::vector<std::string> ids;
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    ids.emplace_back(e->d_name);
  }
  ::closedir(dir);
  return ids;
}

// ---- SpoolWriter -----------------------------------------------------------------------

SpoolWriter::~SpoolWriter() {
  if (fd_ >= 0) Abandon();
  StopRetaining();
}

Status SpoolWriter::Open(Spool* spool, const mailseal::v1::SpoolEnvelope& env_in) {
  spool_ = spool;
  for (int attempt = 0; attempt < 8; ++attempt) {
    id_ = env_in.queue_id().empty() ? spool->NewQueueId() : env_in.queue_id();
    std::string path = spool->PathOf(SpoolState::kIncoming, id_);
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd_ >= 0) break;
    if (errno != EEXIST) return Errno("create", path);
    if (!env_in.queue_id().empty()) return AlreadyExistsError(StrCat("spool file ", id_, " exists"));
  }
  if (fd_ < 0) return InternalError("could not create a unique spool file");
  mailseal::v1::SpoolEnvelope env = env_in;
  env.set_queue_id(id_);
  std::string payload;
  if (!env.SerializeToString(&payload)) return InternalError("envelope serialisation");
  if (std::shared_ptr<AtRestKeys> ring = InstalledAtRestKeys()) {
    key_ = ring->Current();
    salt_.assign(kFileSaltBytes, '\0');
    if (!key_ || RAND_bytes(reinterpret_cast<unsigned char*>(salt_.data()), static_cast<int>(salt_.size())) != 1)
      return UnavailableError("no data key to encrypt the spool file with");
    buf_.assign(kMagic2, sizeof kMagic2);
    buf_ += Frame(kKey, StrCat(salt_, key_->id));
  } else {
    buf_.assign(kMagic, sizeof kMagic);
  }
  buf_ += Frame(kEnvelope, Stored(key_.get(), salt_, kEnvelope, payload));
  OPENSSL_cleanse(payload.data(), payload.size());
  file_offset_ = buf_.size();
  envelope_ = std::move(env);
  body_crc_ = static_cast<uint32_t>(crc32(0L, Z_NULL, 0));
  retain_ = spool->body_budget() != nullptr;
  return OkStatus();
}

void SpoolWriter::StopRetaining() {
  retain_ = false;
  std::string().swap(retained_);
  if (reserved_ && spool_ && spool_->body_budget()) spool_->body_budget()->Release(reserved_);
  reserved_ = 0;
}

void SpoolWriter::AddBodyRecord() {
  std::string sealed;
  if (key_) sealed = SealRecord(*key_, kBody, salt_, pending_body_);
  const std::string& stored = key_ ? sealed : pending_body_;
  uint32_t crc = Crc(kBody, stored);
  extents_.push_back({file_offset_ + kHeader, static_cast<uint32_t>(stored.size()), crc});
  buf_.push_back(static_cast<char>(kBody));
  PutU32(&buf_, static_cast<uint32_t>(stored.size()));
  PutU32(&buf_, crc);
  buf_ += stored;
  file_offset_ += kHeader + stored.size();
  OPENSSL_cleanse(pending_body_.data(), pending_body_.size());
  pending_body_.clear();
}

SpoolMessage SpoolWriter::TakeMessage() {
  SpoolMessage m;
  m.id = id_;
  m.envelope = std::move(envelope_);
  m.body = std::move(extents_);
  m.body_size = body_size_;
  m.file_size = file_offset_;
  m.key = key_;
  m.salt = salt_;
  if (retain_ && retained_.size() == body_size_) {
    std::shared_ptr<BodyBudget> budget = spool_->body_budget();
    uint64_t n = reserved_;
    m.retained_body = std::shared_ptr<const std::string>(new std::string(std::move(retained_)),
                                                         [budget, n](const std::string* p) {
                                                           budget->Release(n);
                                                           delete p;
                                                         });
    reserved_ = 0;
    retain_ = false;
  }
  StopRetaining();
  return m;
}

Status SpoolWriter::FlushBuffer() {
  if (buf_.empty()) return OkStatus();
  Status st = WriteAll(fd_, buf_, spool_->PathOf(SpoolState::kIncoming, id_));
  buf_.clear();
  if (!st.ok()) failed_ = true;
  return st;
}

Status SpoolWriter::Append(std::string_view body) {
  if (failed_ || fd_ < 0) return FailedPreconditionError("spool writer failed earlier");
  body_size_ += body.size();
  if (retain_) {
    if (spool_->body_budget()->Reserve(body.size())) {
      reserved_ += body.size();
      retained_.append(body);
    } else {
      StopRetaining();   // over the budget: this message's job reads the file
    }
  }
  body_crc_ = static_cast<uint32_t>(
      crc32(body_crc_, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size())));
  while (!body.empty()) {
    size_t room = kMaxBodyRecord - pending_body_.size();
    size_t n = std::min(room, body.size());
    pending_body_.append(body.substr(0, n));
    body.remove_prefix(n);
    if (pending_body_.size() == kMaxBodyRecord) {
      AddBodyRecord();
      if (buf_.size() >= 256 * 1024) {
        if (Status st = FlushBuffer(); !st.ok()) return st;
      }
    }
  }
  return OkStatus();
}

Status SpoolWriter::Finish(bool sync) {
  if (failed_ || fd_ < 0) return FailedPreconditionError("spool writer failed earlier");
  if (!pending_body_.empty()) AddBodyRecord();
  std::string end;
  PutU64(&end, body_size_);
  PutU32(&end, body_crc_);
  std::string stored_end = Stored(key_.get(), salt_, kEnd, end);
  buf_ += Frame(kEnd, stored_end);
  file_offset_ += kHeader + stored_end.size();
  if (Status st = FlushBuffer(); !st.ok()) return st;
  if (sync && ::fdatasync(fd_) != 0) {
    failed_ = true;
    return Errno("fdatasync", spool_->PathOf(SpoolState::kIncoming, id_));
  }
  return OkStatus();
}

Status SpoolWriter::Publish(SpoolState to) {
  if (failed_ || fd_ < 0) return FailedPreconditionError("spool writer failed earlier");
  std::string a = spool_->PathOf(SpoolState::kIncoming, id_);
  std::string b = spool_->PathOf(to, id_);
  if (::rename(a.c_str(), b.c_str()) != 0) {
    failed_ = true;
    return Errno("rename", a);
  }
  ::close(fd_);
  fd_ = -1;
  return OkStatus();
}

void SpoolWriter::Abandon() {
  StopRetaining();
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
  std::string p = spool_->PathOf(SpoolState::kIncoming, id_);
  ::unlink(p.c_str());
}

// ---- reading ---------------------------------------------------------------------------

Result<SpoolMessage> ReadSpoolFile(const std::string& path) {
  ReadOnlyFile file(path);
  if (file.fd < 0) return Errno("open", path);
  const int fd = file.fd;
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Errno("fstat", path);
  uint64_t size = static_cast<uint64_t>(st.st_size);
  auto corrupt = [&](std::string_view why) {
    return DataLossError(StrCat(path, ": ", why));
  };
  if (size < sizeof kMagic) return corrupt("too short for a spool file");
  char magic[sizeof kMagic];
  if (Status s = PreadAll(fd, magic, sizeof magic, 0, path); !s.ok()) return s;
  const bool sealed = std::memcmp(magic, kMagic2, sizeof kMagic2) == 0;
  if (!sealed && std::memcmp(magic, kMagic, sizeof kMagic) != 0) return corrupt("bad magic");

  SpoolMessage msg;
  uint64_t off = sizeof kMagic;
  if (sealed) {   // version 2: the KEY record names the data key (DE-22)
    Result<uint64_t> after = ReadKeyRecord(fd, path, size, &msg.key, &msg.salt);
    if (!after.ok()) return after.status();
    off = *after;
  }
  // The payload as written (for version 2: opened and authenticated).
  auto open = [&](uint8_t type, std::string* payload) -> Status {
    if (!sealed) return OkStatus();
    Result<std::string> plain = OpenRecord(*msg.key, type, msg.salt, *payload);
    if (!plain.ok()) return plain.status();
    OPENSSL_cleanse(payload->data(), payload->size());
    *payload = std::move(plain.value());
    return OkStatus();
  };
  bool have_env = false, have_end = false;
  uint32_t body_crc = static_cast<uint32_t>(crc32(0L, Z_NULL, 0));
  std::string payload;
  while (off < size) {
    // After END, damage of any kind is a torn tail (a crash or a failed append): the message
    // itself is whole, so it is kept and the tail is cut off (issue #13). Before END: corrupt.
    auto torn = [&](std::string_view why) {
      msg.torn_tail = true;
      msg.tail_problem = StrCat(why, " at offset ", off);
    };
    if (size - off < kHeader) {
      if (have_end) {
        torn("truncated record header");
        break;
      }
      return corrupt("truncated record header");
    }
    char hdr[kHeader];
    if (Status s = PreadAll(fd, hdr, kHeader, off, path); !s.ok()) return s;
    uint8_t type = static_cast<uint8_t>(hdr[0]);
    uint32_t len = GetU32(hdr + 1), crc = GetU32(hdr + 5);
    if (len > kMaxRecord || size - off - kHeader < len) {
      if (have_end) {
        torn(len > kMaxRecord ? "record too long" : "truncated record");
        break;
      }
      return corrupt(len > kMaxRecord ? "record too long" : "truncated record");
    }
    payload.resize(len);
    if (Status s = PreadAll(fd, payload.data(), len, off + kHeader, path); !s.ok()) return s;
    if (Crc(type, payload) != crc) {
      if (have_end) {
        torn("CRC mismatch");
        break;
      }
      return corrupt(StrCat("CRC mismatch at offset ", off));
    }
    const uint32_t stored_len = len;
    if (Status os = open(type, &payload); !os.ok()) {
      if (have_end) {
        torn(os.message());
        break;
      }
      return corrupt(StrCat(os.message(), " at offset ", off));
    }
    len = static_cast<uint32_t>(payload.size());
    if (!have_env) {
      if (type != kEnvelope) return corrupt("first record is not the envelope");
      if (len > (1u << 20) || !msg.envelope.ParseFromString(payload))
        return corrupt("unreadable envelope");
      if (msg.envelope.recipients_size() == 0 || msg.envelope.recipients_size() > 100000)
        return corrupt("envelope recipient count out of range");
      have_env = true;
    } else if (!have_end) {
      if (type == kBody) {
        if (len > kMaxBodyRecord) return corrupt("body record too long");
        msg.body.push_back({off + kHeader, stored_len, crc});
        msg.body_size += len;
        body_crc = static_cast<uint32_t>(
            crc32(body_crc, reinterpret_cast<const Bytef*>(payload.data()), len));
      } else if (type == kEnd) {
        if (len != 12) return corrupt("bad END record");
        if (GetU64(payload.data()) != msg.body_size || GetU32(payload.data() + 8) != body_crc)
          return corrupt("END does not match the body");
        have_end = true;
      } else {
        return corrupt("unexpected record before END");
      }
    } else {
      mailseal::v1::SpoolStatus status;
      if (type != kStatus || msg.statuses.size() >= kMaxStatuses || !status.ParseFromString(payload)) {
        torn(type != kStatus ? "unexpected record after END"
             : msg.statuses.size() >= kMaxStatuses ? "too many STATUS records" : "unreadable STATUS record");
        break;
      }
      msg.statuses.push_back(std::move(status));
    }
    OPENSSL_cleanse(payload.data(), payload.size());
    off += kHeader + stored_len;
  }
  if (!have_env) return corrupt("no envelope");
  if (!have_end) return corrupt("no END record (incomplete message)");
  msg.id = msg.envelope.queue_id();
  msg.file_size = off;
  return msg;
}

Status ReadBody(const std::string& path, const SpoolMessage& msg,
                      const std::function<Status(std::string_view)>& sink) {
  ReadOnlyFile file(path);
  if (file.fd < 0) return Errno("open", path);
  const int fd = file.fd;
  std::string buf;
  for (const BodyExtent& e : msg.body) {
    buf.resize(e.length);
    if (Status s = PreadAll(fd, buf.data(), e.length, e.offset, path); !s.ok()) return s;
    if (Crc(kBody, buf) != e.crc)
      return DataLossError(StrCat(path, ": body CRC mismatch at ", e.offset));
    if (msg.key) {
      Result<std::string> plain = OpenRecord(*msg.key, kBody, msg.salt, buf);
      if (!plain.ok()) return DataLossError(StrCat(path, ": ", plain.status().message(), " at ", e.offset));
      Status s = sink(*plain);
      OPENSSL_cleanse(plain->data(), plain->size());
      if (!s.ok()) return s;
      continue;
    }
    if (Status s = sink(buf); !s.ok()) return s;
  }
  return OkStatus();
}

Status AppendStatus(const std::string& path, const mailseal::v1::SpoolStatus& status) {
  std::string payload;
  if (!status.SerializeToString(&payload)) return InternalError("status serialisation");
  int fd = ::open(path.c_str(), O_RDWR | O_APPEND | O_CLOEXEC);
  if (fd < 0) return Errno("open", path);
  struct stat st_before {};
  if (::fstat(fd, &st_before) == 0 && st_before.st_size >= static_cast<off_t>(sizeof kMagic2)) {
    char magic[sizeof kMagic2];
    if (PreadAll(fd, magic, sizeof magic, 0, path).ok() && std::memcmp(magic, kMagic2, sizeof magic) == 0) {
      std::shared_ptr<const DataKey> key;
      std::string salt;
      Result<uint64_t> kr = ReadKeyRecord(fd, path, static_cast<uint64_t>(st_before.st_size), &key, &salt);
      if (!kr.ok()) {
        ::close(fd);
        return kr.status();
      }
      std::string sealed = SealRecord(*key, kStatus, salt, payload);
      payload.swap(sealed);
    }
  }
  if (::fstat(fd, &st_before) != 0) {
    Status st = Errno("fstat", path);
    ::close(fd);
    return st;
  }
  Status st = WriteAll(fd, Frame(kStatus, payload), path);
  if (st.ok() && ::fdatasync(fd) != 0) st = Errno("fdatasync", path);
  if (!st.ok()) {
    // All or nothing (issue #13): a half-written record (ENOSPC, EIO) is cut back, so that the
    // next append does not land behind it. Should the cut fail too, the reader still treats
    // anything damaged after END as a torn tail, never as a reason to drop the message.
    if (::ftruncate(fd, st_before.st_size) != 0 || ::fdatasync(fd) != 0)
      st = Status(st.code(), StrCat(st.message(), "; and the partial record could not be cut back: ", std::strerror(errno)));
  }
  ::close(fd);
  return st;
}

Status CutTornTail(const std::string& path, const SpoolMessage& msg) {
  if (!msg.torn_tail) return OkStatus();
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Errno("open", path);
  Status st = OkStatus();
  if (::ftruncate(fd, static_cast<off_t>(msg.file_size)) != 0) st = Errno("ftruncate", path);
  else if (::fdatasync(fd) != 0) st = Errno("fdatasync", path);
  ::close(fd);
  return st;
}

Result<std::string> WriteWholeMessage(Spool* spool, mailseal::v1::SpoolEnvelope env,
                                              std::string_view body, SpoolState to, Durability durability) {
  const bool sync = durability == Durability::kSynced;
  SpoolWriter w;
  if (Status s = w.Open(spool, env); !s.ok()) return s;
  w.KeepNoBody();
  if (Status s = w.Append(body); !s.ok()) return s;
  if (Status s = w.Finish(sync); !s.ok()) return s;
  if (Status s = w.Publish(to); !s.ok()) return s;
  if (sync)
    if (Status s = spool->FsyncDir(to); !s.ok()) return s;
  return w.id();
}

Result<SpoolMessage> RequeueHeld(Spool* spool, const std::string& id) {
  std::string path = spool->PathOf(SpoolState::kHold, id);
  Result<SpoolMessage> m = ReadSpoolFile(path);
  if (!m.ok()) return NotFoundError(StrCat("no held message ", id, ": ", m.status().message()));
  std::string body;
  if (Status rs = ReadBody(path, *m, [&](std::string_view c) {
        body.append(c);
        return OkStatus();
      });
      !rs.ok())
    return rs;
  mailseal::v1::SpoolEnvelope env = m->envelope;
  env.clear_queue_id();
  env.set_crypto_done(false);
  env.clear_derived_from();
  env.clear_derived_rcpts();
  env.clear_hold_reason();
  env.clear_hold_cert_domain();
  env.clear_protection();
  Result<std::string> qid = WriteWholeMessage(spool, env, body);
  if (!qid.ok()) return qid.status();
  Result<SpoolMessage> fresh = ReadSpoolFile(spool->PathOf(SpoolState::kActive, *qid));
  if (!fresh.ok()) return fresh.status();
  if (Status st = spool->Remove(id, SpoolState::kHold); !st.ok())
    Log(LogLevel::kError, "spool", "released message not removed from hold/", {{"qid", id}, {"error", st.message()}});
  return fresh;
}

}  // namespace mailseal::queue
