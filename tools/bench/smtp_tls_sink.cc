// smtp_tls_sink — the next hop for tools/bench/relay's TLS rows (benchmark, not a test).
//
// Postfix's smtp-sink cannot do STARTTLS, so the delivery half of the relays' TLS cannot be
// measured against it. This sink offers STARTTLS with the given certificate and key, accepts
// and discards every message (no disk: like smtp-sink, it must not be the bottleneck), one
// thread per connection. It speaks just enough SMTP for a relay's client: EHLO/HELO, STARTTLS,
// MAIL, RCPT, DATA (dot-terminated, read in blocks), RSET, NOOP, QUIT; no PIPELINING is
// offered. On SIGTERM or SIGINT it prints one JSON object: messages, tls_sessions, and exits.
//
//   smtp_tls_sink --port P --cert CERT.pem --key KEY.pem
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>

namespace {

std::atomic<long> messages{0}, tls_sessions{0};

class Conn {
 public:
  Conn(int fd, SSL_CTX* ctx) : fd_(fd), ctx_(ctx) {}
  ~Conn() {
    if (ssl_) {
      SSL_shutdown(ssl_);
      SSL_free(ssl_);
    }
    ::close(fd_);
  }

  void Serve() {
    if (!Send("220 sink.test ESMTP bench sink\r\n")) return;
    std::string line;
    while (ReadLine(&line)) {
      std::string verb = line.substr(0, line.find(' '));
      for (char& c : verb) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      bool ok = true;
      if (verb == "EHLO") {
        ok = Send(ssl_ ? "250-sink.test\r\n250 8BITMIME\r\n" : "250-sink.test\r\n250-8BITMIME\r\n250 STARTTLS\r\n");
      } else if (verb == "HELO") {
        ok = Send("250 sink.test\r\n");
      } else if (verb == "STARTTLS" && !ssl_) {
        if (!Send("220 2.0.0 go ahead\r\n")) return;
        buffered_.clear();   // nothing pipelined behind STARTTLS is read in clear
        ssl_ = SSL_new(ctx_);
        SSL_set_fd(ssl_, fd_);
        if (SSL_accept(ssl_) != 1) return;
        ++tls_sessions;
      } else if (verb == "MAIL" || verb == "RCPT" || verb == "RSET" || verb == "NOOP") {
        ok = Send("250 2.0.0 ok\r\n");
      } else if (verb == "DATA") {
        if (!Send("354 go ahead\r\n") || !SkipData()) return;
        ++messages;
        ok = Send("250 2.0.0 discarded\r\n");
      } else if (verb == "QUIT") {
        Send("221 2.0.0 bye\r\n");
        return;
      } else {
        ok = Send("502 5.5.2 not here\r\n");
      }
      if (!ok) return;
    }
  }

 private:
  bool Send(std::string_view s) {
    if (ssl_) return SSL_write(ssl_, s.data(), static_cast<int>(s.size())) == static_cast<int>(s.size());
    return ::send(fd_, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size());
  }
  bool Fill() {
    char buf[65536];
    int n = ssl_ ? SSL_read(ssl_, buf, sizeof buf) : static_cast<int>(::recv(fd_, buf, sizeof buf, 0));
    if (n <= 0) return false;
    buffered_.append(buf, static_cast<size_t>(n));
    return true;
  }
  bool ReadLine(std::string* line) {
    size_t end;
    while ((end = buffered_.find("\r\n")) == std::string::npos) {
      if (buffered_.size() > 4096 || !Fill()) return false;
    }
    *line = buffered_.substr(0, end);
    buffered_.erase(0, end + 2);
    return true;
  }
  // SkipData discards the message up to and including the line "." (a small automaton over the
  // bytes, so a terminator split across reads is found).
  bool SkipData() {
    enum { kLineStart, kDot, kDotCr, kMid, kCr } st = kLineStart;
    for (;;) {
      for (size_t i = 0; i < buffered_.size(); ++i) {
        char c = buffered_[i];
        switch (st) {
          case kLineStart: st = c == '.' ? kDot : c == '\r' ? kCr : kMid; break;
          case kDot: st = c == '\r' ? kDotCr : kMid; break;
          case kDotCr:
            if (c == '\n') {
              buffered_.erase(0, i + 1);
              return true;
            }
            st = c == '\r' ? kCr : kMid;
            break;
          case kMid: st = c == '\r' ? kCr : kMid; break;
          case kCr: st = c == '\n' ? kLineStart : c == '\r' ? kCr : kMid; break;
        }
      }
      buffered_.clear();
      if (!Fill()) return false;
    }
  }

  int fd_;
  SSL_CTX* ctx_;
  SSL* ssl_ = nullptr;
  std::string buffered_;
};

}  // namespace

int main(int argc, char** argv) {
  int port = 0;
  std::string cert, key;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--port") port = std::atoi(argv[i + 1]);
    else if (a == "--cert") cert = argv[i + 1];
    else if (a == "--key") key = argv[i + 1];
  }
  if (!port || cert.empty() || key.empty()) {
    std::fprintf(stderr, "usage: smtp_tls_sink --port P --cert CERT.pem --key KEY.pem\n");
    return 2;
  }
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1) {
    ERR_print_errors_fp(stderr);
    return 2;
  }
  int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(lfd, 512) != 0) {
    std::perror("smtp_tls_sink: listen");
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);   // a relay that hangs up mid-TLS-write must not end the sink
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);   // every thread inherits the mask; main waits below
  std::thread([lfd, ctx] {
    for (;;) {
      int fd = ::accept(lfd, nullptr, nullptr);
      if (fd < 0) continue;
      int on = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
      std::thread([fd, ctx] { Conn(fd, ctx).Serve(); }).detach();
    }
  }).detach();
  int sig = 0;
  sigwait(&stop, &sig);
  std::printf("{\"messages\": %ld, \"tls_sessions\": %ld}\n", messages.load(), tls_sessions.load());
  std::fflush(stdout);
  return 0;
}
