// custodians.h — test custodians: key pairs and self-signed certificates made with openssl
// (test fixtures), as a custodian would hold them.
#pragma once

#include <openssl/pem.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "dataplane/base/status.h"
#include "mailseal/v1/hsm.pb.h"

namespace mailseal::hsm::testing {

inline std::string Slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct TestCustodian {
  std::string name, cert_pem, key_path, cert_path;
  mailseal::v1::CustodianRecord Record() const {
    mailseal::v1::CustodianRecord r;
    r.set_name(name);
    r.set_cert_pem(cert_pem);
    return r;
  }
  // Key loads the private key (the caller frees it).
  EVP_PKEY* Key() const {
    std::string pem = Slurp(key_path);
    BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    EVP_PKEY* k = PEM_read_bio_PrivateKey(b, nullptr, nullptr, nullptr);
    BIO_free(b);
    return k;
  }
};

// MakeCustodians creates custodian-1..n in `dir` (RSA-2048, or P-256 for even ones if mixed).
inline std::vector<TestCustodian> MakeCustodians(const std::string& dir, int n, bool mixed = false) {
  std::vector<TestCustodian> out;
  for (int i = 1; i <= n; ++i) {
    std::string alg = (mixed && i % 2 == 0) ? "-newkey ec -pkeyopt ec_paramgen_curve:P-256" : "-newkey rsa:2048";
    std::string cmd = StrCat("cd ", dir, " && openssl req -x509 ", alg, " -nodes -keyout c", i, ".key -out c", i,
                             ".crt -subj /CN=custodian-", i, " -days 30 >/dev/null 2>&1");
    if (std::system(cmd.c_str()) != 0) return {};
    TestCustodian c;
    c.name = StrCat("custodian-", i);
    c.key_path = StrCat(dir, "/c", i, ".key");
    c.cert_path = StrCat(dir, "/c", i, ".crt");
    c.cert_pem = Slurp(c.cert_path);
    out.push_back(c);
  }
  return out;
}

}  // namespace mailseal::hsm::testing
