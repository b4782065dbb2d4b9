// spool_bench — the cost of encryption at rest (issue #19, DE-22): messages written to the
// spool as mailseald writes them before it says 250 (write, fdatasync, rename into active/,
// fsync of the directory), plain (format 1) and encrypted (format 2, AES-256-GCM) in the same
// run, interleaved in rounds so that both see the same disk; then read back (framing, CRCs,
// authentication, body). Prints one JSON line per (size, mode).
//
//   spool_bench DIR SECONDS_PER_POINT SIZE...
#include <openssl/rand.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dataplane/queue/at_rest.h"
#include "dataplane/queue/spool.h"

using namespace mailseal;
using Clock = std::chrono::steady_clock;

namespace {
class OneKey : public queue::AtRestKeys {
 public:
  OneKey() {
    key_ = std::make_shared<queue::DataKey>();
    key_->id = "00000000bench001";
    RAND_bytes(key_->key.data(), 32);
  }
  std::shared_ptr<const queue::DataKey> Current() override { return key_; }
  Result<std::shared_ptr<const queue::DataKey>> Find(std::string_view) override {
    return std::shared_ptr<const queue::DataKey>(key_);
  }

 private:
  std::shared_ptr<queue::DataKey> key_;
};

// One message written and published the way the SMTP server's commit does it.
bool WriteOne(queue::Spool* spool, const std::string& body, std::string* id) {
  v1::SpoolEnvelope env;
  env.set_mail_from("alice@agency-a.test");
  env.add_recipients()->set_address("bob@agency-b.test");
  queue::SpoolWriter w;
  if (!w.Open(spool, env).ok()) return false;
  for (size_t off = 0; off < body.size(); off += 16384)
    if (!w.Append(std::string_view(body).substr(off, 16384)).ok()) return false;
  if (!w.Finish().ok() || !w.Publish().ok() || !spool->FsyncDir(queue::SpoolState::kActive).ok()) return false;
  *id = w.id();
  return true;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: spool_bench DIR SECONDS_PER_POINT SIZE...\n");
    return 2;
  }
  queue::Spool spool(argv[1]);
  if (!spool.Init().ok()) return 1;
  double secs = std::atof(argv[2]);
  auto ring = std::make_shared<OneKey>();
  for (int a = 3; a < argc; ++a) {
    size_t size = std::strtoul(argv[a], nullptr, 10);
    std::string body(size, 'x');
    for (size_t i = 0; i < size; i += 78) body.replace(i, 2, "\r\n");
    std::map<bool, double> write_s, read_s;
    std::map<bool, uint64_t> n;
    std::vector<std::pair<bool, std::string>> written;
    auto until = Clock::now() + std::chrono::duration<double>(2 * secs);
    while (Clock::now() < until) {   // rounds of 10 plain then 10 encrypted
      for (bool enc : {false, true}) {
        queue::InstallAtRestKeys(enc ? ring : nullptr);
        auto t0 = Clock::now();
        for (int i = 0; i < 10; ++i) {
          std::string id;
          if (!WriteOne(&spool, body, &id)) return 1;
          written.emplace_back(enc, id);
        }
        write_s[enc] += std::chrono::duration<double>(Clock::now() - t0).count();
        n[enc] += 10;
      }
    }
    queue::InstallAtRestKeys(ring);   // reads: both formats with the ring installed
    for (const auto& [enc, id] : written) {
      std::string path = spool.PathOf(queue::SpoolState::kActive, id);
      auto t0 = Clock::now();
      Result<queue::SpoolMessage> m = queue::ReadSpoolFile(path);
      uint64_t got = 0;
      if (!m.ok() || !queue::ReadBody(path, *m, [&](std::string_view c) {
                        got += c.size();
                        return OkStatus();
                      }).ok() || got != size)
        return 1;
      read_s[enc] += std::chrono::duration<double>(Clock::now() - t0).count();
      (void)spool.Remove(id, queue::SpoolState::kActive);
    }
    for (bool enc : {false, true})
      std::printf("{\"size\":%zu,\"mode\":\"%s\",\"messages\":%llu,\"write_per_s\":%.1f,\"read_per_s\":%.1f}\n", size,
                  enc ? "encrypted" : "plain", static_cast<unsigned long long>(n[enc]), n[enc] / write_s[enc],
                  n[enc] / read_s[enc]);
  }
  queue::InstallAtRestKeys(nullptr);
  return 0;
}
