// mailseal-provision — what an appliance needs before its first key ceremony (issue #18), made
// from mailseald's own configuration; run as root by mailseal-provision.service before
// mailseald on every boot. Each step is done only when what it makes is missing, so a second
// run changes nothing:
//
//  1. the token: when the configured token does not exist and no PIN file does either (a first
//     boot), a free slot is initialised with that label, a random user PIN written to
//     hsm.pin_file (0400, mailseald's user) and a random SO PIN to <pin dir>/so.pin (0400,
//     root); both are written before the token is made and renamed into place after it, so a
//     crash at any point is finished by the next run. A missing token with a PIN file present is an error (a real HSM that is not
//     reachable is never replaced by a new token). With a real HSM the vendor's procedure makes
//     the token and the site writes the PIN file: this step then does nothing.
//  2. the audit key (control.audit.key_label), a P-256 pair made inside the token.
//  3. the management API's identity: its key inside the token (control.key_label, P-256) and,
//     when control.cert_file does not exist, a self-signed certificate for the host name signed
//     inside the token. Its SHA-256 fingerprint and the certificate are printed (the console
//     and the journal): operators check it before trusting it (mailsealctl --ca), or have the
//     site's CA issue one and write it to cert_file.
//
// No domain key is made here: the domain's keys come only from the initialise ceremony, which
// the custodians run over the management API once this is done.
//
//   mailseal-provision [--module PKCS11_MODULE] CONFIG
//
// --module: the token's own module when mailseald reaches the token through a token holder
// (hsm.module_path is then p11-kit's client module; image/systemd/mailseal-token.service):
// initialising a token is done on the module itself, never over the remote protocol.
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <optional>
#include <ctime>
#include <string>
#include <string_view>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "dataplane/base/file.h"
#include "dataplane/base/openssl_error.h"
#include "dataplane/base/strings.h"
#include "dataplane/config/config.h"
#include "hsm/keys.h"
#include "hsm/module.h"
#include "hsm/secret.h"
#include "hsm/token_key.h"

using namespace mailseal;
using namespace mailseal::hsm;

namespace {

int Fail(const std::string& what, const Status& st) {
  std::fprintf(stderr, "mailseal-provision: %s: %s\n", what.c_str(), st.ToString().c_str());
  return 1;
}

std::string Dir(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
}

Secret RandomPin() {
  unsigned char raw[16];
  RAND_bytes(raw, sizeof raw);
  static const char* hex = "0123456789abcdef";
  std::string pin;
  for (unsigned char b : raw) pin += {hex[b >> 4], hex[b & 15]};
  OPENSSL_cleanse(raw, sizeof raw);
  return Secret(std::move(pin));
}

bool Exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

// SelfSigned: a certificate for `name` (DNS, or IP when it is an address) valid 396 days,
// serverAuth, signed by `key` (inside the token).
Result<std::string> SelfSigned(EVP_PKEY* key, const std::string& name) {
  X509* x = X509_new();
  unsigned char serial[16];
  RAND_bytes(serial, sizeof serial);
  serial[0] &= 0x7f;
  BIGNUM* bn = BN_bin2bn(serial, sizeof serial, nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
  BN_free(bn);
  X509_set_version(x, X509_VERSION_3);
  X509_gmtime_adj(X509_getm_notBefore(x), -300);
  X509_gmtime_adj(X509_getm_notAfter(x), 396L * 86400);
  X509_NAME* n = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(name.c_str()), -1, -1, 0);
  X509_NAME_add_entry_by_txt(n, "OU", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>("mailseal management API"),
                             -1, -1, 0);
  X509_set_issuer_name(x, n);
  X509_set_pubkey(x, key);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, x, x, nullptr, nullptr, 0);
  std::string san = StrCat("DNS:", name);
  for (const auto& [nid, value] : {std::pair{NID_basic_constraints, std::string("critical,CA:FALSE")},
                                   std::pair{NID_key_usage, std::string("critical,digitalSignature")},
                                   std::pair{NID_ext_key_usage, std::string("serverAuth")},
                                   std::pair{NID_subject_alt_name, san},
                                   std::pair{NID_subject_key_identifier, std::string("hash")}}) {
    X509_EXTENSION* e = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
    if (!e || !X509_add_ext(x, e, -1)) {
      X509_EXTENSION_free(e);
      X509_free(x);
      return InternalError(StrCat("certificate extension ", OBJ_nid2sn(nid)));
    }
    X509_EXTENSION_free(e);
  }
  if (X509_sign(x, key, EVP_sha256()) <= 0) {
    X509_free(x);
    return InternalError("signing the certificate inside the token failed");
  }
  BIO* b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(b, x);
  std::string pem = base::BioString(b);
  BIO_free(b);
  X509_free(x);
  return pem;
}

std::string Fingerprint(const std::string& pem) {
  BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* x = PEM_read_bio_X509(b, nullptr, nullptr, nullptr);
  BIO_free(b);
  if (!x) return "?";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  X509_digest(x, EVP_sha256(), md, &n);
  X509_free(x);
  std::string out;
  static const char* hex = "0123456789ABCDEF";
  for (unsigned int i = 0; i < n; ++i) {
    if (i) out += ':';
    out += {hex[md[i] >> 4], hex[md[i] & 15]};
  }
  return out;
}

// EnsureKey: the key pair `label` on the token, made (P-256, `purpose`) when missing.
Result<KeyPair> EnsureKey(Session& s, const std::string& label, Purpose purpose, const char* what) {
  Result<KeyPair> kp = FindKeyPair(s, label);
  if (kp.ok()) {
    std::printf("%s key '%s': on the token already\n", what, label.c_str());
    return kp;
  }
  if (kp.status().code() != StatusCode::kNotFound) return kp.status();
  kp = GenerateKeyPair(s, {KeyType::kEcP256, purpose, label});
  if (kp.ok()) std::printf("%s key '%s': made inside the token (P-256)\n", what, label.c_str());
  return kp;
}

}  // namespace

int main(int argc, char** argv) {
  std::string module_override;
  if (argc == 4 && std::string_view(argv[1]) == "--module") {
    module_override = argv[2];
    argv += 2;
    argc -= 2;
  }
  if (argc != 2) {
    std::fprintf(stderr, "usage: mailseal-provision [--module PKCS11_MODULE] CONFIG\n");
    return 2;
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  Result<v1::Config> cfg = config::LoadConfig(argv[1]);
  if (!cfg.ok()) return Fail("configuration", cfg.status());
  if (!cfg->has_hsm()) {
    std::printf("no hsm section: nothing to provision\n");
    return 0;
  }
  const v1::Hsm& h = cfg->hsm();
  uid_t uid = 0;
  gid_t gid = 0;
  if (!cfg->user().empty()) {
    struct passwd* pw = ::getpwnam(cfg->user().c_str());
    if (!pw) return Fail("configuration", InvalidArgumentError(StrCat("field 'user': no account '", cfg->user(), "'")));
    uid = pw->pw_uid;
    gid = pw->pw_gid;
  }
  Result<std::unique_ptr<Module>> m = Module::Load(module_override.empty() ? h.module_path() : module_override);
  if (!m.ok()) return Fail("module", m.status());
  const std::string so_file = StrCat(Dir(h.pin_file()), "/so.pin");
  Result<CK_SLOT_ID> slot = (*m)->FindToken(h.token_label(), h.token_serial());
  if (!slot.ok()) {
    if (Exists(h.pin_file()))
      return Fail("token", FailedPreconditionError(StrCat("'", h.token_label(), "' not found and ", h.pin_file(),
                                                          " exists: not a first boot; the HSM is not reachable "
                                                          "(no new token is made over a missing one)")));
    if (!h.token_serial().empty())
      return Fail("token", FailedPreconditionError("hsm.token_serial names a token that is not there"));
    Result<std::vector<SlotInfo>> slots = (*m)->Slots();
    if (!slots.ok()) return Fail("slots", slots.status());
    const SlotInfo* free = nullptr;
    for (const SlotInfo& s : *slots)
      if (s.token_present && !s.initialized) {
        free = &s;
        break;
      }
    if (!free) return Fail("token", FailedPreconditionError("no slot with an uninitialised token"));
    Secret so = RandomPin(), user = RandomPin();
    // The PINs are on disk (as .pending) before the token exists and take their names only
    // after it does: a crash before the token is made leaves .pending files the next run
    // overwrites (still a first boot: no PIN file); a crash after it leaves .pending files the
    // next run puts in place (below). Never a token whose PIN nobody knows, never a PIN file
    // that makes a first boot look like a missing HSM.
    auto write_pin = [](const std::string& path, const Secret& pin, base::FileOwner owner) {
      std::string bytes(pin.Reveal());
      Status st = base::WriteFileDurably(path, bytes, 0400, owner);
      OPENSSL_cleanse(bytes.data(), bytes.size());
      return st;
    };
    if (Status st = write_pin(so_file + ".pending", so, base::FileOwner{}); !st.ok()) return Fail("SO PIN", st);
    if (Status st = write_pin(h.pin_file() + ".pending", user, base::FileOwner{uid, gid}); !st.ok())
      return Fail("PIN file", st);
    if (Status st = (*m)->InitializeToken(free->slot, h.token_label(), so, user); !st.ok()) {
      ::unlink((h.pin_file() + ".pending").c_str());
      ::unlink((so_file + ".pending").c_str());
      return Fail("token initialisation", st);
    }
    for (const std::string* f : {&so_file, &h.pin_file()})
      if (Status st = base::RenameDurably(*f + ".pending", *f); !st.ok()) return Fail("PIN file", st);
    std::printf("token '%s' initialised in slot %lu; user PIN in %s (owner %s), SO PIN in %s (root only)\n",
                h.token_label().c_str(), static_cast<unsigned long>(free->slot), h.pin_file().c_str(),
                cfg->user().empty() ? "root" : cfg->user().c_str(), so_file.c_str());
    slot = (*m)->FindToken(h.token_label());
    if (!slot.ok()) return Fail("token", slot.status());
  } else {
    std::printf("token '%s': present\n", h.token_label().c_str());
    // A first boot cut short after the token was made: its PINs are still .pending.
    for (const std::string* f : {&so_file, &h.pin_file()})
      if (!Exists(*f) && Exists(*f + ".pending")) {
        if (Status st = base::RenameDurably(*f + ".pending", *f); !st.ok()) return Fail("PIN file", st);
        std::printf("%s: put in place (a first boot was interrupted after the token was made)\n", f->c_str());
      }
  }
  Result<Secret> pin = ReadSecretFile(h.pin_file(), cfg->user().empty() ? std::nullopt : std::optional<uid_t>(uid));
  if (!pin.ok()) return Fail("PIN file", pin.status());
  Result<std::unique_ptr<Session>> s = Session::Open(m->get(), *slot);
  if (!s.ok()) return Fail("session", s.status());
  if (Status st = (*s)->Login(*pin); !st.ok()) return Fail("login", st);

  if (!cfg->has_control()) {
    std::printf("no control section: no audit key or management identity to make\n");
    return 0;
  }
  const v1::Control& c = cfg->control();
  if (!c.audit().key_label().empty())
    if (Result<KeyPair> kp = EnsureKey(**s, c.audit().key_label(), Purpose::kAudit, "audit"); !kp.ok())
      return Fail("audit key", kp.status());
  if (c.key_label().empty()) {
    std::printf("management key: control.key_file (the site's), nothing to make\n");
    return 0;
  }
  Result<KeyPair> tls = EnsureKey(**s, c.key_label(), Purpose::kTls, "management TLS");
  if (!tls.ok()) return Fail("management key", tls.status());
  if (c.cert_file().empty()) return Fail("configuration", InvalidArgumentError("field 'control.cert_file': required"));
  if (Exists(c.cert_file())) {
    std::printf("management certificate: %s exists\n", c.cert_file().c_str());
    return 0;
  }
  Result<EVP_PKEY*> key = TokenPrivateKey(s->get(), *tls);
  if (!key.ok()) return Fail("management key", key.status());
  std::string name = cfg->hostname().empty() ? "mailseal" : cfg->hostname();
  Result<std::string> pem = SelfSigned(*key, name);
  EVP_PKEY_free(*key);
  if (!pem.ok()) return Fail("management certificate", pem.status());
  if (Status st = base::WriteFileDurably(c.cert_file(), *pem, 0644, base::FileOwner{}); !st.ok())
    return Fail("management certificate", st);
  std::printf("management certificate for %s (self-signed inside the token) in %s\n", name.c_str(), c.cert_file().c_str());
  std::printf("management certificate SHA-256 fingerprint: %s\n", Fingerprint(*pem).c_str());
  std::fputs(pem->c_str(), stdout);
  return 0;
}
