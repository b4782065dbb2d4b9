// archive.cc — see archive.h.
#include "dataplane/records/archive.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/pem.h>
#include <openssl/cms.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <sstream>

#include "dataplane/base/file.h"
#include "dataplane/base/strings.h"
#include "dataplane/queue/at_rest.h"

namespace mailseal::records {
namespace {

constexpr char kMagic[8] = {'M', 'S', 'A', 'R', 'C', 'H', '1', '\n'};
constexpr uint8_t kRecordType = 0xA1;           // the additional data's type byte
constexpr uint32_t kMaxRecord = 80u << 20;      // a message (≤ 64 MiB) and its envelope, sealed
constexpr char kShareHeader[] = "mailseal archive share v1";
// The sealed private key (archive-key.sealed): AES-256-GCM under the split secret.
constexpr uint8_t kKeyType = 0xA0;
constexpr std::string_view kKeySalt = "mailseal archive key v1";

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using Bio = std::unique_ptr<BIO, BioFree>;

std::string OpenSslError(std::string_view what) {
  unsigned long e = ERR_get_error();
  char buf[256] = "unknown error";
  if (e) ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return StrCat(what, ": ", buf);
}

void PutU32(std::string* s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint32_t GetU32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
uint32_t Crc(std::string_view s) {
  return static_cast<uint32_t>(crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(s.data()), static_cast<uInt>(s.size())));
}

// A framed piece of an archive file: [length u32le][crc32 u32le][payload].
std::string Frame(std::string_view payload) {
  std::string r;
  PutU32(&r, static_cast<uint32_t>(payload.size()));
  PutU32(&r, Crc(payload));
  r.append(payload);
  return r;
}

std::string PublicDer(EVP_PKEY* k) {
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(k, &der);
  std::string out = n > 0 ? std::string(reinterpret_cast<char*>(der), static_cast<size_t>(n)) : "";
  OPENSSL_free(der);
  return out;
}

std::string Sha256Hex(std::string_view b) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(b.data()), b.size(), md);
  return base::HexLower(std::string_view(reinterpret_cast<char*>(md), sizeof md));
}

Result<Pkey> ReadPublicKey(const std::string& path) {
  Result<std::string> pem = base::ReadFile(path, 64 * 1024);
  if (!pem.ok()) return pem.status();
  Bio b(BIO_new_mem_buf(pem->data(), static_cast<int>(pem->size())));
  EVP_PKEY* k = PEM_read_bio_PUBKEY(b.get(), nullptr, nullptr, nullptr);
  if (!k) return DataLossError(OpenSslError(StrCat(path, ": not a PEM public key")));
  return Pkey(k);
}

bool SafeName(std::string_view n) {
  if (n.empty() || n.size() > 64 || n[0] == '.') return false;
  for (char c : n)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  return true;
}

Status MkdirP(const std::string& d) {
  if (::mkdir(d.c_str(), 0700) != 0 && errno != EEXIST) return InternalError(StrCat("mkdir ", d, ": ", std::strerror(errno)));
  return OkStatus();
}

Status FsyncDir(const std::string& d) {
  int fd = ::open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return InternalError(StrCat("open ", d, ": ", std::strerror(errno)));
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return InternalError(StrCat("fsync ", d, ": ", std::strerror(errno)));
  return OkStatus();
}

std::string DayOf(int64_t unix_ms) {
  time_t t = static_cast<time_t>(unix_ms / 1000);
  tm g{};
  gmtime_r(&t, &g);
  char buf[16];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", &g);
  return buf;
}

bool IsDay(std::string_view n) {
  if (n.size() != 10 || n[4] != '-' || n[7] != '-') return false;
  for (size_t i : {0, 1, 2, 3, 5, 6, 8, 9})
    if (n[i] < '0' || n[i] > '9') return false;
  return true;
}

int64_t NowMs() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// The file's data key, wrapped to (and unwrapped with) the archive key: RSA-OAEP, SHA-256.
Result<std::string> RsaOaep(EVP_PKEY* k, std::string_view in, bool encrypt) {
  std::unique_ptr<EVP_PKEY_CTX, void (*)(EVP_PKEY_CTX*)> ctx(EVP_PKEY_CTX_new(k, nullptr), EVP_PKEY_CTX_free);
  if (!ctx || (encrypt ? EVP_PKEY_encrypt_init(ctx.get()) : EVP_PKEY_decrypt_init(ctx.get())) != 1 ||
      EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_OAEP_PADDING) != 1 ||
      EVP_PKEY_CTX_set_rsa_oaep_md(ctx.get(), EVP_sha256()) != 1 || EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), EVP_sha256()) != 1)
    return InternalError(OpenSslError("RSA-OAEP"));
  size_t n = 0;
  auto* src = reinterpret_cast<const unsigned char*>(in.data());
  int rc = encrypt ? EVP_PKEY_encrypt(ctx.get(), nullptr, &n, src, in.size()) : EVP_PKEY_decrypt(ctx.get(), nullptr, &n, src, in.size());
  if (rc != 1) return DataLossError(OpenSslError("RSA-OAEP"));
  std::string out(n, '\0');
  auto* dst = reinterpret_cast<unsigned char*>(out.data());
  rc = encrypt ? EVP_PKEY_encrypt(ctx.get(), dst, &n, src, in.size()) : EVP_PKEY_decrypt(ctx.get(), dst, &n, src, in.size());
  if (rc != 1) return DataLossError(OpenSslError("RSA-OAEP"));
  out.resize(n);
  return out;
}

}  // namespace

Result<Pkey> EnsureArchiveKey(const std::string& dir, const std::vector<Custodian>& custodians, unsigned threshold,
                              bool* created) {
  if (created) *created = false;
  if (Status st = MkdirP(dir); !st.ok()) return st;
  std::string pub_path = StrCat(dir, "/archive-key.pem");
  if (::access(pub_path.c_str(), F_OK) == 0) return ReadPublicKey(pub_path);
  if (threshold < 2 || custodians.size() < threshold)
    return FailedPreconditionError("the archive key needs a ceremony of at least 2 custodians (control.ceremony)");
  std::vector<X509*> certs;
  auto free_certs = [&] {
    for (X509* x : certs) X509_free(x);
  };
  for (const Custodian& c : custodians) {
    if (!SafeName(c.name)) {
      free_certs();
      return InvalidArgumentError(StrCat("custodian name '", c.name, "' cannot name a share file"));
    }
    Bio b(BIO_new_mem_buf(c.cert_pem.data(), static_cast<int>(c.cert_pem.size())));
    X509* x = PEM_read_bio_X509(b.get(), nullptr, nullptr, nullptr);
    if (!x) {
      free_certs();
      return InvalidArgumentError(StrCat("custodian ", c.name, ": no certificate"));
    }
    certs.push_back(x);
  }
  // The key, in memory only for as long as it takes to split it.
  Pkey key(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{3072}));
  if (!key) {
    free_certs();
    return InternalError(OpenSslError("archive key generation"));
  }
  unsigned char* der = nullptr;
  int der_len = i2d_PrivateKey(key.get(), &der);
  if (der_len <= 0) {
    free_certs();
    return InternalError(OpenSslError("archive key encoding"));
  }
  // The private key is sealed under a random 256-bit secret, and that secret is what is split
  // (a share is then as long as the secret: 32 bytes, whatever the key).
  queue::DataKey sealer;
  sealer.id = "archive-key";
  if (RAND_priv_bytes(sealer.key.data(), 32) != 1) {
    OPENSSL_clear_free(der, static_cast<size_t>(der_len));
    free_certs();
    return InternalError("no randomness");
  }
  std::string sealed = queue::SealRecord(sealer, kKeyType, kKeySalt,
                                         std::string_view(reinterpret_cast<char*>(der), static_cast<size_t>(der_len)));
  OPENSSL_clear_free(der, static_cast<size_t>(der_len));
  hsm::Secret secret(std::string(reinterpret_cast<char*>(sealer.key.data()), 32));
  if (Status st = base::WriteFileDurably(StrCat(dir, "/archive-key.sealed"), sealed, 0600); !st.ok()) {
    free_certs();
    return st;
  }
  std::string fingerprint = Sha256Hex(PublicDer(key.get()));
  Result<std::vector<hsm::Share>> shares = hsm::Split(secret, threshold, static_cast<unsigned>(custodians.size()));
  if (!shares.ok()) {
    free_certs();
    return shares.status();
  }
  if (Status st = MkdirP(StrCat(dir, "/shares")); !st.ok()) {
    free_certs();
    return st;
  }
  Status failed = OkStatus();
  for (size_t i = 0; i < custodians.size() && failed.ok(); ++i) {
    std::string text = StrCat(kShareHeader, "\ncustodian ", custodians[i].name, "\nthreshold ", threshold, "\nx ",
                              static_cast<unsigned>((*shares)[i].x), "\ny ", base::HexLower((*shares)[i].y), "\nkey-sha256 ",
                              fingerprint, "\n");
    STACK_OF(X509)* to = sk_X509_new_null();
    sk_X509_push(to, certs[i]);
    Bio in(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
    CMS_ContentInfo* cms = CMS_encrypt(to, in.get(), EVP_aes_256_cbc(), CMS_BINARY);
    sk_X509_free(to);
    OPENSSL_cleanse(text.data(), text.size());
    OPENSSL_cleanse((*shares)[i].y.data(), (*shares)[i].y.size());
    if (!cms) {
      failed = InternalError(OpenSslError(StrCat("share for ", custodians[i].name)));
      break;
    }
    Bio out(BIO_new(BIO_s_mem()));
    PEM_write_bio_CMS(out.get(), cms);
    CMS_ContentInfo_free(cms);
    char* p = nullptr;
    long n = BIO_get_mem_data(out.get(), &p);
    failed = base::WriteFileDurably(StrCat(dir, "/shares/", custodians[i].name, ".pem"), std::string(p, static_cast<size_t>(n)),
                                    0644);
  }
  free_certs();
  if (!failed.ok()) return failed;
  Bio pub(BIO_new(BIO_s_mem()));
  PEM_write_bio_PUBKEY(pub.get(), key.get());
  char* p = nullptr;
  long n = BIO_get_mem_data(pub.get(), &p);
  if (Status st = base::WriteFileDurably(pub_path, std::string(p, static_cast<size_t>(n)), 0644); !st.ok()) return st;
  if (created) *created = true;
  // Only the public half is returned; the private key and the secret are wiped as they go.
  Bio again(BIO_new_mem_buf(p, static_cast<int>(n)));
  EVP_PKEY* pk = PEM_read_bio_PUBKEY(again.get(), nullptr, nullptr, nullptr);
  return Pkey(pk);
}

Result<std::string> DecryptShare(std::string_view pem, EVP_PKEY* custodian_key, std::string_view custodian_cert_pem) {
  Bio in(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  CMS_ContentInfo* cms = PEM_read_bio_CMS(in.get(), nullptr, nullptr, nullptr);
  if (!cms) return InvalidArgumentError(OpenSslError("not a share (PEM CMS)"));
  X509* cert = nullptr;
  if (!custodian_cert_pem.empty()) {
    Bio cb(BIO_new_mem_buf(custodian_cert_pem.data(), static_cast<int>(custodian_cert_pem.size())));
    cert = PEM_read_bio_X509(cb.get(), nullptr, nullptr, nullptr);
  }
  Bio out(BIO_new(BIO_s_mem()));
  int ok = CMS_decrypt(cms, custodian_key, cert, nullptr, out.get(), CMS_BINARY);
  CMS_ContentInfo_free(cms);
  X509_free(cert);
  if (ok != 1) return PermissionDeniedError(OpenSslError("the share does not open with this key"));
  char* p = nullptr;
  long n = BIO_get_mem_data(out.get(), &p);
  std::string text(p, static_cast<size_t>(n));
  OPENSSL_cleanse(p, static_cast<size_t>(n));
  return text;
}

Result<hsm::Share> ParseShare(std::string_view text) {
  std::istringstream in{std::string(text)};
  std::string line, y;
  hsm::Share s;
  bool header = false, have_x = false, have_y = false;
  while (std::getline(in, line)) {
    if (line == kShareHeader) header = true;
    else if (line.starts_with("x ")) {
      int v = std::atoi(line.c_str() + 2);
      if (v < 1 || v > 255) return InvalidArgumentError("share: bad x");
      s.x = static_cast<uint8_t>(v);
      have_x = true;
    } else if (line.starts_with("y ")) {
      have_y = base::FromHexLower(line.substr(2), &s.y) && !s.y.empty();
    }
    OPENSSL_cleanse(line.data(), line.size());
  }
  if (!header || !have_x || !have_y) return InvalidArgumentError("not a mailseal archive share");
  return s;
}

Result<Pkey> RebuildArchiveKey(const std::string& dir, const std::vector<hsm::Share>& shares, unsigned threshold) {
  Result<Pkey> pub = ReadPublicKey(StrCat(dir, "/archive-key.pem"));
  if (!pub.ok()) return pub.status();
  Result<std::string> sealed = base::ReadFile(StrCat(dir, "/archive-key.sealed"), 64 * 1024);
  if (!sealed.ok()) return sealed.status();
  Result<hsm::Secret> secret = hsm::Combine(shares, threshold);
  if (!secret.ok()) return secret.status();
  if (secret->Reveal().size() != 32)
    return PermissionDeniedError("the shares do not rebuild the archive key (a wrong or foreign share)");
  queue::DataKey opener;
  opener.id = "archive-key";
  std::memcpy(opener.key.data(), secret->Reveal().data(), 32);
  Result<std::string> der = queue::OpenRecord(opener, kKeyType, kKeySalt, *sealed);
  if (!der.ok()) return PermissionDeniedError("the shares do not rebuild the archive key (a wrong or foreign share)");
  const auto* p = reinterpret_cast<const unsigned char*>(der->data());
  EVP_PKEY* k = d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(der->size()));
  OPENSSL_cleanse(der->data(), der->size());
  ERR_clear_error();
  Pkey key(k);
  if (!key || EVP_PKEY_eq(key.get(), pub->get()) != 1)
    return PermissionDeniedError("the shares do not rebuild the archive key (a wrong or foreign share)");
  return key;
}

// ---- writing ------------------------------------------------------------------------------

ArchiveWriter::ArchiveWriter(std::string dir, EVP_PKEY* public_key, std::string run, int writer)
    : dir_(std::move(dir)), run_(std::move(run)), writer_(writer) {
  EVP_PKEY_up_ref(public_key);
  pub_.reset(public_key);
}

ArchiveWriter::~ArchiveWriter() {
  if (fd_ >= 0) ::close(fd_);
  OPENSSL_cleanse(key_.data(), key_.size());
}

Status ArchiveWriter::OpenFile(const std::string& day) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  OPENSSL_cleanse(key_.data(), key_.size());
  std::string d = StrCat(dir_, "/", day);
  bool fresh_day = ::access(d.c_str(), F_OK) != 0;
  if (Status st = MkdirP(d); !st.ok()) return st;
  if (fresh_day)
    if (Status st = FsyncDir(dir_); !st.ok()) return st;
  std::string path;
  for (int seq = 0; seq < 1000 && fd_ < 0; ++seq) {
    path = StrCat(d, "/", run_, "-", writer_, "-", seq, ".arc");
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
    if (fd_ < 0 && errno != EEXIST) return InternalError(StrCat("create ", path, ": ", std::strerror(errno)));
  }
  if (fd_ < 0) return InternalError(StrCat("no free archive file name in ", d));
  key_.assign(32, '\0');
  salt_.assign(16, '\0');
  if (RAND_priv_bytes(reinterpret_cast<unsigned char*>(key_.data()), 32) != 1 ||
      RAND_bytes(reinterpret_cast<unsigned char*>(salt_.data()), 16) != 1)
    return InternalError("no randomness");
  Result<std::string> wrapped = RsaOaep(pub_.get(), key_, true);
  if (!wrapped.ok()) return wrapped.status();
  std::string head(kMagic, sizeof kMagic);
  head += Frame(salt_ + *wrapped);
  ssize_t n = ::write(fd_, head.data(), head.size());
  if (n != static_cast<ssize_t>(head.size()) || ::fdatasync(fd_) != 0)
    return InternalError(StrCat("write ", path, ": ", std::strerror(errno)));
  day_ = day;
  return FsyncDir(d);
}

Status ArchiveWriter::Append(const mailseal::v1::ArchiveRecord& record) {
  std::string day = DayOf(record.time_unix_ms() ? record.time_unix_ms() : NowMs());
  if (fd_ < 0 || failed_ || day != day_) {
    failed_ = false;
    if (Status st = OpenFile(day); !st.ok()) {
      failed_ = true;
      return st;
    }
  }
  std::string plain;
  if (!record.SerializeToString(&plain)) return InternalError("archive record serialisation");
  queue::DataKey k;
  k.id = "archive";
  std::memcpy(k.key.data(), key_.data(), 32);
  std::string framed = Frame(queue::SealRecord(k, kRecordType, salt_, plain));
  OPENSSL_cleanse(plain.data(), plain.size());
  struct stat before {};
  ::fstat(fd_, &before);
  ssize_t n = ::write(fd_, framed.data(), framed.size());
  if (n != static_cast<ssize_t>(framed.size()) || ::fdatasync(fd_) != 0) {
    Status st = InternalError(StrCat("archive append: ", n < 0 ? std::strerror(errno) : "short write or sync failure"));
    // All or nothing: a partial record is cut off, and the next append starts a new file.
    if (::ftruncate(fd_, before.st_size) != 0) {}
    failed_ = true;
    return st;
  }
  return OkStatus();
}

// ---- reading ------------------------------------------------------------------------------

Result<Export> Read(const std::string& dir, EVP_PKEY* private_key, const Query& q, uint64_t max_bytes) {
  Export out;
  DIR* top = ::opendir(dir.c_str());
  if (!top) return InternalError(StrCat("opendir ", dir, ": ", std::strerror(errno)));
  std::vector<std::string> days;
  while (dirent* e = ::readdir(top))
    if (IsDay(e->d_name)) days.emplace_back(e->d_name);
  ::closedir(top);
  std::sort(days.begin(), days.end());
  std::string first = q.since_unix_ms ? DayOf(q.since_unix_ms) : "";
  std::string last = q.until_unix_ms ? DayOf(q.until_unix_ms) : "";
  std::string sender = base::AsciiLower(q.sender), recipient = base::AsciiLower(q.recipient);
  uint64_t bytes = 0;
  for (const std::string& day : days) {
    if ((!first.empty() && day < first) || (!last.empty() && day > last)) continue;
    std::string d = StrCat(dir, "/", day);
    DIR* dd = ::opendir(d.c_str());
    if (!dd) continue;
    std::vector<std::string> files;
    while (dirent* e = ::readdir(dd)) {
      std::string n = e->d_name;
      if (n.size() > 4 && n.ends_with(".arc")) files.push_back(n);
    }
    ::closedir(dd);
    std::sort(files.begin(), files.end());
    for (const std::string& f : files) {
      std::string path = StrCat(d, "/", f);
      Result<std::string> data = base::ReadFile(path, uint64_t{4} << 30);
      if (!data.ok()) return data.status();
      ++out.files_read;
      std::string_view v = *data;
      if (v.size() < sizeof kMagic || std::memcmp(v.data(), kMagic, sizeof kMagic) != 0)
        return DataLossError(StrCat(path, ": not an archive file"));
      v.remove_prefix(sizeof kMagic);
      auto next = [&](std::string_view* payload) -> int {   // 1: a record; 0: end; -1: torn
        if (v.empty()) return 0;
        if (v.size() < 8) return -1;
        uint32_t len = GetU32(v.data()), crc = GetU32(v.data() + 4);
        if (len > kMaxRecord || v.size() - 8 < len) return -1;
        *payload = v.substr(8, len);
        if (Crc(*payload) != crc) return -1;
        v.remove_prefix(8 + len);
        return 1;
      };
      std::string_view head;
      if (next(&head) != 1 || head.size() <= 16) {
        ++out.torn;   // a file whose header never became durable: nothing was archived in it
        continue;
      }
      Result<std::string> key = RsaOaep(private_key, head.substr(16), false);
      if (!key.ok() || key->size() != 32) return DataLossError(StrCat(path, ": its data key does not open with the archive key"));
      queue::DataKey k;
      k.id = "archive";
      std::memcpy(k.key.data(), key->data(), 32);
      OPENSSL_cleanse(key->data(), key->size());
      std::string salt(head.substr(0, 16));
      std::string_view payload;
      int r;
      while ((r = next(&payload)) == 1) {
        Result<std::string> plain = queue::OpenRecord(k, kRecordType, salt, payload);
        if (!plain.ok()) return DataLossError(StrCat(path, ": ", plain.status().message()));
        mailseal::v1::ArchiveRecord rec;
        bool parsed = rec.ParseFromString(*plain);
        OPENSSL_cleanse(plain->data(), plain->size());
        if (!parsed) return DataLossError(StrCat(path, ": unreadable record"));
        if (q.since_unix_ms && rec.time_unix_ms() < q.since_unix_ms) continue;
        if (q.until_unix_ms && rec.time_unix_ms() >= q.until_unix_ms) continue;
        if (!sender.empty() && base::AsciiLower(rec.mail_from()) != sender) continue;
        if (!recipient.empty() &&
            std::none_of(rec.recipients().begin(), rec.recipients().end(),
                         [&](const std::string& a) { return base::AsciiLower(a) == recipient; }))
          continue;
        bytes += rec.message().size();
        if (bytes > max_bytes)
          return ResourceExhaustedError(StrCat("the export would pass ", max_bytes, " bytes: narrow the query"));
        out.records.push_back(std::move(rec));
      }
      if (r < 0) ++out.torn;
    }
  }
  std::stable_sort(out.records.begin(), out.records.end(),
                   [](const auto& a, const auto& b) { return a.time_unix_ms() < b.time_unix_ms(); });
  return out;
}

std::string ToMbox(const Export& e) {
  std::string out;
  for (const auto& r : e.records) {
    time_t t = static_cast<time_t>(r.time_unix_ms() / 1000);
    tm g{};
    gmtime_r(&t, &g);
    char date[64];
    std::strftime(date, sizeof date, "%a %b %e %H:%M:%S %Y", &g);
    out += StrCat("From ", r.mail_from().empty() ? "MAILER-DAEMON" : r.mail_from(), " ", date, "\n");
    std::string_view m = r.message();
    while (!m.empty()) {   // mboxrd: every ">*From " line gets one more '>' (undone by readers)
      size_t nl = m.find('\n');
      std::string_view line = m.substr(0, nl == std::string_view::npos ? m.size() : nl + 1);
      size_t gt = line.find_first_not_of('>');
      if (gt != std::string_view::npos && line.substr(gt).starts_with("From ")) out += '>';
      out.append(line);
      m.remove_prefix(line.size());
    }
    if (!out.ends_with("\n")) out += "\n";
    out += "\n";
  }
  return out;
}

std::vector<ExportFile> ToMaildir(const Export& e) {
  std::vector<ExportFile> out;
  size_t i = 0;
  for (const auto& r : e.records)
    out.push_back({StrCat("cur/", r.time_unix_ms() / 1000, ".", r.queue_id().empty() ? "m" : r.queue_id(), "-", i++,
                          ".mailseal:2,"),
                   r.message()});
  return out;
}

Result<std::vector<Expired>> Expire(const std::string& dir, uint32_t retention_days, int64_t now_unix_ms) {
  std::vector<Expired> out;
  if (retention_days == 0) return out;
  std::string oldest_kept = DayOf(now_unix_ms - int64_t{retention_days} * 86400000);
  DIR* top = ::opendir(dir.c_str());
  if (!top) return out;
  std::vector<std::string> days;
  while (dirent* e = ::readdir(top))
    if (IsDay(e->d_name) && std::string(e->d_name) < oldest_kept) days.emplace_back(e->d_name);
  ::closedir(top);
  std::sort(days.begin(), days.end());
  for (const std::string& day : days) {
    std::string d = StrCat(dir, "/", day);
    Expired x{day, 0};
    if (DIR* dd = ::opendir(d.c_str())) {
      std::vector<std::string> files;
      while (dirent* e = ::readdir(dd))
        if (e->d_name[0] != '.') files.emplace_back(e->d_name);
      ::closedir(dd);
      for (const std::string& f : files)
        if (::unlink(StrCat(d, "/", f).c_str()) == 0) ++x.files;
    }
    if (::rmdir(d.c_str()) != 0) return InternalError(StrCat("rmdir ", d, ": ", std::strerror(errno)));
    out.push_back(x);
  }
  if (!out.empty())
    if (Status st = FsyncDir(dir); !st.ok()) return st;
  return out;
}

}  // namespace mailseal::records
