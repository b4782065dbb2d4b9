// smime_bench — sealed messages per second through the crypto workers' code path
// (smime::Gateway with DSA keys bound to per-worker PKCS#11 sessions on SoftHSM), for
// tools/bench/smime. Each worker thread owns its session and keys, as in mailseald.
//
//   smime_bench DIR MODULE TOKEN SECONDS   (DIR prepared by tools/bench/smime)
// Prints one JSON object per line: {"key":..,"size":..,"workers":..,"msgs_per_s":..}.
#include <openssl/pem.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <malloc.h>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "dataplane/smime/gateway.h"
#include "hsm/keys.h"
#include "hsm/module.h"
#include "hsm/secret.h"
#include "hsm/token_key.h"

using namespace mailseal;

namespace {
smime::X509Ref Cert(const std::string& path) {
  BIO* b = BIO_new_file(path.c_str(), "r");
  X509* x = b ? PEM_read_bio_X509(b, nullptr, nullptr, nullptr) : nullptr;
  BIO_free(b);
  return smime::Ref(x);
}
EVP_PKEY* SoftKey(const std::string& path) {
  BIO* b = BIO_new_file(path.c_str(), "r");
  EVP_PKEY* k = b ? PEM_read_bio_PrivateKey(b, nullptr, nullptr, nullptr) : nullptr;
  BIO_free(b);
  return k;
}
std::string Message(size_t size) {
  std::string m = "From: alice@agency-a.test\r\nTo: bob@agency-b.test\r\nSubject: [IN-CONFIDENCE] bench\r\n"
                  "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n";
  while (m.size() < size) m += "The quick brown fox jumps over the lazy dog, 0123456789 abcdefghijklmnopqrstuv\r\n";
  m.resize(size - 2);
  return m + "\r\n";
}
}  // namespace

int main(int argc, char** argv) {
  // Sealing a large message allocates a few buffers of its size; with glibc's defaults each is
  // a fresh mmap that is page-faulted in and unmapped again, which halved 2 MiB throughput
  // (tools/bench/smime). Keep freed memory in the heap instead (bounded by the SMTP size limit
  // times the messages in flight).
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  if (argc != 5) {
    std::fprintf(stderr, "usage: smime_bench DIR MODULE TOKEN SECONDS\n");
    return 2;
  }
  std::string dir = argv[1], module_path = argv[2], token = argv[3];
  double seconds = std::atof(argv[4]);
  Result<std::unique_ptr<hsm::Module>> m = hsm::Module::Load(module_path);
  if (!m.ok()) return std::fprintf(stderr, "%s\n", m.status().ToString().c_str()), 1;
  Result<CK_SLOT_ID> slot = (*m)->FindToken(token);
  Result<hsm::Secret> pin = hsm::ReadSecretFile(dir + "/user.pin");
  if (!slot.ok() || !pin.ok()) return std::fprintf(stderr, "token or PIN missing\n"), 1;
  Result<std::unique_ptr<smime::CertStore>> store = smime::CertStore::Open(dir + "/store", dir + "/ca.crt", {});
  if (!store.ok()) return std::fprintf(stderr, "%s\n", store.status().ToString().c_str()), 1;
  if (!(*store)->Pin("agency-b.test", dir + "/partner-dca.crt").ok()) return 1;
  smime::GatewayPolicy policy;
  policy.local_domains = {"agency-a.test"};
  policy.partners["agency-b.test"] = {};
  smime::Gateway gw(&policy, store->get());
  smime::X509Ref dca = Cert(dir + "/dca.crt");

  struct Variant {
    const char* name;
    const char* label;   // token key, or "" for the software key file
    const char* cert;
    const char* soft;
  };
  const Variant variants[] = {{"rsa2048", "dsa-rsa", "dsa-rsa.crt", ""},
                              {"p256", "dsa-ec", "dsa-ec.crt", ""},
                              {"rsa2048-software", "", "dsa-rsa-soft.crt", "dsa-rsa-soft.key"},
                              {"p256-software", "", "dsa-ec-soft.crt", "dsa-ec-soft.key"}};
  for (const Variant& v : variants) {
    bool soft = v.label[0] == '\0';
    for (size_t size : {size_t{4096}, size_t{100 * 1024}, size_t{2 * 1024 * 1024}}) {
      if (soft && size != 4096 && !std::getenv("SMIME_BENCH_ONLY")) continue;
      const char* only = std::getenv("SMIME_BENCH_ONLY");  // "key:size", for profiling one point
      if (only && std::string(only) != StrCat(v.name, ":", size)) continue;
      std::string msg = Message(size);
      for (int workers : {1, 2}) {
        std::atomic<uint64_t> sealed{0};
        std::atomic<bool> go{false}, stop{false}, failed{false};
        std::vector<std::thread> threads;
        for (int w = 0; w < workers; ++w) {
          threads.emplace_back([&] {
            std::unique_ptr<hsm::Session> session;
            EVP_PKEY* key = nullptr;
            if (soft) {
              key = SoftKey(dir + "/" + v.soft);
            } else {
              Result<std::unique_ptr<hsm::Session>> s = hsm::Session::Open(m->get(), *slot);
              if (!s.ok() || !(*s)->Login(*pin).ok()) return failed.store(true);
              session = std::move(s.value());
              Result<hsm::KeyPair> kp = hsm::FindKeyPair(*session, v.label);
              Result<EVP_PKEY*> k = kp.ok() ? hsm::TokenPrivateKey(session.get(), *kp) : Result<EVP_PKEY*>(kp.status());
              if (!k.ok()) return failed.store(true);
              key = *k;
            }
            smime::GatewayKeys keys{Cert(dir + "/" + v.cert), dca, {}, key, nullptr, {}, {}};
            while (!go.load()) std::this_thread::yield();
            uint64_t n = 0;
            while (!stop.load(std::memory_order_relaxed)) {
              std::vector<smime::Output> out = gw.Process("alice@agency-a.test", {"bob@agency-b.test"}, msg, keys);
              if (out.size() != 1 || out[0].action != smime::Action::kDeliver) {
                std::fprintf(stderr, "seal failed: %s\n", out.empty() ? "?" : out[0].reason.c_str());
                failed.store(true);
                break;
              }
              ++n;
            }
            sealed.fetch_add(n);
            EVP_PKEY_free(key);
          });
        }
        auto t0 = std::chrono::steady_clock::now();
        go.store(true);
        std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
        stop.store(true);
        for (auto& t : threads) t.join();
        double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (failed.load()) return 1;
        std::printf("{\"key\":\"%s\",\"size\":%zu,\"workers\":%d,\"msgs_per_s\":%.1f}\n", v.name, size, workers,
                    static_cast<double>(sealed.load()) / dt);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
