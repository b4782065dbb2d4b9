// session.cc — see session.h.
#include "dataplane/tls/session.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "dataplane/base/openssl_error.h"

namespace mailseal::tls {
namespace {
constexpr char kCiphers[] = "ECDHE+AESGCM:ECDHE+CHACHA20";   // SM-6.1 (TLS 1.2; 1.3 suites are all AEAD)

void Harden(SSL_CTX* ctx) {
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
}

bool IsAddressLiteral(const std::string& host) {
  unsigned char buf[16];
  return host.empty() || host[0] == '[' || inet_pton(AF_INET, host.c_str(), buf) == 1 ||
         inet_pton(AF_INET6, host.c_str(), buf) == 1;
}
}  // namespace

Result<SSL_CTX*> MakeServerContext(const std::string& cert_file, const std::string& key_file,
                                   const std::string& client_ca_file) {
  struct stat st {};
  if (!key_file.empty() && ::stat(key_file.c_str(), &st) != 0)
    return InvalidArgumentError(StrCat("tls key_file ", key_file, ": ", std::strerror(errno)));
  if (!key_file.empty() && (st.st_mode & 077))
    return InvalidArgumentError(StrCat("tls key_file ", key_file, " may be read by group or others (chmod 600)"));
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) return InternalError(base::OpenSslError("TLS context"));
  Harden(ctx);
  SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
  if (SSL_CTX_set_cipher_list(ctx, kCiphers) != 1 || SSL_CTX_use_certificate_chain_file(ctx, cert_file.c_str()) != 1 ||
      (!key_file.empty() && (SSL_CTX_use_PrivateKey_file(ctx, key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
                             SSL_CTX_check_private_key(ctx) != 1))) {
    std::string why = base::OpenSslError("");
    SSL_CTX_free(ctx);
    return InvalidArgumentError(StrCat("tls ", cert_file, key_file.empty() ? "" : " / ", key_file, ": ", why));
  }
  if (!client_ca_file.empty()) {
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(client_ca_file.c_str());
    if (!names) {
      SSL_CTX_free(ctx);
      return InvalidArgumentError(StrCat("tls client_ca_file ", client_ca_file, ": ", base::OpenSslError("")));
    }
    SSL_CTX_set_client_CA_list(ctx, names);
    // Asked for, never required, never judged here: the verdict is the caller's (pki::Validate).
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, [](int, X509_STORE_CTX*) { return 1; });
  }
  return ctx;
}

EVP_PKEY* CertificateKey(SSL_CTX* ctx) {
  X509* leaf = SSL_CTX_get0_certificate(ctx);
  return leaf ? X509_get0_pubkey(leaf) : nullptr;
}

Status UseServerKey(SSL_CTX* ctx, EVP_PKEY* key) {
  if (SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1)
    return InvalidArgumentError(base::OpenSslError("the key is not the certificate's"));
  return OkStatus();
}

Result<SSL_CTX*> MakeClientContext() {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) return InternalError(base::OpenSslError("TLS context"));
  Harden(ctx);
  SSL_CTX_set_cipher_list(ctx, kCiphers);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);   // opportunistic (RFC 7435), see the header
  return ctx;
}

std::vector<X509*> Session::PeerChain() const {
  std::vector<X509*> out;
  if (!ssl_ || !established_) return out;
  // The leaf first; the chain (which includes the leaf on the client side only,
  // SSL_get_peer_cert_chain(3)) after it.
  X509* leaf = SSL_get0_peer_certificate(ssl_);
  if (!leaf) return out;
  out.push_back(leaf);
  STACK_OF(X509)* chain = SSL_get_peer_cert_chain(ssl_);
  for (int i = 0; chain && i < sk_X509_num(chain) && out.size() < 65; ++i)
    if (X509* x = sk_X509_value(chain, i); X509_cmp(x, leaf) != 0) out.push_back(x);
  return out;
}

void FreeContext(SSL_CTX* ctx) {
  if (ctx) SSL_CTX_free(ctx);
}

Result<std::unique_ptr<Session>> Session::Start(SSL_CTX* ctx, Role role, const std::string& sni) {
  std::unique_ptr<Session> s(new Session());
  s->ssl_ = SSL_new(ctx);
  BIO* rbio = BIO_new(BIO_s_mem());
  BIO* wbio = BIO_new(BIO_s_mem());
  if (!s->ssl_ || !rbio || !wbio) {
    if (rbio) BIO_free(rbio);
    if (wbio) BIO_free(wbio);
    return InternalError(base::OpenSslError("TLS session setup failed"));
  }
  BIO_set_mem_eof_return(rbio, -1);   // an empty BIO means "more to come", not end of stream
  SSL_set_bio(s->ssl_, rbio, wbio);
  s->rbio_ = rbio;
  s->wbio_ = wbio;
  if (role == Role::kServer) {
    SSL_set_accept_state(s->ssl_);
  } else {
    if (!IsAddressLiteral(sni)) SSL_set_tlsext_host_name(s->ssl_, sni.c_str());
    SSL_set_connect_state(s->ssl_);
  }
  return s;
}

Session::~Session() {
  if (ssl_) SSL_free(ssl_);   // frees both memory BIOs
  ERR_clear_error();
}

void Session::Fail(const char* what) {
  failed_ = true;
  error_ = base::OpenSslError(what);
}

void Session::FeedCiphertext(std::string_view bytes) {
  if (!bytes.empty()) BIO_write(rbio_, bytes.data(), static_cast<int>(bytes.size()));
}

bool Session::Handshake() {
  if (established_ || failed_) return established_;
  int r = SSL_do_handshake(ssl_);
  if (r == 1) {
    established_ = true;
    description_ = StrCat(SSL_get_version(ssl_), " ", SSL_get_cipher_name(ssl_));
    return true;
  }
  int e = SSL_get_error(ssl_, r);
  if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) Fail("TLS handshake failed");
  return false;
}

Session::Read Session::ReadPlain(std::string* out, size_t max) {
  if (failed_) return Read::kFailed;
  if (!established_ && !Handshake()) return failed_ ? Read::kFailed : Read::kWouldBlock;
  char buf[16 * 1024];
  size_t got = 0;
  while (got < max) {
    int n = SSL_read(ssl_, buf, static_cast<int>(std::min(sizeof buf, max - got)));
    if (n > 0) {
      out->append(buf, static_cast<size_t>(n));
      got += static_cast<size_t>(n);
      continue;
    }
    int e = SSL_get_error(ssl_, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
    if (e == SSL_ERROR_ZERO_RETURN) return got ? Read::kData : Read::kClosed;
    Fail("TLS read failed");
    return got ? Read::kData : Read::kFailed;
  }
  return got ? Read::kData : Read::kWouldBlock;
}

bool Session::WritePlain(std::string_view bytes) {
  if (failed_ || !established_) return bytes.empty();
  size_t done = 0;
  while (done < bytes.size()) {
    int n = SSL_write(ssl_, bytes.data() + done, static_cast<int>(std::min<size_t>(bytes.size() - done, 1 << 20)));
    if (n <= 0) {
      Fail("TLS write failed");
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

void Session::Close() {
  if (closed_ || failed_ || !established_) return;
  SSL_shutdown(ssl_);   // close_notify
  ERR_clear_error();
  closed_ = true;
}

std::string Session::TakeCiphertext() {
  std::string out;
  char buf[16 * 1024];
  int n;
  while ((n = BIO_read(wbio_, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  return out;
}

bool Session::HasCiphertext() const { return BIO_ctrl_pending(wbio_) > 0; }

}  // namespace mailseal::tls
