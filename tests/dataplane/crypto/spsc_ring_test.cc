// The crypto rings: order kept, nothing lost or duplicated under two threads, full = push back.
#include "dataplane/crypto/spsc_ring.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "dataplane/crypto/crypto_stage.h"
#include "dataplane/queue/spool.h"

namespace mailseal::crypto {
namespace {

TEST(SpscRing, FullRingRefusesInsteadOfOverwriting) {
  SpscRing<int> r(4);
  EXPECT_EQ(r.capacity(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(r.TryPush(i));
  EXPECT_FALSE(r.TryPush(99));
  EXPECT_EQ(*r.TryPop(), 0);
  EXPECT_TRUE(r.TryPush(4));
  std::vector<int> out;
  EXPECT_EQ(r.PopBurst(&out, 10), 4u);
  EXPECT_EQ(out, (std::vector<int>{1, 2, 3, 4}));
  EXPECT_FALSE(r.TryPop().has_value());
}

TEST(SpscRing, TwoThreadsMillionItemsInOrder) {
  SpscRing<uint64_t> r(1024);
  constexpr uint64_t kN = 1000000;
  std::thread producer([&] {
    for (uint64_t i = 0; i < kN;) {
      uint64_t v = i;
      if (r.TryPush(std::move(v))) ++i;
      else std::this_thread::yield();
    }
  });
  uint64_t expect = 0;
  while (expect < kN) {
    if (auto v = r.TryPop()) {
      ASSERT_EQ(*v, expect);
      ++expect;
    }
  }
  producer.join();
}

TEST(CryptoStage, EveryJobCompletesOnce) {
  std::atomic<int> wakes{0};
  CryptoStage stage(2, 8, [&] { wakes++; });
  ASSERT_TRUE(stage.Start());
  EXPECT_STREQ(stage.ring_kind(), "spsc");
  std::vector<Completion> done;
  std::set<std::string> seen;
  int submitted = 0;
  while (seen.size() < 500) {
    Job job{"q" + std::to_string(submitted), "", nullptr, nullptr};
    if (submitted < 500 && stage.Submit(job)) ++submitted;
    else EXPECT_FALSE(job.queue_id.empty()) << "a refused job is left intact";
    done.clear();
    stage.DrainCompletions(&done);
    for (auto& c : done) {
      EXPECT_TRUE(seen.insert(c.queue_id).second) << "duplicate " << c.queue_id;
      EXPECT_EQ(c.verdict, Verdict::kPlain);
    }
  }
  stage.Stop();
  EXPECT_EQ(stage.jobs_done(), 500u);
  EXPECT_GT(wakes.load(), 0);
}

// The ring seam: the stage takes its rings from the factory it is given (the DPDK back end
// gives rte_rings); every job goes through them, and a job that carries its message is counted.
TEST(CryptoStage, RingsComeFromTheFactoryAndCarriedMessagesAreCounted) {
  struct CountingRing : PointerRing {
    explicit CountingRing(std::atomic<int>* n) : inner(16), count(n) {}
    bool Enqueue(void* p) override {
      if (!inner.Enqueue(p)) return false;
      count->fetch_add(1);
      return true;
    }
    void* Dequeue() override { return inner.Dequeue(); }
    const char* kind() const override { return "counting"; }
    SpscPointerRing inner;
    std::atomic<int>* count;
  };
  std::atomic<int> enqueued{0};
  std::vector<std::string> names;
  CryptoStage stage(2, 16, [] {});
  stage.SetRingFactory([&](const std::string& name, size_t) -> std::unique_ptr<PointerRing> {
    names.push_back(name);
    return std::make_unique<CountingRing>(&enqueued);
  });
  ASSERT_TRUE(stage.Start());
  EXPECT_STREQ(stage.ring_kind(), "counting");
  EXPECT_EQ(names.size(), 4u) << "a job ring and a completion ring per worker";
  auto body = std::make_shared<const std::string>("body");
  std::vector<Completion> done;
  int submitted = 0;
  while (done.size() < 20) {
    if (submitted < 20) {
      Job job{"q" + std::to_string(submitted), "", nullptr, submitted % 2 ? body : nullptr};
      if (submitted % 2) job.message = std::make_shared<const queue::SpoolMessage>();
      if (stage.Submit(job)) ++submitted;
    }
    stage.DrainCompletions(&done);
  }
  stage.Stop();
  EXPECT_EQ(enqueued.load(), 40) << "20 jobs in, 20 completions back, all through the factory's rings";
  EXPECT_EQ(stage.jobs_in_memory(), 10u);
}

// A stage whose rings cannot be made does not start (the daemon refuses to run).
TEST(CryptoStage, NoRingNoStart) {
  CryptoStage stage(1, 16, [] {});
  stage.SetRingFactory([](const std::string&, size_t) { return std::unique_ptr<PointerRing>(); });
  std::string error;
  EXPECT_FALSE(stage.Start(&error));
  EXPECT_NE(error.find("rings"), std::string::npos) << error;
  Job job{"q", "", nullptr, nullptr};
  EXPECT_FALSE(stage.Submit(job));
  EXPECT_EQ(job.queue_id, "q");
}

}  // namespace
}  // namespace mailseal::crypto
