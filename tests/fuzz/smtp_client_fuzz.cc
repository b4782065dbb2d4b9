// libFuzzer target for the SMTP client core: arbitrary next-hop replies.
// Invariants: no crash; the session ends in a defined state; output is only our commands.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "dataplane/smtp/client_session.h"

using namespace mailseal::smtp;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The last byte picks the TLS mode (never / opportunistic / required).
  ClientSession::Tls tls = size ? static_cast<ClientSession::Tls>(data[size - 1] % 3) : ClientSession::Tls::kNever;
  ClientSession s("fuzz.test", tls);
  ClientMessage m;
  m.mail_from = "a@x.test";
  m.recipients = {{"b@y.test", "", ""}, {"c@y.test", "NEVER", ""}, {"d@z.test", "", "rfc822;d@z.test"}};
  m.size = 100;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  size_t pos = 0;
  int messages = 0;
  while (pos < in.size()) {
    size_t n = std::min<size_t>(in.size() - pos, 1 + (in[pos] & 31));
    s.Feed(in.substr(pos, n));
    pos += n;
    std::string out = s.TakeOutput();
    if (!out.empty() && (out.size() < 2 || out.substr(out.size() - 2) != "\r\n")) std::abort();
    switch (s.state()) {
      case ClientSession::State::kReady:
      case ClientSession::State::kMessageDone:
        if (messages++ < 3) s.StartMessage(m);
        else s.Quit();
        break;
      case ClientSession::State::kSendBody:
        s.BodyDone();
        break;
      case ClientSession::State::kTlsReady:
        if (tls == ClientSession::Tls::kNever) std::abort();   // never STARTTLS unless asked
        s.TlsStarted();
        break;
      default:
        break;
    }
    if (tls == ClientSession::Tls::kRequired && !s.tls_active() &&
        (s.state() == ClientSession::State::kReady || s.state() == ClientSession::State::kInMessage))
      std::abort();   // TLS required: no transaction in clear
    if (s.state() == ClientSession::State::kMessageDone) {
      for (size_t i = 0; i < m.recipients.size(); ++i) (void)s.result().RecipientOutcome(i);
    }
  }
  BodyEncoder e;
  std::string wire;
  e.Encode(in, &wire);
  e.Finish(&wire);
  // The encoded body must end exactly once, at its end.
  if (wire.find("\r\n.\r\n") != wire.size() - 5 && !(wire.size() == 3 && wire == ".\r\n")) std::abort();
  return 0;
}
