// scanner.cc — see scanner.h. clamd's INSTREAM (clamd(8)) and the milter protocol, version 6
// (Sendmail's libmilter/docs and include/libmilter/mfdef.h) are written here: Debian packages
// the filter side of milter (libmilter) but no client library for the MTA side, and clamd's
// protocol is a few lines.
#include "dataplane/scan/scanner.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "dataplane/base/log.h"
#include "dataplane/base/strings.h"

namespace mailseal::scan {
namespace {
using base::Log;
using base::LogLevel;
using Clock = std::chrono::steady_clock;

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

Status WaitFor(int fd, short events, long timeout_ms, const char* what) {
  pollfd p{fd, events, 0};
  int n;
  do n = ::poll(&p, 1, static_cast<int>(timeout_ms));
  while (n < 0 && errno == EINTR);
  if (n == 0) return DeadlineExceededError(StrCat("no ", what, " within ", timeout_ms, " ms"));
  if (n < 0) return UnavailableError(StrCat("poll: ", std::strerror(errno)));
  return OkStatus();
}

Status SendAll(int fd, std::string_view data, long timeout_ms) {
  while (!data.empty()) {
    if (Status st = WaitFor(fd, POLLOUT, timeout_ms, "room to send"); !st.ok()) return st;
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return UnavailableError(StrCat("send: ", std::strerror(errno)));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return OkStatus();
}

Status RecvExact(int fd, char* buf, size_t len, long timeout_ms) {
  while (len) {
    if (Status st = WaitFor(fd, POLLIN, timeout_ms, "answer"); !st.ok()) return st;
    ssize_t n = ::recv(fd, buf, len, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return UnavailableError(StrCat("recv: ", std::strerror(errno)));
    }
    if (n == 0) return UnavailableError("connection closed by the scanner");
    buf += n;
    len -= static_cast<size_t>(n);
  }
  return OkStatus();
}

void PutU32(std::string* s, uint32_t v) {
  for (int i = 3; i >= 0; --i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint32_t GetU32(const char* p) {
  return (uint32_t{static_cast<uint8_t>(p[0])} << 24) | (uint32_t{static_cast<uint8_t>(p[1])} << 16) |
         (uint32_t{static_cast<uint8_t>(p[2])} << 8) | uint32_t{static_cast<uint8_t>(p[3])};
}

Outcome Unavailable(const std::string& name, std::string_view why) {
  return Outcome{Verdict::kUnavailable, std::string(why), name};
}

// Reach: a connection to the scanner for `m`, or (in `*refused`) why there is none — the
// message over the size bound, or the scanner not answering.
int Reach(const std::string& name, const std::string& address, const Message& m, const Limits& limits, Outcome* refused) {
  if (m.bytes.size() > limits.max_bytes) {
    *refused = Unavailable(name, StrCat("too large to scan (", m.bytes.size(), " bytes, limit ", limits.max_bytes, ")"));
    return -1;
  }
  ::mailseal::Result<int> c = Connect(address, limits.timeout_ms);
  if (!c.ok()) {
    *refused = Unavailable(name, c.status().message());
    return -1;
  }
  return *c;
}

// ---- clamd -------------------------------------------------------------------------------

class Clamd : public Scanner {
 public:
  Clamd(std::string name, std::string address, Verdict on_virus)
      : name_(std::move(name)), address_(std::move(address)), on_virus_(on_virus) {}
  const std::string& name() const override { return name_; }

  Outcome Scan(const Message& m, const Limits& limits) override {
    Outcome refused;
    Fd fd{Reach(name_, address_, m, limits, &refused)};
    if (fd.fd < 0) return refused;
    // zINSTREAM: chunks of <length u32 BE><bytes>, a zero length ends the stream.
    std::string out("zINSTREAM", 10);   // with its NUL
    constexpr size_t kChunk = 64 * 1024;
    std::string_view rest = m.bytes;
    if (Status st = SendAll(fd.fd, out, limits.timeout_ms); !st.ok()) return Unavailable(name_, st.message());
    while (!rest.empty()) {
      std::string_view part = rest.substr(0, kChunk);
      std::string hdr;
      PutU32(&hdr, static_cast<uint32_t>(part.size()));
      Status st = SendAll(fd.fd, hdr, limits.timeout_ms);
      if (st.ok()) st = SendAll(fd.fd, part, limits.timeout_ms);
      if (!st.ok()) {
        // clamd closes when its StreamMaxLength is passed: its answer says so.
        std::string answer = ReadAnswer(fd.fd, 1000);
        return Unavailable(name_, answer.empty() ? st.message() : answer);
      }
      rest.remove_prefix(part.size());
    }
    if (Status st = SendAll(fd.fd, std::string(4, '\0'), limits.timeout_ms); !st.ok())
      return Unavailable(name_, st.message());
    std::string answer = ReadAnswer(fd.fd, limits.timeout_ms);
    // "stream: OK", "stream: Eicar-Test-Signature FOUND", "... ERROR"
    if (answer.ends_with(" FOUND")) {
      std::string sig = answer.substr(answer.find(": ") == std::string::npos ? 0 : answer.find(": ") + 2);
      return Outcome{on_virus_, StrCat("virus found: ", sig), name_};
    }
    if (answer.ends_with(": OK")) return Outcome{Verdict::kPass, "clean", name_};
    return Unavailable(name_, answer.empty() ? "no answer" : StrCat("clamd: ", answer));
  }

 private:
  static std::string ReadAnswer(int fd, long timeout_ms) {
    std::string answer;
    char ch;
    while (answer.size() < 1024 && RecvExact(fd, &ch, 1, timeout_ms).ok() && ch != '\0' && ch != '\n') answer.push_back(ch);
    return answer;
  }
  std::string name_, address_;
  Verdict on_virus_;
};

// ---- milter ------------------------------------------------------------------------------

// mfdef.h
constexpr uint32_t kVersion = 6;
constexpr uint32_t kActQuarantine = 0x20;
constexpr uint32_t kNoConnect = 0x1, kNoHelo = 0x2, kNoMail = 0x4, kNoRcpt = 0x8, kNoBody = 0x10, kNoHdrs = 0x20,
                   kNoEoh = 0x40, kNrHdr = 0x80, kNoData = 0x200, kNrConn = 0x1000, kNrHelo = 0x2000,
                   kNrMail = 0x4000, kNrRcpt = 0x8000, kNrData = 0x10000, kNrEoh = 0x40000, kNrBody = 0x80000,
                   kHdrLeadSpc = 0x100000;
constexpr uint32_t kAllProtocol = 0x1FFFFF;

class Milter : public Scanner {
 public:
  Milter(std::string name, std::string address) : name_(std::move(name)), address_(std::move(address)) {}
  const std::string& name() const override { return name_; }

  Outcome Scan(const Message& m, const Limits& limits) override {
    Outcome refused;
    Fd fd{Reach(name_, address_, m, limits, &refused)};
    if (fd.fd < 0) return refused;
    fd_ = fd.fd;
    timeout_ms_ = limits.timeout_ms;
    quarantine_.clear();
    Outcome out = Run(m);
    (void)Send('Q', "");   // quit; nothing is read after it (a failure changes no verdict)
    return out;
  }

 private:
  // Step: what the filter said after one command.
  enum class Step { kContinue, kAccept, kDone };

  Outcome Run(const Message& m) {
    std::string neg;
    PutU32(&neg, kVersion);
    PutU32(&neg, kActQuarantine);
    PutU32(&neg, kAllProtocol);
    if (Status st = Send('O', neg); !st.ok()) return Unavailable(name_, st.message());
    char cmd = 0;
    std::string data;
    if (Status st = Read(&cmd, &data); !st.ok()) return Unavailable(name_, st.message());
    if (cmd != 'O' || data.size() < 12) return Unavailable(name_, "milter negotiation failed");
    uint32_t actions = GetU32(data.data() + 4);
    proto_ = GetU32(data.data() + 8);
    if (actions & ~kActQuarantine)
      Log(LogLevel::kDebug, "scan", "milter asked for modification actions: not granted",
          {{"scanner", name_}, {"actions", std::to_string(actions)}});
    Outcome verdict{Verdict::kPass, "accepted", name_};
    auto step = [&](char c, std::string payload, uint32_t skip, uint32_t no_reply) -> Step {
      if (proto_ & skip) return Step::kContinue;
      if (Status st = Send(c, payload); !st.ok()) {
        verdict = Unavailable(name_, st.message());
        return Step::kDone;
      }
      if (proto_ & no_reply) return Step::kContinue;
      return Answer(&verdict);
    };
    std::string host = m.client_address.substr(0, m.client_address.rfind(':'));
    std::string mail = StrCat("<", m.mail_from, ">");
    mail.push_back('\0');
    // The macro a filter most commonly wants: the queue id ({i}), for the MAIL stage.
    std::string macros = "Mi";
    macros.push_back('\0');
    macros += m.queue_id;
    macros.push_back('\0');
    if (Status st = Send('D', macros); !st.ok()) return Unavailable(name_, st.message());
    std::string conn = StrCat(host.empty() ? "localhost" : host);
    conn.push_back('\0');
    conn.push_back('U');   // family unknown: no port or address follow
    std::string helo = m.helo;
    helo.push_back('\0');
    Step s = step('C', conn, kNoConnect, kNrConn);
    if (s == Step::kContinue) s = step('H', helo, kNoHelo, kNrHelo);
    if (s == Step::kContinue) s = step('M', mail, kNoMail, kNrMail);
    for (size_t i = 0; s == Step::kContinue && i < m.rcpts.size(); ++i) {
      std::string r = StrCat("<", m.rcpts[i], ">");
      r.push_back('\0');
      s = step('R', r, kNoRcpt, kNrRcpt);
    }
    if (s == Step::kContinue) s = step('T', "", kNoData, kNrData);
    size_t body_at = m.bytes.find("\r\n\r\n");
    std::string_view head = body_at == std::string_view::npos ? m.bytes : m.bytes.substr(0, body_at + 2);
    std::string_view body = body_at == std::string_view::npos ? std::string_view() : m.bytes.substr(body_at + 4);
    // Headers: name, value (continuation lines kept, joined by CRLF as received).
    size_t pos = 0;
    while (s == Step::kContinue && pos < head.size()) {
      size_t end = head.find("\r\n", pos);
      if (end == std::string_view::npos) end = head.size();
      while (end + 2 < head.size() && (head[end + 2] == ' ' || head[end + 2] == '\t')) {
        size_t next = head.find("\r\n", end + 2);
        end = next == std::string_view::npos ? head.size() : next;
      }
      std::string_view line = head.substr(pos, end - pos);
      pos = end + 2;
      size_t colon = line.find(':');
      if (colon == std::string_view::npos) continue;
      std::string_view value = line.substr(colon + 1);
      if (!(proto_ & kHdrLeadSpc) && !value.empty() && value.front() == ' ') value.remove_prefix(1);
      std::string h(line.substr(0, colon));
      h.push_back('\0');
      h.append(value);
      h.push_back('\0');
      s = step('L', h, kNoHdrs, kNrHdr);
    }
    if (s == Step::kContinue) s = step('N', "", kNoEoh, kNrEoh);
    for (size_t off = 0; s == Step::kContinue && off < body.size(); off += 65535)
      s = step('B', std::string(body.substr(off, 65535)), kNoBody, kNrBody);
    if (s == Step::kContinue) {
      if (Status st = Send('E', ""); !st.ok()) return Unavailable(name_, st.message());
      Answer(&verdict);
    }
    if (verdict.verdict == Verdict::kPass && !quarantine_.empty())
      return Outcome{Verdict::kQuarantine, StrCat("quarantined: ", quarantine_), name_};
    return verdict;
  }

  // Answer reads until a final response; modification actions are ignored (not granted),
  // progress keeps the wait going.
  Step Answer(Outcome* verdict) {
    for (int guard = 0; guard < 10000; ++guard) {
      char cmd = 0;
      std::string data;
      if (Status st = Read(&cmd, &data); !st.ok()) {
        *verdict = Unavailable(name_, st.message());
        return Step::kDone;
      }
      std::string text = data.substr(0, data.find('\0'));
      for (char& ch : text)
        if (ch == '\r' || ch == '\n') ch = ' ';
      if (text.size() > 300) text.resize(300);
      switch (cmd) {
        case 'c': return Step::kContinue;
        case 'a': return Step::kAccept;
        case 'r': *verdict = Outcome{Verdict::kReject, "rejected by the filter", name_}; return Step::kDone;
        case 't': *verdict = Unavailable(name_, "the filter asked to try again later"); return Step::kDone;
        case 'd':   // discard: never silently — quarantined
          *verdict = Outcome{Verdict::kQuarantine, "the filter asked to discard it", name_};
          return Step::kDone;
        case 'y':
          if (text.starts_with("5")) *verdict = Outcome{Verdict::kReject, text, name_};
          else *verdict = Unavailable(name_, StrCat("the filter answered ", text));
          return Step::kDone;
        case 'q': quarantine_ = text.empty() ? "by the filter" : text; continue;
        case 'p': continue;   // progress: still working
        default:
          Log(LogLevel::kWarning, "scan", "milter sent an action that was not granted: ignored",
              {{"scanner", name_}, {"action", std::string(1, cmd)}});
          continue;
      }
    }
    *verdict = Unavailable(name_, "the filter never answered finally");
    return Step::kDone;
  }

  Status Send(char cmd, std::string_view data) {
    std::string pkt;
    PutU32(&pkt, static_cast<uint32_t>(data.size() + 1));
    pkt.push_back(cmd);
    pkt.append(data);
    return SendAll(fd_, pkt, timeout_ms_);
  }

  Status Read(char* cmd, std::string* data) {
    char hdr[4];
    if (Status st = RecvExact(fd_, hdr, 4, timeout_ms_); !st.ok()) return st;
    uint32_t len = GetU32(hdr);
    if (len == 0 || len > (1u << 20)) return UnavailableError(StrCat("milter packet of ", len, " bytes"));
    if (Status st = RecvExact(fd_, cmd, 1, timeout_ms_); !st.ok()) return st;
    data->assign(len - 1, '\0');
    return RecvExact(fd_, data->data(), len - 1, timeout_ms_);
  }

  std::string name_, address_;
  int fd_ = -1;
  long timeout_ms_ = 0;
  uint32_t proto_ = 0;
  std::string quarantine_;
};

}  // namespace

const char* VerdictName(Verdict v) {
  switch (v) {
    case Verdict::kPass: return "pass";
    case Verdict::kReject: return "reject";
    case Verdict::kQuarantine: return "quarantine";
    case Verdict::kUnavailable: return "unavailable";
  }
  return "?";
}

::mailseal::Result<int> Connect(const std::string& address_in, long timeout_ms) {
  std::string address = address_in;
  if (address.starts_with("unix:")) address = address.substr(5);
  if (address.starts_with("local:")) address = address.substr(6);
  int fd = -1;
  if (!address.empty() && address.front() == '/') {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (address.size() >= sizeof sa.sun_path) return InvalidArgumentError(StrCat(address, ": path too long"));
    std::memcpy(sa.sun_path, address.data(), address.size());
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return UnavailableError(StrCat("socket: ", std::strerror(errno)));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 && errno != EINPROGRESS) {
      Status st = UnavailableError(StrCat(address, ": ", std::strerror(errno)));
      ::close(fd);
      return st;
    }
  } else {
    std::string host, port;
    if (address.starts_with("inet:") || address.starts_with("inet6:")) {   // inet:port@host
      std::string rest = address.substr(address.find(':') + 1);
      size_t at = rest.find('@');
      port = rest.substr(0, at);
      host = at == std::string::npos ? "127.0.0.1" : rest.substr(at + 1);
    } else {
      size_t colon = address.rfind(':');
      if (colon == std::string::npos) return InvalidArgumentError(StrCat("'", address_in, "': not a socket path nor host:port"));
      host = address.substr(0, colon);
      port = address.substr(colon + 1);
      if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    }
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    addrinfo* ai = nullptr;
    if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &ai); rc != 0 || !ai)
      return InvalidArgumentError(StrCat("'", address_in, "': ", gai_strerror(rc)));
    fd = ::socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int rc = fd < 0 ? -1 : ::connect(fd, ai->ai_addr, ai->ai_addrlen);
    int err = errno;
    ::freeaddrinfo(ai);
    if (fd < 0) return UnavailableError(StrCat("socket: ", std::strerror(err)));
    if (rc != 0 && err != EINPROGRESS) {
      ::close(fd);
      return UnavailableError(StrCat(address_in, ": ", std::strerror(err)));
    }
  }
  if (Status st = WaitFor(fd, POLLOUT, timeout_ms, "connection"); !st.ok()) {
    ::close(fd);
    return UnavailableError(StrCat(address_in, ": ", st.message()));
  }
  int err = 0;
  socklen_t len = sizeof err;
  ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) {
    ::close(fd);
    return UnavailableError(StrCat(address_in, ": ", std::strerror(err)));
  }
  return fd;
}

std::unique_ptr<Scanner> MakeClamd(std::string name, std::string address, Verdict on_virus) {
  return std::make_unique<Clamd>(std::move(name), std::move(address), on_virus);
}

std::unique_ptr<Scanner> MakeMilter(std::string name, std::string address) {
  return std::make_unique<Milter>(std::move(name), std::move(address));
}

}  // namespace mailseal::scan
