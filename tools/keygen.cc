// mailseal-keygen — makes a domain key pair on the token and writes its RFC 3183 CSR (signed
// inside the token), for test set-ups and for operators until the control plane's key ceremony
// commands (issue #5) take this over. The PIN is read from a 0600 file, never from argv.
//
//   mailseal-keygen MODULE TOKEN_LABEL PIN_FILE KEY_LABEL dsa|dca|audit|tls rsa2048|rsa3072|p256|p384 DOMAIN CSR_OUT
//
// For `tls` (the SMTP server's or management API's key, issue #16) DOMAIN is the host name (or
// a comma-separated list of names and addresses) the certificate will carry.
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "hsm/csr.h"
#include "hsm/keys.h"
#include "hsm/module.h"
#include "hsm/secret.h"
#include "hsm/token_key.h"

using namespace mailseal;
using namespace mailseal::hsm;

int main(int argc, char** argv) {
  if (argc != 9) {
    std::fprintf(stderr,
                 "usage: mailseal-keygen MODULE TOKEN_LABEL PIN_FILE KEY_LABEL dsa|dca|audit|tls "
                 "rsa2048|rsa3072|p256|p384 DOMAIN CSR_OUT\n");
    return 2;
  }
  const std::map<std::string, KeyType> types = {
      {"rsa2048", KeyType::kRsa2048}, {"rsa3072", KeyType::kRsa3072}, {"p256", KeyType::kEcP256}, {"p384", KeyType::kEcP384}};
  std::string purpose = argv[5];
  if ((purpose != "dsa" && purpose != "dca" && purpose != "audit" && purpose != "tls") || !types.count(argv[6])) {
    std::fprintf(stderr, "mailseal-keygen: purpose must be dsa, dca, audit or tls, type one of rsa2048 rsa3072 p256 p384\n");
    return 2;
  }
  auto fail = [](const char* what, const Status& st) {
    std::fprintf(stderr, "mailseal-keygen: %s: %s\n", what, st.ToString().c_str());
    return 1;
  };
  Result<std::unique_ptr<Module>> m = Module::Load(argv[1]);
  if (!m.ok()) return fail("module", m.status());
  Result<CK_SLOT_ID> slot = (*m)->FindToken(argv[2]);
  if (!slot.ok()) return fail("token", slot.status());
  Result<Secret> pin = ReadSecretFile(argv[3]);
  if (!pin.ok()) return fail("PIN file", pin.status());
  Result<std::unique_ptr<Session>> s = Session::Open(m->get(), *slot);
  if (!s.ok()) return fail("session", s.status());
  if (Status st = (*s)->Login(*pin); !st.ok()) return fail("login", st);
  Purpose p = purpose == "dsa"   ? Purpose::kDsaSign
              : purpose == "dca" ? Purpose::kDcaEncrypt
              : purpose == "tls" ? Purpose::kTls
                                 : Purpose::kAudit;
  Result<KeyPair> kp = GenerateKeyPair(**s, {types.at(argv[6]), p, argv[4]});
  if (!kp.ok()) return fail("key generation", kp.status());
  Result<EVP_PKEY*> key = TokenPrivateKey(s->get(), *kp);
  if (!key.ok()) return fail("key", key.status());
  // Domain keys get RFC 3183 CSRs; the audit key a plain one (CN=mailseal-audit.<domain>).
  std::vector<std::string> names;
  for (std::string_view rest = argv[7]; !rest.empty();) {
    size_t comma = rest.find(',');
    names.emplace_back(rest.substr(0, comma));
    rest = comma == std::string_view::npos ? "" : rest.substr(comma + 1);
  }
  Result<std::string> csr = p == Purpose::kAudit ? BuildAuditCsrPem(*key, argv[7]) : BuildCsrPem(*key, {p, names, "", ""});
  EVP_PKEY_free(*key);
  if (!csr.ok()) return fail("CSR", csr.status());
  std::ofstream(argv[8]) << *csr;
  std::printf("%s key '%s' made on token '%s'; CSR in %s\n", purpose.c_str(), argv[4], argv[2], argv[8]);
  return 0;
}
