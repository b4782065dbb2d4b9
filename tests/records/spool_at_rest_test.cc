// Encryption at rest of the spool (DE-22, issue #19; queue/FORMAT.md version 2): what is on the
// disk never holds the message, every tampering is caught, rotation keeps old files readable,
// a missing key is kept aside (Unavailable), never taken for damage or plaintext.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/rand.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include "dataplane/queue/at_rest.h"
#include "dataplane/queue/spool.h"

namespace mailseal::queue {
namespace {

// A ring held in memory (the token-backed one is tested by integration.records_at_rest).
class TestRing : public AtRestKeys {
 public:
  std::shared_ptr<const DataKey> Current() override {
    std::lock_guard<std::mutex> l(mu_);
    return current_;
  }
  Result<std::shared_ptr<const DataKey>> Find(std::string_view id) override {
    std::lock_guard<std::mutex> l(mu_);
    auto it = keys_.find(std::string(id));
    if (it == keys_.end()) return UnavailableError(StrCat("no data key ", id));
    return it->second;
  }
  void Rotate(const std::string& id) {
    auto k = std::make_shared<DataKey>();
    k->id = id;
    RAND_bytes(k->key.data(), 32);
    std::lock_guard<std::mutex> l(mu_);
    keys_[id] = k;
    current_ = k;
  }
  void Forget(const std::string& id) {
    std::lock_guard<std::mutex> l(mu_);
    keys_.erase(id);
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<const DataKey>> keys_;
  std::shared_ptr<const DataKey> current_;
};

class AtRestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mailseal-atrest-XXXXXX";
    root_ = mkdtemp(tmpl);
    spool_ = std::make_unique<Spool>(root_ + "/q");
    ASSERT_TRUE(spool_->Init().ok());
    ring_ = std::make_shared<TestRing>();
    ring_->Rotate("00000000000000a1");
    InstallAtRestKeys(ring_);
  }
  void TearDown() override {
    InstallAtRestKeys(nullptr);
    std::system(("rm -rf " + root_).c_str());
  }
  std::string Write(const std::string& body, const std::string& from = "alice@agency-a.test") {
    mailseal::v1::SpoolEnvelope env;
    env.set_mail_from(from);
    env.add_recipients()->set_address("bob@agency-b.test");
    SpoolWriter w;
    EXPECT_TRUE(w.Open(spool_.get(), env).ok());
    for (size_t off = 0; off < body.size(); off += 7000) EXPECT_TRUE(w.Append(body.substr(off, 7000)).ok());
    EXPECT_TRUE(w.Finish().ok());
    EXPECT_TRUE(w.Publish().ok());
    return w.id();
  }
  std::string Body(const std::string& path) {
    Result<SpoolMessage> m = ReadSpoolFile(path);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    if (!m.ok()) return "";
    std::string out;
    Status st = ReadBody(path, *m, [&](std::string_view c) {
      out.append(c);
      return OkStatus();
    });
    EXPECT_TRUE(st.ok()) << st.ToString();
    return out;
  }
  static std::string Slurp(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  static void Spit(const std::string& p, const std::string& d) { std::ofstream(p, std::ios::binary | std::ios::trunc) << d; }
  // Flips one byte of a record's payload and mends its CRC, so only the cipher can notice.
  static void FlipAndMend(std::string* file, size_t record_start, size_t at) {
    (*file)[record_start + 9 + at] ^= 0x01;
    uint32_t len = 0;
    for (int i = 3; i >= 0; --i) len = (len << 8) | static_cast<uint8_t>((*file)[record_start + 1 + i]);
    uLong c = crc32(0L, Z_NULL, 0);
    c = crc32(c, reinterpret_cast<const Bytef*>(file->data() + record_start), 1);
    c = crc32(c, reinterpret_cast<const Bytef*>(file->data() + record_start + 9), len);
    for (int i = 0; i < 4; ++i) (*file)[record_start + 5 + i] = static_cast<char>((c >> (8 * i)) & 0xff);
  }
  // Offsets of the records after the magic.
  static std::vector<size_t> Records(const std::string& f) {
    std::vector<size_t> out;
    for (size_t off = 8; off + 9 <= f.size();) {
      out.push_back(off);
      uint32_t len = 0;
      for (int i = 3; i >= 0; --i) len = (len << 8) | static_cast<uint8_t>(f[off + 1 + i]);
      off += 9 + len;
    }
    return out;
  }
  std::string root_;
  std::unique_ptr<Spool> spool_;
  std::shared_ptr<TestRing> ring_;
};

std::string Letter(size_t n) {
  std::string body = "Subject: Operation NIGHTJAR budget\r\n\r\n";
  while (body.size() < n) body += "The NIGHTJAR figures are attached; do not forward.\r\n";
  return body;
}

// DE-22: a stolen disk reveals no message — neither body, subject nor envelope addresses.
TEST_F(AtRestTest, TheFileHoldsNoFragmentOfTheMessage) {
  std::string body = Letter(300000);
  std::string id = Write(body);
  std::string path = spool_->PathOf(SpoolState::kActive, id);
  std::string disk = Slurp(path);
  EXPECT_EQ(disk.substr(0, 8), "MSPOOL2\n");
  for (const char* s : {"NIGHTJAR", "Operation", "figures", "alice@agency-a.test", "bob@agency-b.test", "agency"})
    EXPECT_EQ(disk.find(s), std::string::npos) << s;
  EXPECT_NE(disk.find("00000000000000a1"), std::string::npos) << "the file names its key";
  EXPECT_EQ(Body(path), body);
  Result<SpoolMessage> m = ReadSpoolFile(path);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->envelope.mail_from(), "alice@agency-a.test");
  EXPECT_EQ(m->body_size, body.size());
}

TEST_F(AtRestTest, StatusAppendsAreSealedAndRead) {
  std::string id = Write(Letter(5000));
  std::string path = spool_->PathOf(SpoolState::kActive, id);
  mailseal::v1::SpoolStatus s;
  s.set_kind(mailseal::v1::SpoolStatus::KIND_DEFERRED);
  s.set_reply("451 4.7.1 NIGHTJAR-relay busy");
  s.set_attempts(3);
  ASSERT_TRUE(AppendStatus(path, s).ok());
  EXPECT_EQ(Slurp(path).find("NIGHTJAR-relay"), std::string::npos);
  Result<SpoolMessage> m = ReadSpoolFile(path);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  ASSERT_EQ(m->statuses.size(), 1u);
  EXPECT_EQ(m->statuses[0].reply(), "451 4.7.1 NIGHTJAR-relay busy");
  EXPECT_FALSE(m->torn_tail);
}

// A byte changed in a body record (CRC mended) is damage, never different plaintext; the same
// in a STATUS record after END is a torn tail (the message is kept).
TEST_F(AtRestTest, TamperingIsCaughtByTheCipherNotOnlyTheCrc) {
  std::string id = Write(Letter(20000));
  std::string path = spool_->PathOf(SpoolState::kActive, id);
  mailseal::v1::SpoolStatus s;
  s.set_kind(mailseal::v1::SpoolStatus::KIND_DEFERRED);
  ASSERT_TRUE(AppendStatus(path, s).ok());
  std::string good = Slurp(path);
  std::vector<size_t> recs = Records(good);
  ASSERT_EQ(recs.size(), 5u);   // KEY, ENVELOPE, BODY, END, STATUS
  std::string bad = good;
  FlipAndMend(&bad, recs[2], 40);
  Spit(path, bad);
  Result<SpoolMessage> m = ReadSpoolFile(path);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(m.status().message().find("authentication"), std::string::npos) << m.status().message();
  bad = good;
  FlipAndMend(&bad, recs[4], 20);
  Spit(path, bad);
  m = ReadSpoolFile(path);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_TRUE(m->torn_tail);
  EXPECT_TRUE(m->statuses.empty());
}

// The salt binds a record to its file: a body record transplanted from another file (same
// key, valid CRC) fails authentication.
TEST_F(AtRestTest, ARecordMovedFromAnotherFileIsRejected) {
  std::string a = spool_->PathOf(SpoolState::kActive, Write(Letter(3000)));
  std::string b = spool_->PathOf(SpoolState::kActive, Write(Letter(3000), "mallory@agency-a.test"));
  std::string fa = Slurp(a), fb = Slurp(b);
  std::vector<size_t> ra = Records(fa), rb = Records(fb);
  std::string mixed = fa.substr(0, ra[2]) + fb.substr(rb[2], rb[3] - rb[2]) + fa.substr(ra[3]);
  Spit(a, mixed);
  Result<SpoolMessage> m = ReadSpoolFile(a);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kDataLoss);
}

TEST_F(AtRestTest, RotationKeepsOldFilesReadableAndNewFilesUseTheNewKey) {
  std::string old_path = spool_->PathOf(SpoolState::kActive, Write(Letter(4000)));
  ring_->Rotate("00000000000000b2");
  std::string new_path = spool_->PathOf(SpoolState::kActive, Write(Letter(4000)));
  EXPECT_NE(Slurp(old_path).find("00000000000000a1"), std::string::npos);
  EXPECT_NE(Slurp(new_path).find("00000000000000b2"), std::string::npos);
  EXPECT_EQ(Body(old_path), Letter(4000));
  EXPECT_EQ(Body(new_path), Letter(4000));
  // A status appended to the old file goes under the old file's key.
  mailseal::v1::SpoolStatus s;
  s.set_kind(mailseal::v1::SpoolStatus::KIND_DEFERRED);
  ASSERT_TRUE(AppendStatus(old_path, s).ok());
  Result<SpoolMessage> m = ReadSpoolFile(old_path);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->statuses.size(), 1u);
}

// A file whose key is gone is Unavailable (kept aside by the queue), not DataLoss and never
// read as plaintext; nor can anything be appended to it.
TEST_F(AtRestTest, AMissingKeyIsUnavailableNotDamage) {
  std::string path = spool_->PathOf(SpoolState::kActive, Write(Letter(4000)));
  ring_->Rotate("00000000000000c3");
  ring_->Forget("00000000000000a1");
  Result<SpoolMessage> m = ReadSpoolFile(path);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kUnavailable) << m.status().ToString();
  mailseal::v1::SpoolStatus s;
  EXPECT_EQ(AppendStatus(path, s).code(), StatusCode::kUnavailable);
  InstallAtRestKeys(nullptr);
  m = ReadSpoolFile(path);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kUnavailable);
}

// Files written before encryption was turned on (version 1) stay readable.
TEST_F(AtRestTest, PlainFilesFromBeforeStayReadable) {
  InstallAtRestKeys(nullptr);
  std::string path = spool_->PathOf(SpoolState::kActive, Write(Letter(9000)));
  EXPECT_EQ(Slurp(path).substr(0, 8), "MSPOOL1\n");
  InstallAtRestKeys(ring_);
  EXPECT_EQ(Body(path), Letter(9000));
}

// The certificate store's files (and any small file) through SealBlob/OpenBlob.
TEST_F(AtRestTest, SmallFilesAreSealedAndPlainOnesStillRead) {
  std::string pem = "-----BEGIN CERTIFICATE-----\nMIIB partner certificate of agency-b.test\n";
  std::string sealed = SealBlob(pem);
  EXPECT_EQ(sealed.substr(0, 8), "MSSEAL1\n");
  EXPECT_EQ(sealed.find("agency-b"), std::string::npos);
  Result<std::string> back = OpenBlob(sealed);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, pem);
  std::string bad = sealed;
  bad[bad.size() - 20] ^= 1;
  EXPECT_EQ(OpenBlob(bad).status().code(), StatusCode::kDataLoss);
  Result<std::string> plain = OpenBlob(pem);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(*plain, pem) << "a plain file (from before, or an operator's) is read as it is";
  ring_->Rotate("00000000000000d4");
  ring_->Forget("00000000000000a1");
  EXPECT_EQ(OpenBlob(sealed).status().code(), StatusCode::kUnavailable);
  InstallAtRestKeys(nullptr);
  EXPECT_EQ(SealBlob(pem), pem) << "without a ring: plain";
}

}  // namespace
}  // namespace mailseal::queue
