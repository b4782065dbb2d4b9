// Spool recovery at start (issue #2: "recovery puts every message back where it belongs; a
// half-written file never reaches delivery; a corrupt file goes to corrupt/").
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>

#include "dataplane/kernel/backend.h"
#include "dataplane/queue/queue_manager.h"
#include "dataplane/queue/spool.h"

namespace mailseal::queue {
namespace {

class RecoveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mailseal-rec-XXXXXX";
    root_ = mkdtemp(tmpl);
    spool_ = std::make_unique<Spool>(root_ + "/q");
    ASSERT_TRUE(spool_->Init().ok());
  }
  void TearDown() override { std::system(("rm -rf " + root_).c_str()); }
  size_t Count(SpoolState s) { return spool_->List(s).value().size(); }
  mailseal::v1::SpoolEnvelope Env() {
    mailseal::v1::SpoolEnvelope env;
    env.set_mail_from("a@x.test");
    env.add_recipients()->set_address("b@y.test");
    env.set_arrival_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch()).count());
    return env;
  }
  kernel::KernelBackend network_;
  QueueOptions Options() {
    QueueOptions o;
    o.hostname = "gw.test";
    o.network = &network_;
    o.delivery.set_relay_host("127.0.0.1:9");
    o.delivery.set_agents(1);
    o.delivery.set_per_destination_concurrency(1);
    o.delivery.set_min_backoff_s(1);
    o.delivery.set_max_backoff_s(1);
    o.delivery.set_max_lifetime_s(100);
    o.delivery.set_queue_scan_interval_ms(100);
    return o;
  }
  std::string root_;
  std::unique_ptr<Spool> spool_;
};

TEST_F(RecoveryTest, EveryFileEndsWhereItBelongs) {
  // 1. complete file left in incoming/ (crash after fsync, before rename): goes on.
  {
    SpoolWriter w;
    ASSERT_TRUE(w.Open(spool_.get(), Env()).ok());
    ASSERT_TRUE(w.Append("complete\r\n").ok());
    ASSERT_TRUE(w.Finish().ok());
    // leak the fd on purpose: simulate a crash, no Publish/Abandon
    w.TakeMessage();
    std::string p = spool_->PathOf(SpoolState::kIncoming, w.id());
    std::string copy = root_ + "/keep";
    ASSERT_EQ(std::system(("cp " + p + " " + copy).c_str()), 0);
    w.Abandon();
    ASSERT_EQ(std::system(("mv " + copy + " " + p).c_str()), 0);
  }
  // 2. half-written file in incoming/ (never acknowledged): removed.
  {
    SpoolWriter w;
    ASSERT_TRUE(w.Open(spool_.get(), Env()).ok());
    ASSERT_TRUE(w.Append(std::string(300000, 'h')).ok());  // flushed partly, no END
    std::string p = spool_->PathOf(SpoolState::kIncoming, w.id());
    ASSERT_EQ(std::system(("cp " + p + " " + root_ + "/half").c_str()), 0);
    w.Abandon();
    ASSERT_EQ(std::system(("mv " + root_ + "/half " + p).c_str()), 0);
  }
  // 3. a good active file, 4. a corrupt active file, 5. a deferred file with history.
  Result<std::string> good = WriteWholeMessage(spool_.get(), Env(), "good\r\n");
  ASSERT_TRUE(good.ok());
  Result<std::string> bad = WriteWholeMessage(spool_.get(), Env(), "bad\r\n");
  ASSERT_TRUE(bad.ok());
  {
    std::string p = spool_->PathOf(SpoolState::kActive, *bad);
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-5, std::ios::end);
    f.put('\x7f');
  }
  Result<std::string> later = WriteWholeMessage(spool_.get(), Env(), "later\r\n");
  ASSERT_TRUE(later.ok());
  mailseal::v1::SpoolStatus d;
  d.set_kind(mailseal::v1::SpoolStatus::KIND_DEFERRED);
  d.set_attempts(3);
  d.set_next_attempt_unix_ms(4102444800000);  // 2100: not due
  ASSERT_TRUE(AppendStatus(spool_->PathOf(SpoolState::kActive, *later), d).ok());
  ASSERT_TRUE(spool_->Move(*later, SpoolState::kActive, SpoolState::kDeferred).ok());

  QueueManager q(spool_.get(), Options());
  ASSERT_TRUE(q.Recover().ok());
  EXPECT_EQ(Count(SpoolState::kIncoming), 0u);
  EXPECT_EQ(Count(SpoolState::kActive), 2u) << "the good one and the recovered complete one";
  EXPECT_EQ(Count(SpoolState::kCorrupt), 1u);
  EXPECT_EQ(Count(SpoolState::kDeferred), 1u);
  EXPECT_EQ(spool_->List(SpoolState::kCorrupt).value()[0], *bad);
}

TEST_F(RecoveryTest, UnreachableNextHopDefersWithBackoffAndKeepsTheFile) {
  Result<std::string> id = WriteWholeMessage(spool_.get(), Env(), "x\r\n");
  ASSERT_TRUE(id.ok());
  QueueManager q(spool_.get(), Options());
  ASSERT_TRUE(q.Recover().ok());
  ASSERT_TRUE(q.Start().ok());
  for (int i = 0; i < 100 && q.Stats().deferrals == 0; ++i) usleep(50000);
  q.Stop();
  EXPECT_GE(q.Stats().deferrals, 1u);
  ASSERT_EQ(Count(SpoolState::kDeferred) + Count(SpoolState::kActive), 1u);
  SpoolState where = Count(SpoolState::kDeferred) ? SpoolState::kDeferred : SpoolState::kActive;
  Result<SpoolMessage> m = ReadSpoolFile(spool_->PathOf(where, *id));
  ASSERT_TRUE(m.ok());
  ASSERT_FALSE(m->statuses.empty());
  EXPECT_EQ(m->statuses.back().kind(), mailseal::v1::SpoolStatus::KIND_DEFERRED);
  EXPECT_NE(m->statuses.back().reply().find("4.4.1"), std::string::npos) << m->statuses.back().reply();
}

// Issue #17: a message the spool writer kept goes to its crypto job in memory (the body
// the writer wrote, the envelope as admitted); one recovered from the disk goes by its path.
TEST_F(RecoveryTest, JobsCarryTheMessageTheWriterKeptAndRecoveredOnesGoByPath) {
  struct Seen {
    std::mutex mu;
    std::map<std::string, std::string> how;   // queue id -> "memory:<body>" or "path"
  };
  auto seen = std::make_shared<Seen>();
  struct Recorder : crypto::JobProcessor {
    explicit Recorder(std::shared_ptr<Seen> s) : seen(std::move(s)) {}
    crypto::Completion Process(const crypto::Job& job) override {
      std::lock_guard<std::mutex> l(seen->mu);
      seen->how[job.queue_id] = job.body && job.message
                                    ? "memory:" + *job.body + ":" + job.message->envelope.mail_from()
                                    : "path";
      return {job.queue_id, crypto::Verdict::kTempFail, "recorded only", 0, {}};
    }
    std::shared_ptr<Seen> seen;
  };
  Result<std::string> on_disk = WriteWholeMessage(spool_.get(), Env(), "from the disk\r\n");
  ASSERT_TRUE(on_disk.ok());
  auto budget = std::make_shared<BodyBudget>(1 << 20);
  spool_->SetBodyBudget(budget);
  QueueOptions o = Options();
  o.processor = [seen](size_t) { return std::make_unique<Recorder>(seen); };
  QueueManager q(spool_.get(), o);
  ASSERT_TRUE(q.Recover().ok());
  ASSERT_TRUE(q.Start().ok());
  SpoolWriter w;
  ASSERT_TRUE(w.Open(spool_.get(), Env()).ok());
  ASSERT_TRUE(w.Append("kept in memory\r\n").ok());
  ASSERT_TRUE(w.Finish().ok());
  ASSERT_TRUE(w.Publish().ok());
  std::string fresh = w.id();
  q.Submit(w.TakeMessage());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    {
      std::lock_guard<std::mutex> l(seen->mu);
      if (seen->how.count(fresh) && seen->how.count(*on_disk)) break;
    }
    usleep(20000);
  }
  q.Stop();
  std::lock_guard<std::mutex> l(seen->mu);
  EXPECT_EQ(seen->how[fresh], "memory:kept in memory\r\n:a@x.test");
  EXPECT_EQ(seen->how[*on_disk], "path");
  EXPECT_EQ(q.Stats().crypto_jobs_in_memory, 1u);
  EXPECT_EQ(budget->used(), 0u) << "the job gave the memory back (the retry reads the file)";
}

// Issue #15's release race: certificate discovery may find the certificate while a worker is
// still writing the copy it holds for it, and release nothing. Once the copy is durable in
// hold/, the queue manager says so (held_for_certificate) and discovery looks again.
TEST_F(RecoveryTest, AHeldCopyDurableInHoldIsReportedForItsCertificate) {
  struct Holder : crypto::JobProcessor {
    explicit Holder(Spool* s) : spool(s) {}
    crypto::Completion Process(const crypto::Job& job) override {
      mailseal::v1::SpoolEnvelope env;
      env.set_queue_id(job.queue_id + "-0");
      env.set_mail_from("a@x.test");
      env.add_recipients()->set_address("b@y.test");
      env.set_crypto_done(true);
      env.set_derived_from(job.queue_id);
      env.add_derived_rcpts(0);
      env.set_hold_cert_domain("y.test");
      Result<std::string> id = WriteWholeMessage(spool, env, "held\r\n", SpoolState::kHold, Durability::kGroup);
      crypto::Completion c{job.queue_id, crypto::Verdict::kTransformed, "", 0, {}};
      crypto::DerivedCopy d;
      d.queue_id = id.ok() ? *id : "";
      d.rcpts = {0};
      d.treatment = crypto::Treatment::kHeld;
      d.what = "no certificate for y.test";
      d.cert_domain = "y.test";
      c.derived.push_back(d);
      return c;
    }
    Spool* spool;
  };
  std::mutex mu;
  std::vector<std::pair<std::string, bool>> told;   // (domain, the copy was in hold/ then)
  QueueOptions o = Options();
  Spool* sp = spool_.get();
  o.processor = [sp](size_t) { return std::make_unique<Holder>(sp); };
  o.held_for_certificate = [&](const std::string& domain) {
    std::lock_guard<std::mutex> l(mu);
    told.emplace_back(domain, !sp->List(SpoolState::kHold).value().empty());
  };
  Result<std::string> id = WriteWholeMessage(spool_.get(), Env(), "to hold\r\n");
  ASSERT_TRUE(id.ok());
  QueueManager q(spool_.get(), o);
  ASSERT_TRUE(q.Recover().ok());
  ASSERT_TRUE(q.Start().ok());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    {
      std::lock_guard<std::mutex> l(mu);
      if (!told.empty()) break;
    }
    usleep(20000);
  }
  q.Stop();
  std::lock_guard<std::mutex> l(mu);
  ASSERT_EQ(told.size(), 1u);
  EXPECT_EQ(told[0].first, "y.test");
  EXPECT_TRUE(told[0].second) << "said only once the copy is in hold/";
}

}  // namespace
}  // namespace mailseal::queue
