// mailseal-spool — read spool files as mailseald wrote them (encrypted at rest, issue #19):
// for forensics on the appliance and for the tests.
//
//   mailseal-spool --config /etc/mailseal/mailseald.conf cat FILE...
//   mailseal-spool --config /etc/mailseal/mailseald.conf envelope FILE
//   mailseal-spool --config /etc/mailseal/mailseald.conf open FILE...
//
// `cat` writes each message's body to stdout; `envelope` the envelope and delivery records in
// protobuf text format; `open` the plaintext of another sealed file (the certificate store's).
// The data keys are unwrapped by the token named in the configuration
// (its PIN file; run as root or mailseald's user); nothing is written — no key is made.
// Exit 0: read; 1: a file could not be read (the reason on stderr); 2: usage or no token.
#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include <google/protobuf/text_format.h>

#include "dataplane/base/file.h"
#include "dataplane/config/config.h"
#include "dataplane/queue/spool.h"
#include "dataplane/sealing/at_rest_keys.h"
#include "hsm/token_manager.h"

using namespace mailseal;

int main(int argc, char** argv) {
  if (argc < 5 || std::string(argv[1]) != "--config" ||
      (std::string(argv[3]) != "cat" && std::string(argv[3]) != "envelope" && std::string(argv[3]) != "open")) {
    std::fprintf(stderr, "usage: mailseal-spool --config FILE cat|envelope|open FILE...\n");
    return 2;
  }
  Result<v1::Config> cfg = config::LoadConfig(argv[2]);
  if (!cfg.ok()) {
    std::fprintf(stderr, "mailseal-spool: %s\n", cfg.status().message().c_str());
    return 2;
  }
  // The token and the PIN file are mailseald's user's: run as root, become that user first.
  if (::geteuid() == 0 && !cfg->user().empty()) {
    passwd* pw = ::getpwnam(cfg->user().c_str());
    if (!pw || ::initgroups(pw->pw_name, pw->pw_gid) != 0 || ::setgid(pw->pw_gid) != 0 || ::setuid(pw->pw_uid) != 0) {
      std::fprintf(stderr, "mailseal-spool: cannot become user '%s'\n", cfg->user().c_str());
      return 2;
    }
  }
  std::unique_ptr<hsm::TokenManager> token;
  std::shared_ptr<sealing::TokenAtRestKeys> ring;
  if (cfg->has_hsm()) {
    const auto& h = cfg->hsm();
    token = std::make_unique<hsm::TokenManager>(
        hsm::TokenConfig{h.module_path(), h.token_label(), h.token_serial(), h.pin_file(), 1});
    if (!token->Tick()) {
      std::fprintf(stderr, "mailseal-spool: security module unavailable: %s\n", token->last_error().c_str());
      return 2;
    }
    sealing::AtRestOptions o;
    o.dir = cfg->spool_dir() + "/keys";
    o.kek_label = cfg->at_rest().kek_label();
    o.read_only = true;
    Result<std::shared_ptr<sealing::TokenAtRestKeys>> r = sealing::TokenAtRestKeys::Open(token.get(), o);
    if (!r.ok()) {
      std::fprintf(stderr, "mailseal-spool: spool keys: %s\n", r.status().message().c_str());
      return 2;
    }
    ring = *r;
    queue::InstallAtRestKeys(ring);
  }
  int rc = 0;
  for (int i = 4; i < argc; ++i) {
    if (std::string(argv[3]) == "open") {
      Result<std::string> data = base::ReadFile(argv[i], 64u << 20);
      if (data.ok()) data = queue::OpenBlob(std::move(data.value()));
      if (!data.ok()) {
        std::fprintf(stderr, "mailseal-spool: %s: %s\n", argv[i], data.status().message().c_str());
        rc = 1;
        continue;
      }
      std::fwrite(data->data(), 1, data->size(), stdout);
      continue;
    }
    Result<queue::SpoolMessage> m = queue::ReadSpoolFile(argv[i]);
    if (!m.ok()) {
      std::fprintf(stderr, "mailseal-spool: %s\n", m.status().message().c_str());
      rc = 1;
      continue;
    }
    if (std::string(argv[3]) == "envelope") {
      std::string text;
      google::protobuf::TextFormat::PrintToString(m->envelope, &text);
      for (const auto& s : m->statuses) {
        std::string st;
        google::protobuf::TextFormat::PrintToString(s, &st);
        text += "status {\n" + st + "}\n";
      }
      std::fwrite(text.data(), 1, text.size(), stdout);
      continue;
    }
    Status st = queue::ReadBody(argv[i], *m, [](std::string_view c) {
      std::fwrite(c.data(), 1, c.size(), stdout);
      return OkStatus();
    });
    if (!st.ok()) {
      std::fprintf(stderr, "mailseal-spool: %s\n", st.message().c_str());
      rc = 1;
    }
  }
  queue::InstallAtRestKeys(nullptr);
  return rc;
}
