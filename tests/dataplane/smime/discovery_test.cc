// discovery_test.cc — when held mail is released (issue #15's discovery, with the queue
// manager's report of copies held for a certificate, issue #17/#18 follow-up).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "dataplane/smime/discovery.h"
#include "tests/dataplane/smime/pki_fixture.h"

namespace mailseal::smime::testing {
namespace {

class DiscoveryTest : public GatewayPkiTest {
 protected:
  // Counts the release calls and hands back `durable` copies (what hold/ holds) on each.
  struct Releases {
    std::mutex mu;
    size_t calls = 0, released = 0, durable = 0;
  };
  static bool WaitFor(const std::function<bool()>& pred, int ms = 5000) {
    for (auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms); std::chrono::steady_clock::now() < end;) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return pred();
  }
};

// The race: the certificate turns up (and discovery's release finds nothing) while a worker is
// still writing the copy it holds for it. The queue manager's report of that copy, once
// durable (held_for_certificate, wired to Found), releases it.
TEST_F(DiscoveryTest, ACopyReportedAfterItsCertificateTurnedUpIsReleased) {
  Side a = Make("a", {}, {"agency-b.test"});
  Releases r;
  Discovery d(a.store.get(), DiscoveryOptions{}, [&r](const std::string& domain) {
    std::lock_guard<std::mutex> l(r.mu);
    ++r.calls;
    size_t n = domain == "agency-b.test" ? r.durable : 0;
    r.released += n;
    r.durable -= n;
    return n;
  });
  a.store->SetWatcher(&d);
  d.Start();
  d.Wanted("agency-b.test");
  // Learnt (from the partner's signed mail, say) before the held copy is durable.
  a.store->Learn("agency-b.test", {Ref(Cert("dca_b"))}, {});
  ASSERT_TRUE(WaitFor([&] { std::lock_guard<std::mutex> l(r.mu); return r.calls >= 1; }));
  {
    std::lock_guard<std::mutex> l(r.mu);
    EXPECT_EQ(r.released, 0u) << "nothing was durable yet";
    r.durable = 1;   // the copy lands in hold/ ...
  }
  d.Found("agency-b.test");   // ... and the queue manager says so
  EXPECT_TRUE(WaitFor([&] { std::lock_guard<std::mutex> l(r.mu); return r.released == 1; }))
      << "the late copy is released at once, not at the domain's next lookup";
  d.Stop();
  a.store->SetWatcher(nullptr);
}

// A copy held because the partner's certificate is valid but unsuitable (a 1024-bit key,
// SEE-2.4) is not released: it would be decided again and held again, without end.
TEST_F(DiscoveryTest, AValidButUnsuitableCertificateReleasesNothing) {
  ASSERT_EQ(Run("openssl req -newkey rsa:1024 -nodes -keyout weak_b.key -out weak_b.csr "
                "-subj /CN=domain-confidentiality-authority@agency-b.test && "
                "openssl x509 -req -in weak_b.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 "
                "-extfile ext.cnf -extensions dca_b -out weak_b.crt"), 0);
  Side a = Make("a", {{"agency-b.test", "weak_b"}, {"agency-c.test", "dca_c"}}, {"agency-b.test", "agency-c.test"});
  ASSERT_TRUE(a.store->Dca("agency-b.test")) << "pinned";
  ASSERT_FALSE(UnsuitableDca(a.store->Dca("agency-b.test").get()).empty());
  Releases r;
  r.durable = 1;
  Discovery d(a.store.get(), DiscoveryOptions{}, [&r](const std::string& domain) {
    std::lock_guard<std::mutex> l(r.mu);
    ++r.calls;
    if (domain != "agency-b.test") return size_t{0};
    r.released += r.durable;
    size_t n = r.durable;
    r.durable = 0;
    return n;
  });
  d.Start();
  d.Wanted("agency-b.test");
  d.Found("agency-b.test");
  // And a usable one for another domain goes through the same thread after it: once that is
  // released, the unsuitable one has been looked at.
  d.Found("agency-c.test");
  EXPECT_TRUE(WaitFor([&] { std::lock_guard<std::mutex> l(r.mu); return r.calls >= 1; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::lock_guard<std::mutex> l(r.mu);
  EXPECT_EQ(r.released, 0u) << "held as unsuitable, left held";
  d.Stop();
}

}  // namespace
}  // namespace mailseal::smime::testing
