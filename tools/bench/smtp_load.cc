// smtp_load — an SMTP load generator for tools/bench/relay (benchmark, not a test).
//
// N sessions (one thread each) send M messages in total of S bytes, one message per TCP
// connection like Postfix's smtp-source (or --reuse: many per connection). Per message it
// measures the latency from sending MAIL to reading the 250 after the end of data. With
// --tls 1 every connection does STARTTLS (RFC 3207; no certificate check) and EHLO again.
// Prints one JSON object: messages, errors, seconds, rate, p50_ms, p99_ms.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {
using Clock = std::chrono::steady_clock;

struct Options {
  std::string host = "127.0.0.1";
  int port = 25;
  int sessions = 20;
  int messages = 1000;
  size_t size = 4096;
  bool reuse = false;
  bool tls = false;
};

SSL_CTX* ClientContext() {
  static SSL_CTX* ctx = [] {
    SSL_CTX* c = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(c, SSL_VERIFY_NONE, nullptr);
    return c;
  }();
  return ctx;
}

class Conn {
 public:
  bool Open(const std::string& host, int port, bool tls) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) return false;
    int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return false;
    if (!(Reply() == 220 && Send("EHLO load.test\r\n") && Reply() == 250)) return false;
    if (!tls) return true;
    if (!(Send("STARTTLS\r\n") && Reply() == 220)) return false;
    ssl_ = SSL_new(ClientContext());
    SSL_set_fd(ssl_, fd_);
    return SSL_connect(ssl_) == 1 && Send("EHLO load.test\r\n") && Reply() == 250;
  }
  ~Conn() {
    if (ssl_) SSL_free(ssl_);
    if (fd_ >= 0) ::close(fd_);
  }
  bool Send(const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n = ssl_ ? SSL_write(ssl_, s.data() + off, static_cast<int>(s.size() - off))
                       : ::send(fd_, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }
  // Reads one (possibly multi-line) reply; returns its code or -1.
  int Reply() {
    while (true) {
      size_t lf = buf_.find('\n');
      if (lf != std::string::npos) {
        std::string line = buf_.substr(0, lf + 1);
        buf_.erase(0, lf + 1);
        if (line.size() < 4) return -1;
        if (line[3] == '-') continue;
        return std::atoi(line.substr(0, 3).c_str());
      }
      char tmp[4096];
      ssize_t n = ssl_ ? SSL_read(ssl_, tmp, sizeof tmp) : ::recv(fd_, tmp, sizeof tmp, 0);
      if (n <= 0) return -1;
      buf_.append(tmp, static_cast<size_t>(n));
    }
  }

 private:
  int fd_ = -1;
  SSL* ssl_ = nullptr;
  std::string buf_;
};

std::string Body(size_t size, int i) {
  std::string b = "From: load@agency-a.test\r\nTo: sink@partner.test\r\nSubject: load " +
                  std::to_string(i) + "\r\nMessage-ID: <load-" + std::to_string(i) +
                  "@agency-a.test>\r\n\r\n";
  std::string line(76, 'x');
  line += "\r\n";
  while (b.size() + line.size() < size) b += line;
  return b + ".\r\n";
}
}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--port") o.port = std::atoi(v.c_str());
    if (k == "--host") o.host = v;
    else if (k == "--sessions") o.sessions = std::atoi(v.c_str());
    else if (k == "--messages") o.messages = std::atoi(v.c_str());
    else if (k == "--size") o.size = static_cast<size_t>(std::atol(v.c_str()));
    else if (k == "--reuse") o.reuse = v == "1";
    else if (k == "--tls") o.tls = v == "1";
  }
  std::atomic<int> next{0}, errors{0};
  std::mutex mu;
  std::vector<double> lat;
  lat.reserve(static_cast<size_t>(o.messages));
  const std::string body = Body(o.size, 0);
  auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int s = 0; s < o.sessions; ++s) {
    threads.emplace_back([&] {
      std::unique_ptr<Conn> c;
      std::vector<double> mine;
      while (true) {
        int i = next.fetch_add(1);
        if (i >= o.messages) break;
        if (!c || !o.reuse) {
          c = std::make_unique<Conn>();
          if (!c->Open(o.host, o.port, o.tls)) {
            errors++;
            c.reset();
            continue;
          }
        }
        auto start = Clock::now();
        bool ok = c->Send("MAIL FROM:<load@agency-a.test>\r\nRCPT TO:<sink@partner.test>\r\nDATA\r\n") &&
                  c->Reply() == 250 && c->Reply() == 250 && c->Reply() == 354 && c->Send(body) &&
                  c->Reply() == 250;
        if (!ok) {
          errors++;
          c.reset();
          continue;
        }
        mine.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
        if (!o.reuse) {
          c->Send("QUIT\r\n");
          c->Reply();
          c.reset();
        }
      }
      std::lock_guard<std::mutex> l(mu);
      lat.insert(lat.end(), mine.begin(), mine.end());
    });
  }
  for (auto& t : threads) t.join();
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::sort(lat.begin(), lat.end());
  auto pct = [&](double p) { return lat.empty() ? 0.0 : lat[std::min(lat.size() - 1, static_cast<size_t>(p * lat.size()))]; };
  std::printf("{\"messages\": %zu, \"errors\": %d, \"seconds\": %.3f, \"rate\": %.1f, \"p50_ms\": %.2f, \"p99_ms\": %.2f}\n",
              lat.size(), errors.load(), secs, lat.size() / secs, pct(0.5), pct(0.99));
  return errors.load() ? 1 : 0;
}
