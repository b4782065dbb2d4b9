// mailseal-demo-keys — shows the HSM layer at work for tools/demo: a quorum ceremony that
// initialises a token and makes the gateway's keys, an RFC 3183 CSR signed in the token, a
// 2-of-3 backup ceremony, a restore onto a second token, and the offline check of the signed
// transcripts. Custodians are simulated with key files in DIR (c1..c3.key/.crt).
// Demo only: fixed demo PINs on a throw-away SoftHSM token (SOFTHSM2_CONF).
#include <cstdio>
#include <memory>
#include <string>

#include <openssl/pem.h>

#include "hsm/backup.h"
#include "dataplane/base/file.h"
#include "hsm/ceremony.h"
#include "hsm/csr.h"
#include "hsm/openssl_bridge.h"

using namespace mailseal;
using namespace mailseal::hsm;

namespace {
const char* kModule = "/usr/lib/softhsm/libsofthsm2.so";

std::string Slurp(const std::string& p) {   // demo inputs: a missing file is an empty one
  Result<std::string> r = base::ReadFile(p);
  return r.ok() ? *r : std::string();
}

template <typename T>
T Must(Result<T> r, const char* what) {
  if (!r.ok()) {
    std::fprintf(stderr, "demo: %s: %s\n", what, r.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(r).value();
}

void Must(const Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "demo: %s: %s\n", what, s.ToString().c_str());
    std::exit(1);
  }
}

std::string Approve(const std::string& dir, int i, const std::string& statement) {
  std::string pem = Slurp(dir + "/c" + std::to_string(i) + ".key");
  BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  EVP_PKEY* k = PEM_read_bio_PrivateKey(b, nullptr, nullptr, nullptr);
  BIO_free(b);
  std::string sig = Must(SignApproval(k, statement), "approval");
  EVP_PKEY_free(k);
  return sig;
}

void Print(const mailseal::v1::CeremonyTranscript& t) {
  for (const auto& s : t.steps())
    std::printf("     step %u %-18s %s%s\n", s.seq(), s.action().c_str(), s.detail().c_str(),
                s.approvals_size() ? StrCat("  [approved by ", s.approvals_size(), "]").c_str() : "");
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: mailseal-demo-keys CUSTODIAN_DIR\n");
    return 2;
  }
  std::string dir = argv[1];
  std::vector<mailseal::v1::CustodianRecord> custodians;
  std::vector<Custodian> holders;
  for (int i = 1; i <= 3; ++i) {
    mailseal::v1::CustodianRecord r;
    r.set_name("custodian-" + std::to_string(i));
    r.set_cert_pem(Slurp(dir + "/c" + std::to_string(i) + ".crt"));
    custodians.push_back(r);
    holders.push_back({r.name(), r.cert_pem()});
  }
  auto module = Must(Module::Load(kModule), "load module");
  auto free_slot = [&]() -> CK_SLOT_ID {
    for (const SlotInfo& s : Must(module->Slots(), "slots"))
      if (s.token_present && !s.initialized) return s.slot;
    std::exit(1);
  };

  std::printf("   a) initialise ceremony, 2 of 3 custodians\n");
  Ceremony init = Must(Ceremony::Begin("initialise", 2, custodians, "appliance gw-a"), "begin");
  std::string st = Must(init.Propose("init-token", "token gw-a; keys dsa-sign, dca-encrypt, audit"), "propose");
  Must(init.Approve("custodian-1", Approve(dir, 1, st)), "approve 1");
  Must(init.Approve("custodian-3", Approve(dir, 3, st)), "approve 3");
  std::unique_ptr<Session> a;
  KeyPair audit;
  Must(init.Execute([&]() -> Result<std::string> {
         CK_SLOT_ID slot = free_slot();
         Must(module->InitializeToken(slot, "gw-a", Secret("demo-so-pin"), Secret("demo-user-pin")), "init token");
         a = Must(Session::Open(module.get(), Must(module->FindToken("gw-a"), "find")), "session");
         Must(a->Login(Secret("demo-user-pin")), "login");
         Must(GenerateKeyPair(*a, {KeyType::kRsa2048, Purpose::kDsaSign, "dsa-sign", true}), "dsa");
         Must(GenerateKeyPair(*a, {KeyType::kRsa2048, Purpose::kDcaEncrypt, "dca-encrypt", true}), "dca");
         audit = Must(GenerateKeyPair(*a, {KeyType::kEcP256, Purpose::kAudit, "audit"}), "audit");
         return std::string("token gw-a initialised, 3 key pairs generated inside it");
       }),
       "execute");
  auto t1 = Must(init.Finish(*a, audit), "finish");
  Print(t1);
  KeyPair dsa = Must(FindKeyPair(*a, "dsa-sign"), "find dsa");
  std::printf("     dsa-sign: sensitive=%d extractable=%d (leaves only wrapped, for backup)\n",
              *BoolAttribute(*a, dsa.priv, CKA_SENSITIVE), *BoolAttribute(*a, dsa.priv, CKA_EXTRACTABLE));
  Result<std::string> secret = Attribute(*a, dsa.priv, CKA_PRIVATE_EXPONENT);
  std::printf("     asking the token for the private exponent: %s\n", secret.status().message().c_str());

  std::printf("\n   b) CSR for the signing key, signed inside the token (RFC 3183 names)\n");
  auto bridge = Must(OpenSslBridge::Open(kModule, Secret("demo-user-pin")), "bridge");
  EVP_PKEY* k = Must(bridge->LoadPrivateKey("gw-a", "dsa-sign"), "load key");
  std::string csr = Must(BuildCsrPem(k, {Purpose::kDsaSign, {"agency-a.test"}, "Agency A", "NZ"}), "csr");
  EVP_PKEY_free(k);
  std::printf("     %s ... %zu bytes: CN=domain-signing-authority, SAN domain-signing-authority@agency-a.test\n",
              csr.substr(0, csr.find('\n')).c_str(), csr.size());

  std::printf("\n   c) backup ceremony: keys wrapped under a key split 2 of 3 among the custodians\n");
  Ceremony bk = Must(Ceremony::Begin("backup", 2, custodians, "gw-a"), "begin");
  st = Must(bk.Propose("backup-keys", "dsa-sign, dca-encrypt"), "propose");
  Must(bk.Approve("custodian-2", Approve(dir, 2, st)), "approve 2");
  Must(bk.Approve("custodian-3", Approve(dir, 3, st)), "approve 3");
  BackupBundle bundle;
  Must(bk.Execute([&]() -> Result<std::string> {
         bundle = Must(CreateBackup(*a, "gw-a", {"dsa-sign", "dca-encrypt"}, holders, 2), "backup");
         return StrCat("backup ", bundle.backup.backup_id(), ": 2 keys, 3 shares");
       }),
       "execute");
  auto t2 = Must(bk.Finish(*a, audit), "finish");
  Print(t2);

  std::printf("\n   d) restore onto a fresh token gw-b with the shares of custodians 1 and 3\n");
  Must(module->InitializeToken(free_slot(), "gw-b", Secret("demo-so-pin"), Secret("demo-user-pin")), "init b");
  auto b = Must(Session::Open(module.get(), Must(module->FindToken("gw-b"), "find b")), "session b");
  Must(b->Login(Secret("demo-user-pin")), "login b");
  std::vector<mailseal::v1::KeyShare> shares;
  for (int i : {1, 3}) {
    std::string pem = Slurp(dir + "/c" + std::to_string(i) + ".key");
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    EVP_PKEY* ck = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    shares.push_back(Must(OpenShareFile(bundle.share_files[static_cast<size_t>(i - 1)], ck, holders[static_cast<size_t>(i - 1)].cert_pem), "open share"));
    EVP_PKEY_free(ck);
  }
  auto one = RestoreBackup(*b, bundle.backup, {shares[0]});
  std::printf("     with one share: %s\n", one.status().message().c_str());
  auto restored = Must(RestoreBackup(*b, bundle.backup, shares), "restore");
  std::printf("     with two shares: %zu keys restored, each proved by a test signature\n", restored.size());

  std::printf("\n   e) offline check of both transcripts (no HSM needed)\n");
  std::printf("     initialise: %s\n     backup:     %s\n", VerifyTranscript(t1).ToString().c_str(),
              VerifyTranscript(t2).ToString().c_str());
  auto tampered = t2;
  tampered.mutable_steps(1)->set_detail("dsa-sign, dca-encrypt, and the audit key");
  std::printf("     backup transcript with one word changed: %s\n", VerifyTranscript(tampered).message().c_str());
  return 0;
}
