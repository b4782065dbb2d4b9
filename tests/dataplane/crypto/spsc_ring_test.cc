// The crypto rings: order kept, nothing lost or duplicated under two threads, full = push back.
#include "dataplane/crypto/spsc_ring.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "dataplane/crypto/crypto_stage.h"

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
  stage.Start();
  std::vector<Completion> done;
  std::set<std::string> seen;
  int submitted = 0;
  while (seen.size() < 500) {
    Job job{"q" + std::to_string(submitted), ""};
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

}  // namespace
}  // namespace mailseal::crypto
