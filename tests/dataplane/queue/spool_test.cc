// Spool file format tests (dataplane/queue/FORMAT.md): round trip, and every kind of damage
// is detected rather than delivered.
#include "dataplane/queue/spool.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace mailseal::queue {
namespace {

class SpoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mailseal-spool-XXXXXX";
    root_ = mkdtemp(tmpl);
    spool_ = std::make_unique<Spool>(root_ + "/q");
    ASSERT_TRUE(spool_->Init().ok());
  }
  void TearDown() override { std::system(("rm -rf " + root_).c_str()); }

  std::string Write(const std::string& body, int rcpts = 1) {
    mailseal::v1::SpoolEnvelope env;
    env.set_mail_from("a@x.test");
    for (int i = 0; i < rcpts; ++i) env.add_recipients()->set_address("r" + std::to_string(i) + "@y.test");
    SpoolWriter w;
    EXPECT_TRUE(w.Open(spool_.get(), env).ok());
    for (size_t off = 0; off < body.size(); off += 1000) EXPECT_TRUE(w.Append(body.substr(off, 1000)).ok());
    EXPECT_TRUE(w.Finish().ok());
    EXPECT_TRUE(w.Publish().ok());
    SpoolMessage m = w.TakeMessage();
    EXPECT_EQ(m.body_size, body.size());
    return w.id();
  }
  std::string Slurp(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  void Spit(const std::string& p, const std::string& data) {
    std::ofstream(p, std::ios::binary | std::ios::trunc) << data;
  }
  std::string root_;
  std::unique_ptr<Spool> spool_;
};

TEST_F(SpoolTest, RoundTripLargeBody) {
  std::string body;
  for (int i = 0; i < 200000; ++i) body += static_cast<char>('a' + i % 26);
  std::string id = Write(body, 3);
  std::string path = spool_->PathOf(SpoolState::kActive, id);
  Result<SpoolMessage> m = ReadSpoolFile(path);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->id, id);
  EXPECT_EQ(m->envelope.recipients_size(), 3);
  EXPECT_EQ(m->body.size(), 4u) << "64 KiB records";
  std::string back;
  ASSERT_TRUE(ReadBody(path, *m, [&](std::string_view c) { back.append(c); return OkStatus(); }).ok());
  EXPECT_EQ(back, body);
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "spool files are private";
}

TEST_F(SpoolTest, TruncationAnywhereBeforeEndIsCorrupt) {
  std::string id = Write(std::string(5000, 'z'));
  std::string path = spool_->PathOf(SpoolState::kActive, id);
  std::string full = Slurp(path);
  for (size_t cut : {size_t(3), size_t(8), size_t(20), full.size() / 2, full.size() - 1}) {
    Spit(path, full.substr(0, cut));
    Result<SpoolMessage> m = ReadSpoolFile(path);
    EXPECT_FALSE(m.ok()) << "cut at " << cut;
    EXPECT_EQ(m.status().code(), StatusCode::kDataLoss) << m.status().ToString();
  }
}

TEST_F(SpoolTest, FlippedBitIsCorrupt) {
  std::string id = Write(std::string(5000, 'z'));
  std::string path = spool_->PathOf(SpoolState::kActive, id);
  std::string full = Slurp(path);
  full[full.size() / 2] ^= 0x01;
  Spit(path, full);
  EXPECT_EQ(ReadSpoolFile(path).status().code(), StatusCode::kDataLoss);
}

TEST_F(SpoolTest, StatusAppendsAndTornLastAppendIsIgnored) {
  std::string id = Write("hello\r\n", 2);
  std::string path = spool_->PathOf(SpoolState::kActive, id);
  mailseal::v1::SpoolStatus s;
  s.set_kind(mailseal::v1::SpoolStatus::KIND_DELIVERED);
  s.set_recipient_index(1);
  ASSERT_TRUE(AppendStatus(path, s).ok());
  s.set_kind(mailseal::v1::SpoolStatus::KIND_DEFERRED);
  s.set_attempts(2);
  ASSERT_TRUE(AppendStatus(path, s).ok());
  Result<SpoolMessage> m = ReadSpoolFile(path);
  ASSERT_TRUE(m.ok());
  ASSERT_EQ(m->statuses.size(), 2u);
  EXPECT_EQ(m->statuses[1].attempts(), 2u);
  // A crash in the middle of the last append: the record is dropped, the message is fine.
  std::string full = Slurp(path);
  Spit(path, full.substr(0, full.size() - 3));
  m = ReadSpoolFile(path);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->statuses.size(), 1u);
}

TEST_F(SpoolTest, AbandonRemovesTheIncomingFile) {
  mailseal::v1::SpoolEnvelope env;
  env.add_recipients()->set_address("b@y.test");
  SpoolWriter w;
  ASSERT_TRUE(w.Open(spool_.get(), env).ok());
  ASSERT_TRUE(w.Append("x").ok());
  std::string p = spool_->PathOf(SpoolState::kIncoming, w.id());
  w.Abandon();
  EXPECT_NE(access(p.c_str(), F_OK), 0);
}

TEST_F(SpoolTest, QueueIdsAreUnique) {
  std::set<std::string> ids;
  for (int i = 0; i < 10000; ++i) ids.insert(spool_->NewQueueId());
  EXPECT_EQ(ids.size(), 10000u);
}

// Issue #17 (ARCHITECTURE "jobs carry the message, not a path to re-read"): the writer keeps
// the body it wrote, within the spool's bound, and gives the reservation back with the last
// reference; over the bound (or abandoned) nothing is kept and nothing stays reserved.
TEST_F(SpoolTest, WriterKeepsTheBodyWithinTheBudgetAndGivesItBack) {
  auto budget = std::make_shared<BodyBudget>(10000);
  spool_->SetBodyBudget(budget);
  mailseal::v1::SpoolEnvelope env;
  env.set_mail_from("a@x.test");
  env.add_recipients()->set_address("b@y.test");
  std::string body;
  for (int i = 0; i < 300; ++i) body += "line " + std::to_string(i) + "\r\n";
  ASSERT_LT(body.size(), 10000u);
  std::shared_ptr<const std::string> kept;
  {
    SpoolWriter w;
    ASSERT_TRUE(w.Open(spool_.get(), env).ok());
    for (size_t off = 0; off < body.size(); off += 700) ASSERT_TRUE(w.Append(body.substr(off, 700)).ok());
    ASSERT_TRUE(w.Finish().ok());
    ASSERT_TRUE(w.Publish().ok());
    SpoolMessage m = w.TakeMessage();
    ASSERT_TRUE(m.retained_body);
    EXPECT_EQ(*m.retained_body, body);
    kept = m.retained_body;
    // What the file holds is what was kept.
    Result<SpoolMessage> read = ReadSpoolFile(spool_->PathOf(SpoolState::kActive, w.id()));
    ASSERT_TRUE(read.ok());
    EXPECT_FALSE(read->retained_body) << "a reader never sets it";
    std::string from_disk;
    ASSERT_TRUE(ReadBody(spool_->PathOf(SpoolState::kActive, w.id()), *read, [&](std::string_view c) {
                  from_disk.append(c);
                  return OkStatus();
                }).ok());
    EXPECT_EQ(from_disk, *kept);
  }
  EXPECT_EQ(budget->used(), body.size()) << "reserved while referenced";
  kept.reset();
  EXPECT_EQ(budget->used(), 0u) << "given back with the last reference";

  // Over the bound: written to the spool as ever, not kept, nothing left reserved.
  std::string big(12000, 'x');
  {
    SpoolWriter w;
    ASSERT_TRUE(w.Open(spool_.get(), env).ok());
    for (size_t off = 0; off < big.size(); off += 1000) ASSERT_TRUE(w.Append(big.substr(off, 1000)).ok());
    ASSERT_TRUE(w.Finish().ok());
    ASSERT_TRUE(w.Publish().ok());
    SpoolMessage m = w.TakeMessage();
    EXPECT_FALSE(m.retained_body);
    EXPECT_EQ(m.body_size, big.size());
  }
  EXPECT_EQ(budget->used(), 0u);

  // Abandoned mid-way (connection lost): the reservation goes with it.
  {
    SpoolWriter w;
    ASSERT_TRUE(w.Open(spool_.get(), env).ok());
    ASSERT_TRUE(w.Append("half a message\r\n").ok());
    EXPECT_GT(budget->used(), 0u);
    w.Abandon();
  }
  EXPECT_EQ(budget->used(), 0u);
}

}  // namespace
}  // namespace mailseal::queue
