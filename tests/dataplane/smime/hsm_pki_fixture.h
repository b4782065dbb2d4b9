// hsm_pki_fixture.h — a SoftHSM token (softhsm_fixture.h) plus certificates from a test CA for
// keys made inside it: the S/MIME tests that run on token keys (smime_hsm_test, trust_hsm_test).
#pragma once

#include <openssl/pem.h>

#include <fstream>

#include "hsm/csr.h"
#include "tests/hsm/custodians.h"
#include "tests/hsm/softhsm_fixture.h"

namespace mailseal::smime::testing {

class SealWithHsmTest : public hsm::testing::SoftHsmTest {
 protected:
  // IssueFor: a certificate from the test CA for the token key `k` (its CSR signed in the token).
  X509* IssueFor(EVP_PKEY* k, const std::string& label, hsm::Purpose p) {
    Result<std::string> csr = hsm::BuildCsrPem(k, {p, {"agency-a.test"}, "Agency A", "NZ"});
    EXPECT_TRUE(csr.ok()) << csr.status().ToString();
    std::ofstream(dir_ + "/" + label + ".csr") << *csr;
    int rc = 0;
    std::string out = Run(StrCat("cd ", dir_, " && openssl x509 -req -in ", label, ".csr -CA ca.crt -CAkey ca.key ",
                                 "-CAcreateserial -copy_extensions copy -days 30 -out ", label, ".crt"), &rc);
    EXPECT_EQ(rc, 0) << out;
    std::string pem = hsm::testing::Slurp(dir_ + "/" + label + ".crt");
    BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    X509* x = PEM_read_bio_X509(b, nullptr, nullptr, nullptr);
    BIO_free(b);
    return x;
  }
};

}  // namespace mailseal::smime::testing
