// tls_front.cc — see tls_front.h.
#include "control/tls_front.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstring>

#include "dataplane/base/clock.h"
#include "dataplane/base/log.h"
#include "dataplane/base/strings.h"

namespace mailseal::control {
namespace {
using base::Log;
using base::LogLevel;

constexpr size_t kCopyBuffer = 16 * 1024;

std::string AddressOf(const sockaddr_storage& ss) {
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    port = ntohs(a->sin_port);
    return StrCat(host, ":", port);
  }
  if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    port = ntohs(a->sin6_port);
    return StrCat("[", host, "]:", port);
  }
  return "?";
}

// SplitHostPort: "host:port" or "[v6]:port".
bool SplitHostPort(const std::string& s, std::string* host, std::string* port) {
  size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon + 1 == s.size()) return false;
  *host = s.substr(0, colon);
  *port = s.substr(colon + 1);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') *host = host->substr(1, host->size() - 2);
  return true;
}

std::string OpenSslError() {
  unsigned long e = ERR_peek_last_error();
  std::string out = e ? ERR_reason_error_string(e) ? ERR_reason_error_string(e) : StrCat("error ", e) : "";
  ERR_clear_error();
  return out;
}

// AlpnH2: gRPC clients require HTTP/2 by ALPN; a client that does not offer it is refused in
// the handshake (as gRPC's own TLS does).
int AlpnH2(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned int inlen, void*) {
  for (unsigned int i = 0; i < inlen;) {
    unsigned int n = in[i];
    if (i + 1 + n > inlen) break;
    if (n == 2 && std::memcmp(in + i + 1, "h2", 2) == 0) {
      *out = in + i + 1;
      *outlen = 2;
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + n;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

// CommonName of a certificate's subject (UTF-8), or "".
std::string CommonName(X509* cert) {
  if (!cert) return "";
  X509_NAME* name = X509_get_subject_name(cert);
  int i = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (i < 0) return "";
  unsigned char* utf8 = nullptr;
  int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i)));
  std::string out = n > 0 ? std::string(reinterpret_cast<char*>(utf8), static_cast<size_t>(n)) : "";
  OPENSSL_free(utf8);
  return out;
}

Result<SSL_CTX*> MakeContext(const TlsFrontOptions& o) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) return InternalError("management TLS: no SSL context");
  auto fail = [ctx](const std::string& why) {
    SSL_CTX_free(ctx);
    return InvalidArgumentError(StrCat("field 'control': ", why));
  };
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);   // TLS 1.3 only (issue #5)
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);              // no resumption: every connection shows its certificate
  SSL_CTX_clear_mode(ctx, SSL_MODE_AUTO_RETRY);            // SSL_read returns after non-data records (see Serve)
  SSL_CTX_set_alpn_select_cb(ctx, AlpnH2, nullptr);
  BIO* bio = BIO_new_mem_buf(o.cert_pem.data(), static_cast<int>(o.cert_pem.size()));
  X509* leaf = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  bool ok = leaf && SSL_CTX_use_certificate(ctx, leaf) == 1;
  X509_free(leaf);
  while (ok) {   // the rest of the file is the chain
    X509* extra = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
    if (!extra) break;
    ok = SSL_CTX_add0_chain_cert(ctx, extra) == 1;
  }
  BIO_free(bio);
  ERR_clear_error();
  if (!ok) return fail("cert_file: no usable certificate");
  if (o.key) {   // the token's (SEE-2.4b): its private operations run in the token
    ok = SSL_CTX_use_PrivateKey(ctx, o.key) == 1 && SSL_CTX_check_private_key(ctx) == 1;
    if (!ok) return fail(StrCat("key_label: not the certificate's key (", OpenSslError(), ")"));
  } else {
    bio = BIO_new_mem_buf(o.key_pem.data(), static_cast<int>(o.key_pem.size()));
    EVP_PKEY* key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    ok = key && SSL_CTX_use_PrivateKey(ctx, key) == 1 && SSL_CTX_check_private_key(ctx) == 1;
    EVP_PKEY_free(key);
    if (!ok) return fail(StrCat("key_file: not the certificate's private key (", OpenSslError(), ")"));
  }
  X509_STORE* store = SSL_CTX_get_cert_store(ctx);
  STACK_OF(X509_NAME)* names = sk_X509_NAME_new_null();
  bio = BIO_new_mem_buf(o.client_ca_pem.data(), static_cast<int>(o.client_ca_pem.size()));
  int cas = 0;
  while (X509* ca = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
    X509_STORE_add_cert(store, ca);
    sk_X509_NAME_push(names, X509_NAME_dup(X509_get_subject_name(ca)));
    X509_free(ca);
    ++cas;
  }
  BIO_free(bio);
  ERR_clear_error();
  if (cas == 0) {
    sk_X509_NAME_pop_free(names, X509_NAME_free);
    return fail("client_ca_file: no certificate");
  }
  SSL_CTX_set_client_CA_list(ctx, names);
  SSL_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  return ctx;
}

// WriteAll to a blocking descriptor.
bool WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool SslWriteAll(SSL* ssl, const char* p, size_t n) {
  while (n > 0) {
    size_t done = 0;
    if (SSL_write_ex(ssl, p, n, &done) != 1) return false;
    p += done;
    n -= done;
  }
  return true;
}

void SetTimeouts(int fd, int ms) {
  timeval tv{ms / 1000, (ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}
}  // namespace

Result<std::unique_ptr<TlsFront>> TlsFront::Start(TlsFrontOptions options) {
  std::unique_ptr<TlsFront> f(new TlsFront());
  f->options_ = std::move(options);
  Result<SSL_CTX*> ctx = MakeContext(f->options_);
  if (!ctx.ok()) return ctx.status();
  f->ctx_ = *ctx;
  std::string host, port;
  if (!SplitHostPort(f->options_.listen, &host, &port))
    return InvalidArgumentError(StrCat("field 'control.listen': '", f->options_.listen, "' is not host:port"));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res); rc != 0)
    return InvalidArgumentError(StrCat("field 'control.listen': ", gai_strerror(rc)));
  int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  bool bound = fd >= 0 && ::bind(fd, res->ai_addr, res->ai_addrlen) == 0 && ::listen(fd, 64) == 0;
  int err = errno;
  freeaddrinfo(res);
  if (!bound) {
    if (fd >= 0) ::close(fd);
    return UnavailableError(StrCat("management API cannot listen on ", f->options_.listen, ": ", std::strerror(err)));
  }
  f->listen_fd_ = fd;
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  f->port_ = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                      : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  f->wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  f->acceptor_ = std::thread([p = f.get()] { p->AcceptLoop(); });
  return f;
}

TlsFront::~TlsFront() {
  Stop();
  if (ctx_) SSL_CTX_free(ctx_);
}

void TlsFront::Stop() {
  if (stop_.exchange(true)) return;
  uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!::write(wake_fd_, &one, sizeof one);
  if (acceptor_.joinable()) acceptor_.join();
  std::map<int, std::thread> running;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [fd, t] : threads_) ::shutdown(fd, SHUT_RDWR);   // wakes a blocked read or write
    running.swap(threads_);
  }
  for (auto& [fd, t] : running) t.join();
  for (std::thread& t : finished_) t.join();
  finished_.clear();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
  listen_fd_ = wake_fd_ = -1;
}

std::optional<Caller> TlsFront::Lookup(const std::string& grpc_peer) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = callers_.find(grpc_peer);
  if (it == callers_.end()) return std::nullopt;
  return it->second;
}

void TlsFront::AcceptLoop() {
  int64_t last_refusal_log = 0;
  while (!stop_.load()) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    int n = ::poll(p, 2, 1000);
    std::vector<std::thread> done;
    {
      std::lock_guard<std::mutex> l(mu_);
      done.swap(finished_);
    }
    for (std::thread& t : done) t.join();
    if (n <= 0 || !(p[0].revents & POLLIN)) continue;
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        int64_t now = base::SteadyMs() / 1000;
        if (now - last_refusal_log >= 10) {
          Log(LogLevel::kError, "control", "management accept failed (out of descriptors or memory)", {{"error", std::strerror(errno)}});
          last_refusal_log = now;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
      continue;
    }
    std::string address = AddressOf(ss);
    std::string ip = address.substr(0, address.rfind(':'));
    std::string refusal;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (threads_.size() >= options_.max_connections)
        refusal = StrCat("too many management connections (at most ", options_.max_connections, ")");
      else if (per_ip_[ip] >= options_.max_per_address)
        refusal = StrCat("too many management connections from ", ip, " (at most ", options_.max_per_address, ")");
      if (refusal.empty()) {
        ++per_ip_[ip];
        threads_.emplace(fd, std::thread([this, fd, address] { Serve(fd, address); }));
      } else if (per_ip_[ip] == 0) {
        per_ip_.erase(ip);
      }
    }
    if (!refusal.empty()) {   // reported outside the lock: the audit write may wait for the disk
      ::close(fd);
      if (options_.on_refused) options_.on_refused(address, refusal);
    }
  }
}

void TlsFront::Serve(int fd, std::string address) {
  SetTimeouts(fd, options_.handshake_timeout_ms);
  SSL* ssl = SSL_new(ctx_);
  SSL_set_fd(ssl, fd);
  ERR_clear_error();
  int rc = SSL_accept(ssl);
  std::string peer;
  int backend = -1;
  if (rc != 1) {
    int e = SSL_get_error(ssl, rc);
    long verify = SSL_get_verify_result(ssl);
    std::string reason;
    if (verify != X509_V_OK)
      reason = StrCat("client certificate refused: ", X509_verify_cert_error_string(verify));
    else if (std::string s = OpenSslError(); !s.empty())
      reason = StrCat("TLS handshake failed: ", s);
    else if (e == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK))
      reason = StrCat("TLS handshake not finished within ", options_.handshake_timeout_ms / 1000, " s");
    else
      reason = "the client closed the connection during the TLS handshake";
    if (options_.on_refused && !stop_.load()) options_.on_refused(address, reason);
  } else {
    Caller caller{CommonName(SSL_get0_peer_certificate(ssl)), address};
    // The backend connection, from a random abstract name: gRPC's peer string for it.
    unsigned char rnd[16];
    RAND_bytes(rnd, sizeof rnd);
    std::string name = "mailseal-api-";
    static const char* hex = "0123456789abcdef";
    for (unsigned char b : rnd) {
      name.push_back(hex[b >> 4]);
      name.push_back(hex[b & 15]);
    }
    backend = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un self{};
    self.sun_family = AF_UNIX;
    std::memcpy(self.sun_path + 1, name.data(), name.size());
    sockaddr_un to{};
    to.sun_family = AF_UNIX;
    std::memcpy(to.sun_path, options_.backend_path.c_str(), std::min(options_.backend_path.size(), sizeof to.sun_path - 1));
    peer = StrCat("unix-abstract:", name);
    {
      std::lock_guard<std::mutex> l(mu_);
      callers_[peer] = caller;
    }
    bool up = backend >= 0 &&
              ::bind(backend, reinterpret_cast<sockaddr*>(&self), static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size())) == 0 &&
              ::connect(backend, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0;
    if (!up) {
      Log(LogLevel::kError, "control", "management API backend unreachable", {{"error", std::strerror(errno)}});
    } else {
      SetTimeouts(fd, 0);   // a session may stay open (streams); Stop() wakes it
      int keep = 1;
      setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &keep, sizeof keep);
      std::unique_ptr<char[]> buf(new char[kCopyBuffer]);
      bool open = true;
      while (open && !stop_.load()) {
        pollfd p[2] = {{fd, POLLIN, 0}, {backend, POLLIN, 0}};
        if (SSL_pending(ssl) == 0 && ::poll(p, 2, -1) < 0 && errno != EINTR) break;
        if (SSL_pending(ssl) > 0 || (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
          size_t got = 0;
          ERR_clear_error();
          if (SSL_read_ex(ssl, buf.get(), kCopyBuffer, &got) == 1) {
            open = WriteAll(backend, buf.get(), got);
          } else {
            int e = SSL_get_error(ssl, 0);
            open = e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE;   // a non-data record was handled
          }
        }
        if (open && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
          ssize_t n = ::recv(backend, buf.get(), kCopyBuffer, 0);
          open = n > 0 && SslWriteAll(ssl, buf.get(), static_cast<size_t>(n));
        }
      }
    }
  }
  // The caller is forgotten before its connection closes: a late lookup finds nothing.
  if (!peer.empty()) {
    std::lock_guard<std::mutex> l(mu_);
    callers_.erase(peer);
  }
  if (backend >= 0) ::close(backend);
  if (rc == 1) SSL_shutdown(ssl);
  SSL_free(ssl);
  ERR_clear_error();
  std::lock_guard<std::mutex> l(mu_);
  ::close(fd);
  std::string ip = address.substr(0, address.rfind(':'));
  if (auto c = per_ip_.find(ip); c != per_ip_.end() && --c->second <= 0) per_ip_.erase(c);
  if (auto it = threads_.find(fd); it != threads_.end()) {   // the acceptor joins it
    finished_.push_back(std::move(it->second));
    threads_.erase(it);
  }
}

}  // namespace mailseal::control
