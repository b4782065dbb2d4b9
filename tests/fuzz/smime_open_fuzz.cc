// libFuzzer target for inbound S/MIME opening (issue #4: "broken input ... a clear verdict per
// message, never a crash, never a silently delivered verified mark"). The gateway's keys are
// throw-away fixtures embedded below (P-256 CA and DSA, RSA-1024 DCA to keep runs fast), so
// the seed corpus (tests/fuzz/corpus/smime: signed, encrypted CBC/GCM, detached, encrypt-only
// messages made with `openssl cms` for these keys) reaches decryption and verification.
// Invariants: exactly one verdict for the one recipient; a delivered copy starts with our mark;
// a hold names its reason; output stays within a bound of the input.
#include <openssl/pem.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

#include "dataplane/smime/gateway.h"

using namespace mailseal;
using namespace mailseal::smime;

namespace {
// Test fixtures, not secrets: generated for this fuzzer only.
const char kCa[] = R"(-----BEGIN CERTIFICATE-----
MIIBfDCCASGgAwIBAgIUWgQfWgUJTRHjM5IXu78onDB+r40wCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHRnV6ei1DQTAgFw0yNjExMjIwODQ0MzdaGA8yMTI2MTAyOTA4
NDQzN1owEjEQMA4GA1UEAwwHRnV6ei1DQTBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABOe1EC4J1MPmevzd2F0JyVrWSIUp9xoHMe1TwoYLo4Eva2zdaZnPRvnSBYF3
iqAlVHqcem+Bs6VUv0SrEe6ecLCjUzBRMB0GA1UdDgQWBBQibn0SufwoHbdZxYKk
YwDKKDHCADAfBgNVHSMEGDAWgBQibn0SufwoHbdZxYKkYwDKKDHCADAPBgNVHRMB
Af8EBTADAQH/MAoGCCqGSM49BAMCA0kAMEYCIQCS+niAZGiIOntN1/8JO6Mph2n6
Bi2IdX1v7FKMoX6jbQIhAM4cfx3S/qUY3gBNYtM1GO9C+sRoc38DcTFbPFmtwWDe
-----END CERTIFICATE-----
)";
const char kDcaCert[] = R"(-----BEGIN CERTIFICATE-----
MIICOjCCAeCgAwIBAgIUf9SVB5tXWptCY5elV9y5I2n9ZlgwCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHRnV6ei1DQTAgFw0yNjExMjIwODQ0MzdaGA8yMTI2MTAyOTA4
NDQzN1owOTE3MDUGA1UEAwwuZG9tYWluLWNvbmZpZGVudGlhbGl0eS1hdXRob3Jp
dHlAYWdlbmN5LWIudGVzdDCBnzANBgkqhkiG9w0BAQEFAAOBjQAwgYkCgYEAuDLN
Vs8AvQRDqsUjOqMPKxIQ36DcEA3xDnmWbacC8xuGXN+ROptOlo0cHYEBIRsxTEIl
3Fv5y5/kIZaTrnna6e4k82Hk+bjdc82qGkDlxGXRznMMFFnukilsILz4KRR/IMDq
mBQK6C+KHYZBkegWXaXGZ7DqGWUAPlhgkiOh2ikCAwEAAaOBozCBoDAOBgNVHQ8B
Af8EBAMCBSAwEwYDVR0lBAwwCgYIKwYBBQUHAwQwOQYDVR0RBDIwMIEuZG9tYWlu
LWNvbmZpZGVudGlhbGl0eS1hdXRob3JpdHlAYWdlbmN5LWIudGVzdDAdBgNVHQ4E
FgQUYyYq9p9F/mKC4FFigC/gET0xuMQwHwYDVR0jBBgwFoAUIm59Ern8KB23WcWC
pGMAyigxwgAwCgYIKoZIzj0EAwIDSAAwRQIhAIGjEkwgWCCjz5Lz19iYQAp6ygGJ
40ySnNsVfSkazkhkAiAhQZ521Qlk3S9zY32S47tIHwgzRoI//ba94Hlb3Ryd1g==
-----END CERTIFICATE-----
)";
const char kDcaKey[] = R"(-----BEGIN PRIVATE KEY-----
MIICeAIBADANBgkqhkiG9w0BAQEFAASCAmIwggJeAgEAAoGBALgyzVbPAL0EQ6rF
IzqjDysSEN+g3BAN8Q55lm2nAvMbhlzfkTqbTpaNHB2BASEbMUxCJdxb+cuf5CGW
k6552unuJPNh5Pm43XPNqhpA5cRl0c5zDBRZ7pIpbCC8+CkUfyDA6pgUCugvih2G
QZHoFl2lxmew6hllAD5YYJIjodopAgMBAAECgYEAgLEdvbTKs0SzcjBhuKoMAu+Q
Um200pKrBI32h43UBb4JVgHtGaFAevcD2akz/Mle3ASrJxYrpBSF8uGdNJ12UCKc
0+UG65LcTqaxpTFU6TG5lm6YUCbHYbUIsE6iiFj7dWdheNrYW3zDGs3ydniDlgMc
T3VoIehx5FdL0rcVA8ECQQDiTbK1hKmX6vwx0Z6k1ZVF/l60QQ6pXV5OgvxuUPwA
eASUgcYU8AH2V2PCS1YZDTmd0XnyJc5CQQrDvHv3switAkEA0F6m+l2rsvZCuUCn
mu7qLxW+pOzMfOMB0x1ap8ehwOypnAi+VjprXz9Aet6R+5K7YAkKuCCA/CAfVanH
Ne5a7QJAbrVuEMj2oqBNgh23S5JFNXmsYOhWwNoxcZ042sr5jU0piHE4MzP68cVs
wzdRxm2m2yMIUkLWdakWGA2UY+gM/QJBAKP01o7KhgAbpgT+yuMuezbxdUFw0ray
KQ1lW6AJhU246vzMJHjVHwejTalg2J2Lp8S5WKXpbZT18bIGFapqE0ECQQDJJdcl
dGWhA8B1dy6voqoB4YXmhF504gFEFiC64P7JRlqf6PivNiFQx5q1BSsXwHBABOiA
u03lhsmSRZgxo+0r
-----END PRIVATE KEY-----
)";

struct World {
  GatewayPolicy policy;
  std::unique_ptr<CertStore> store;
  GatewayKeys keys;
  std::unique_ptr<Gateway> gw;
};

World* Make() {
  auto* w = new World;
  char tmpl[] = "/tmp/mailseal-fuzz-smime-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  std::ofstream(dir + "/ca.crt") << kCa;
  w->store = std::move(CertStore::Open(dir + "/store", dir + "/ca.crt", {}).value());
  w->policy.local_domains = {"agency-b.test"};
  w->policy.authserv_id = "fuzz.test";
  BIO* b = BIO_new_mem_buf(kDcaCert, -1);
  w->keys.dca_cert = Ref(PEM_read_bio_X509(b, nullptr, nullptr, nullptr));
  BIO_free(b);
  b = BIO_new_mem_buf(kDcaKey, -1);
  w->keys.dca_key = PEM_read_bio_PrivateKey(b, nullptr, nullptr, nullptr);
  BIO_free(b);
  if (!w->keys.dca_cert || !w->keys.dca_key) std::abort();
  w->gw = std::make_unique<Gateway>(&w->policy, w->store.get());
  return w;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* w = Make();
  std::string in(reinterpret_cast<const char*>(data), size);
  std::vector<Output> out = w->gw->Process("x@agency-a.test", {"bob@agency-b.test"}, in, w->keys);
  if (out.size() != 1 || out[0].rcpts != std::vector<uint32_t>{0}) std::abort();
  const Output& o = out[0];
  if (o.action == Action::kDeliver) {
    // SM-8.2: the level first, then our results; signed+verified exactly when smime=pass (no
    // transport is known here, so never tls+spf).
    bool verified = o.body.rfind("X-Mailseal-Auth-Level: signed+verified\r\nAuthentication-Results: fuzz.test; smime=pass", 0) == 0;
    bool none = o.body.rfind("X-Mailseal-Auth-Level: none\r\nAuthentication-Results: fuzz.test; smime=", 0) == 0 &&
                o.body.rfind("X-Mailseal-Auth-Level: none\r\nAuthentication-Results: fuzz.test; smime=pass", 0) != 0;
    if (!verified && !none) std::abort();
    if (o.body.size() > 2 * size + 4096) std::abort();
  } else if (o.action == Action::kHold) {
    if (o.reason.empty()) std::abort();
  } else {
    std::abort();  // with keys present there is no pass or temporary failure for our domain
  }
  return 0;
}
