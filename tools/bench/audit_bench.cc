// audit_bench — audit log appends per second with a signed tree head every 1,000 records
// (issue #5's benchmark), the head signed by a P-256 key in SoftHSM (tools/bench/audit), and
// the same with software signing and without heads, to show what each part costs. Each append
// is fdatasync'ed (an audited change is durable before it takes effect).
//
//   audit_bench DIR MODULE TOKEN KEY_LABEL COUNT
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "control/audit/log.h"
#include "hsm/keys.h"
#include "hsm/module.h"
#include "hsm/secret.h"
#include "hsm/token_key.h"

using namespace mailseal;

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: audit_bench DIR MODULE TOKEN KEY_LABEL COUNT\n");
    return 2;
  }
  std::string dir = argv[1];
  int count = std::atoi(argv[5]);
  auto m = hsm::Module::Load(argv[2]);
  if (!m.ok()) return 1;
  auto slot = (*m)->FindToken(argv[3]);
  auto pin = hsm::ReadSecretFile(dir + "/user.pin");
  if (!slot.ok() || !pin.ok()) return 1;
  auto session = hsm::Session::Open(m->get(), *slot);
  if (!session.ok() || !(*session)->Login(*pin).ok()) return 1;
  auto kp = hsm::FindKeyPair(**session, argv[4]);
  if (!kp.ok()) return 1;
  auto key = hsm::TokenPrivateKey(session->get(), *kp);
  if (!key.ok()) return 1;
  struct Variant {
    const char* name;
    uint64_t every;
  };
  for (Variant v : {Variant{"hsm-head-every-1000", 1000}, Variant{"no-heads", 0}}) {
    std::string base = dir + "/" + v.name;
    std::remove((base + ".log").c_str());
    std::remove((base + ".heads").c_str());
    auto log = audit::AuditLog::Open({base + ".log", base + ".heads", v.every, audit::SignerFor(*key)});
    if (!log.ok()) return 1;
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < count; ++i) {
      mailseal::v1::AuditRecord r;
      r.set_actor("mailseald");
      r.set_action("mail.sealed");
      r.set_object("660D9E64FCB192B2E0E312");
      r.set_outcome(mailseal::v1::AuditRecord::OUTCOME_DONE);
      r.add_message_ids("<bench@agency-a.test>");
      if (!(*log)->Append(r).ok()) return 1;
    }
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("{\"variant\":\"%s\",\"records\":%d,\"appends_per_s\":%.0f}\n", v.name, count, count / dt);
  }
  EVP_PKEY_free(*key);
  return 0;
}
