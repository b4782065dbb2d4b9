// pki_fixture.h — a test PKI made with the openssl CLI for the S/MIME tests: a trusted CA,
// DSA/DCA certificates for agency-a/-b (and a DCA for agency-c), an untrusted "Evil-CA" and
// certificates it issued under the same names. Test fixtures only; the keys are throw-away.
#pragma once

#include <gtest/gtest.h>
#include <openssl/pem.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dataplane/smime/gateway.h"

namespace mailseal::smime::testing {

inline std::string Slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class PkiTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/mailseal-smime-XXXXXX";
    dir_ = mkdtemp(tmpl);
    std::ofstream(dir_ + "/ext.cnf") <<
        "[dsa_a]\nkeyUsage=critical,digitalSignature,nonRepudiation\nextendedKeyUsage=emailProtection\n"
        "subjectAltName=email:domain-signing-authority@agency-a.test\n"
        "[dsa_b]\nkeyUsage=critical,digitalSignature,nonRepudiation\nextendedKeyUsage=emailProtection\n"
        "subjectAltName=email:domain-signing-authority@agency-b.test\n"
        "[dca_a]\nkeyUsage=critical,keyEncipherment\nextendedKeyUsage=emailProtection\n"
        "subjectAltName=email:domain-confidentiality-authority@agency-a.test\n"
        "[dca_b]\nkeyUsage=critical,keyEncipherment\nextendedKeyUsage=emailProtection\n"
        "subjectAltName=email:domain-confidentiality-authority@agency-b.test\n"
        "[dca_c]\nkeyUsage=critical,keyEncipherment\nextendedKeyUsage=emailProtection\n"
        "subjectAltName=email:domain-confidentiality-authority@agency-c.test\n";
    std::string cmd = "cd " + dir_ + " && (openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt "
                      "-subj /CN=Test-CA -days 30 && openssl req -x509 -newkey rsa:2048 -nodes -keyout evil.key "
                      "-out evil.crt -subj /CN=Evil-CA -days 30";
    // CNs name the authority as SEE-2.6 asks (CN and rfc822Name).
    for (const char* n : {"dsa_a", "dsa_b", "dca_a", "dca_b", "dca_c"}) {
      std::string cn = std::string(n[1] == 's' ? "domain-signing-authority@agency-" : "domain-confidentiality-authority@agency-") +
                       n[4] + ".test";
      cmd += std::string(" && openssl req -newkey rsa:2048 -nodes -keyout ") + n + ".key -out " + n + ".csr -subj /CN=" +
             cn + " && openssl x509 -req -in " + n + ".csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 "
             "-extfile ext.cnf -extensions " + n + " -out " + n + ".crt";
    }
    cmd += std::string(" && openssl x509 -req -in dsa_a.csr -CA evil.crt -CAkey evil.key -CAcreateserial -days 30 ") +
           "-extfile ext.cnf -extensions dsa_a -out forged.crt";
    cmd += std::string(" && openssl x509 -req -in dca_c.csr -CA evil.crt -CAkey evil.key -CAcreateserial -days 30 ") +
           "-extfile ext.cnf -extensions dca_c -out dca_c_forged.crt) >/dev/null 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }
  static void TearDownTestSuite() { std::system(("rm -rf " + dir_).c_str()); }

  static X509* Cert(const std::string& n) {
    std::string pem = Slurp(dir_ + "/" + n + ".crt");
    BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    X509* x = PEM_read_bio_X509(b, nullptr, nullptr, nullptr);
    BIO_free(b);
    return x;
  }
  static EVP_PKEY* Key(const std::string& n) {
    std::string pem = Slurp(dir_ + "/" + n + ".key");
    BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    EVP_PKEY* k = PEM_read_bio_PrivateKey(b, nullptr, nullptr, nullptr);
    BIO_free(b);
    return k;
  }
  static X509_STORE* Trust() {
    X509_STORE* s = X509_STORE_new();
    X509* ca = Cert("ca");
    X509_STORE_add_cert(s, ca);
    X509_free(ca);
    return s;
  }
  // Run: a shell command in the PKI directory; its stderr (openssl's chatter) is dropped for
  // the whole command unless PKI_DEBUG is set. Redirections inside `cmd` keep their effect.
  static int Run(const std::string& cmd) {
    return std::system(("cd " + dir_ + " && ( " + cmd + " )" + (std::getenv("PKI_DEBUG") ? "" : " 2>/dev/null")).c_str());
  }

  static std::string dir_;
  const std::string msg_ =
      "From: alice@agency-a.test\r\nTo: bob@agency-b.test\r\nSubject: [IN-CONFIDENCE] budget\r\n"
      "Date: Sun, 22 Nov 2026 05:54:31 +0000\r\nMessage-ID: <m1@agency-a.test>\r\nMIME-Version: 1.0\r\n"
      "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
      "Grüße — the numbers are in.\r\n.leading dot\r\ntrailing space \r\n";
};
inline std::string PkiTest::dir_;

// GatewayPkiTest: gateways of the test PKI — `own` ("a" or "b") with its keys (software keys
// standing in for the token), partner domains, and partner certificates pinned by file name.
class GatewayPkiTest : public PkiTest {
 protected:
  struct Side {
    GatewayPolicy policy;
    std::unique_ptr<CertStore> store;
    GatewayKeys keys;
    std::unique_ptr<Gateway> gw;
  };
  Side Make(const std::string& own, const std::map<std::string, std::string>& pinned = {},
            const std::vector<std::string>& partners = {}) {
    Side s;
    s.policy.local_domains = {"agency-" + own + ".test"};
    for (const std::string& p : partners) s.policy.partners[p] = {};
    s.policy.authserv_id = "gw-" + own + ".test";
    s.policy.gateway_name = "gw-" + own + ".test";
    std::string store_dir = dir_ + "/store-" + own + "-" + std::to_string(++counter_);
    Result<std::unique_ptr<CertStore>> st = CertStore::Open(store_dir, dir_ + "/ca.crt", {});
    EXPECT_TRUE(st.ok()) << st.status().ToString();
    s.store = std::move(st.value());
    for (const auto& [domain, file] : pinned) EXPECT_TRUE(s.store->Pin(domain, dir_ + "/" + file + ".crt").ok());
    s.keys.dsa_cert = Ref(Cert("dsa_" + own));
    s.keys.dca_cert = Ref(Cert("dca_" + own));
    s.keys.dsa_key = Key("dsa_" + own);
    s.keys.dca_key = Key("dca_" + own);
    keys_.push_back(s.keys.dsa_key);
    keys_.push_back(s.keys.dca_key);
    s.gw = std::make_unique<Gateway>(&s.policy, s.store.get());
    return s;
  }
  void TearDown() override {
    for (EVP_PKEY* k : keys_) EVP_PKEY_free(k);
  }
  std::vector<EVP_PKEY*> keys_;
  static inline int counter_ = 0;  // unique store directories across the suite
};

}  // namespace mailseal::smime::testing
